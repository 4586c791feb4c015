"""A multi-layer perceptron over flattened inputs: the smallest student."""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


class MLP(nn.Module):
    """Flatten -> [Dense -> ReLU] * len(hidden) -> Dense(num_classes)."""

    hidden: Sequence[int] = (64,)
    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            x = nn.relu(nn.Dense(width, name=f'dense{i}')(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return nn.Dense(self.num_classes, name='head')(x)
