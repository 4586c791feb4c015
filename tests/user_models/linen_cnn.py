"""A linen CNN with BatchNorm and Dropout, and variants returning a tuple or a dict."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class CNN(nn.Module):
    """[Conv3x3 -> BatchNorm -> ReLU] per width, global mean pool, Dense -> Dropout -> head.

    Submodule paths (what feature losses name): ``conv0``, ``bn0``, ``conv1``, ...,
    ``dense``, ``head``.
    """

    channels: Sequence[int] = (4, 8)
    dense: int = 16
    dropout: float = 0.25
    num_classes: int = 10

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.astype(jnp.float32)
        for i, width in enumerate(self.channels):
            x = nn.Conv(width, (3, 3), name=f'conv{i}')(x)
            x = nn.relu(nn.BatchNorm(use_running_average=not train, name=f'bn{i}')(x))
        x = jnp.mean(x, axis=(1, 2))
        x = nn.relu(nn.Dense(self.dense, name='dense')(x))
        x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name='head')(x)


class TupleCNN(CNN):
    """The same network returning ``(pooled features, logits)``: ``logits_key='1'``."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        logits = super().__call__(x, train)
        return jnp.mean(x, axis=(1, 2, 3))[:, None], logits


class DictCNN(CNN):
    """The same network returning ``{'scores': logits, 'mean': ...}``."""

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False):
        return {'scores': super().__call__(x, train), 'mean': jnp.mean(x, axis=(1, 2, 3))}
