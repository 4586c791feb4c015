"""A small convolutional network: a few conv blocks, global pooling, a dense head.

Parameters carry logical axis names (``conv_in``/``conv_out`` for convolutions and their
BatchNorm, ``embed``/``mlp``/``classes`` for the dense layers) that the config's
sharding rules map to mesh axes.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdistill.models.mlp import named_dense

CONV_AXES = (None, None, 'conv_in', 'conv_out')


def _named(init, names):
    return nn.with_logical_partitioning(init, names)


class CNN(nn.Module):
    """[Conv3x3 -> (BatchNorm) -> ReLU] per width, 2x2 max-pool between blocks.

    Inputs ``[B, H, W, C]`` are images; ``[B, L, C]`` (signals) get 1-D convolutions of
    width 3 and pools of 2, any other rank likewise: the kernel has one axis per spatial
    axis of the input.
    """

    channels: Sequence[int] = (32, 64)
    dense: int = 128
    num_classes: int = 10
    batch_norm: bool = False
    dropout: float = 0.0
    pool: str = 'mean'  # 'mean': global average pool; 'flatten': keep spatial layout

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        x = x.astype(jnp.float32)
        spatial = x.ndim - 2
        for i, width in enumerate(self.channels):
            x = nn.Conv(width, (3,) * spatial, name=f'conv{i}',
                        kernel_init=_named(nn.linear.default_kernel_init,
                                           (None,) * spatial + CONV_AXES[-2:]),
                        bias_init=_named(nn.initializers.zeros_init(), ('conv_out',)))(x)
            if self.batch_norm:
                x = nn.BatchNorm(use_running_average=not train, name=f'bn{i}',
                                 scale_init=_named(nn.initializers.ones_init(), ('conv_out',)),
                                 bias_init=_named(nn.initializers.zeros_init(), ('conv_out',)))(x)
            x = nn.relu(x)
            if i < len(self.channels) - 1 and min(x.shape[1:-1]) >= 2:
                x = nn.max_pool(x, (2,) * spatial, strides=(2,) * spatial)
        axes = tuple(range(1, x.ndim - 1))
        x = jnp.mean(x, axis=axes) if self.pool == 'mean' else x.reshape((x.shape[0], -1))
        x = nn.relu(named_dense(self.dense, ('embed', 'mlp'), 'dense')(x))
        if self.dropout:
            x = nn.Dropout(self.dropout, deterministic=not train)(x)
        return named_dense(self.num_classes, ('embed', 'classes'), 'head')(x)
