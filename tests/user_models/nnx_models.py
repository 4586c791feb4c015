"""NNX modules with BatchNorm and Dropout: a CNN, and an MLP that returns a dict.

NNX modules take ``rngs`` in ``__init__``; jaxdistill passes it (seeded from the
config's seed), so the config gives only the other arguments. Mode (train / eval) is
set by jaxdistill with ``module.train()`` / ``module.eval()``, the NNX convention.
"""

from __future__ import annotations

from collections.abc import Sequence

import jax.numpy as jnp
from flax import nnx


class ConvBlock(nnx.Module):
    """Conv3x3 -> BatchNorm -> ReLU; its parts are tapped as ``blocks/<i>/conv``, ..."""

    def __init__(self, in_channels: int, out_channels: int, *, rngs: nnx.Rngs):
        self.conv = nnx.Conv(in_channels, out_channels, (3, 3), rngs=rngs)
        self.bn = nnx.BatchNorm(out_channels, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        return nnx.relu(self.bn(self.conv(x)))


class CNN(nnx.Module):
    """ConvBlocks, global mean pool, Linear -> Dropout -> Linear head.

    Tappable paths: ``blocks/0``, ``blocks/0/conv``, ``blocks/0/bn``, ..., ``dense``,
    ``drop``, ``head``.
    """

    def __init__(self, channels: Sequence[int] = (8, 16), dense: int = 32,
                 dropout: float = 0.25, num_classes: int = 10, in_channels: int = 1, *,
                 rngs: nnx.Rngs):
        widths = (in_channels, *channels)
        self.blocks = nnx.List([ConvBlock(a, b, rngs=rngs)
                                for a, b in zip(widths[:-1], widths[1:])])
        self.dense = nnx.Linear(widths[-1], dense, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(dense, num_classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        x = x.astype(jnp.float32)
        for block in self.blocks:
            x = block(x)
        x = jnp.mean(x, axis=(1, 2))
        return self.head(self.drop(nnx.relu(self.dense(x))))


class DictMLP(nnx.Module):
    """Flatten -> Linear -> BatchNorm -> ReLU -> Dropout -> head, returning a dict.

    ``{'scores': logits, 'hidden': h}``: set ``logits_key='scores'``. It also sows the
    normalised hidden layer as ``nnx.Intermediate`` ``'normed'`` (tapped as ``normed``).
    """

    def __init__(self, in_features: int = 64, hidden: int = 32, dropout: float = 0.25,
                 num_classes: int = 10, *, rngs: nnx.Rngs):
        self.fc = nnx.Linear(in_features, hidden, rngs=rngs)
        self.bn = nnx.BatchNorm(hidden, rngs=rngs)
        self.drop = nnx.Dropout(dropout, rngs=rngs)
        self.head = nnx.Linear(hidden, num_classes, rngs=rngs)

    def __call__(self, x: jnp.ndarray) -> dict[str, jnp.ndarray]:
        h = self.bn(self.fc(x.reshape(x.shape[0], -1).astype(jnp.float32)))
        self.sow(nnx.Intermediate, 'normed', h)
        h = self.drop(nnx.relu(h))
        return {'scores': self.head(h), 'hidden': h}
