"""A multi-layer perceptron over flattened inputs: the smallest student.

Parameters carry logical axis names (``embed`` in, ``mlp`` hidden, ``classes`` out) that
``teacher.sharding_rules`` / ``student.sharding_rules`` map to mesh axes; the names do
not change the initial values (see docs/scaling.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp


def named_dense(features: int, names: tuple[str, str], name: str, **kwargs) -> nn.Dense:
    """A Dense layer whose kernel is ``names`` and whose bias is ``names[1]``."""
    return nn.Dense(features, name=name, **kwargs,
                    kernel_init=nn.with_logical_partitioning(nn.linear.default_kernel_init,
                                                             names),
                    bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(),
                                                           names[1:]))


class MLP(nn.Module):
    """Flatten -> [Dense -> ReLU] * len(hidden) -> Dense(num_classes)."""

    hidden: Sequence[int] = (64,)
    num_classes: int = 10
    dropout: float = 0.0

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.reshape((x.shape[0], -1)).astype(jnp.float32)
        for i, width in enumerate(self.hidden):
            x = nn.relu(named_dense(width, ('embed', 'mlp'), f'dense{i}')(x))
            if self.dropout:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return named_dense(self.num_classes, ('embed', 'classes'), 'head')(x)
