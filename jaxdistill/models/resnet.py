"""ResNets with BatchNorm (He et al. 2016), as in the Flax ImageNet example.

`ResNet` covers both families: ``stem='imagenet'`` (7x7/2 conv + max-pool, the
ResNet-18/50 of the paper) and ``stem='cifar'`` (one 3x3 conv, the CIFAR ResNet-20/56
of section 4.2 when used with `BasicBlock` and three stages of 16/32/64 filters).

Convolution kernels are named ``(None, None, 'conv_in', 'conv_out')``, BatchNorm scales
and biases ``('conv_out',)`` and the head ``('embed', 'classes')``: the logical axes that
the sharding rules map to mesh axes (docs/scaling.md). The running BatchNorm statistics
are unnamed vectors and stay replicated.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import flax.linen as nn
import jax.numpy as jnp

from jaxdistill.models.cnn import CONV_AXES
from jaxdistill.models.mlp import named_dense

# A bias-free convolution with a named kernel; the initial values are flax's defaults.
Conv = functools.partial(
    nn.Conv, use_bias=False,
    kernel_init=nn.with_logical_partitioning(nn.linear.default_kernel_init, CONV_AXES))
ZERO_SCALE = nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',))


class BasicBlock(nn.Module):
    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, norm):
        residual = x
        y = Conv(self.filters, (3, 3), self.strides)(x)
        y = nn.relu(norm()(y))
        y = Conv(self.filters, (3, 3))(y)
        y = norm(scale_init=ZERO_SCALE)(y)
        if residual.shape != y.shape:
            residual = Conv(self.filters, (1, 1), self.strides, name='proj')(residual)
            residual = norm(name='proj_norm')(residual)
        return nn.relu(residual + y)


class BottleneckBlock(nn.Module):
    filters: int
    strides: int = 1

    @nn.compact
    def __call__(self, x, norm):
        residual = x
        y = nn.relu(norm()(Conv(self.filters, (1, 1))(x)))
        y = Conv(self.filters, (3, 3), self.strides)(y)
        y = nn.relu(norm()(y))
        y = Conv(self.filters * 4, (1, 1))(y)
        y = norm(scale_init=ZERO_SCALE)(y)
        if residual.shape != y.shape:
            residual = Conv(self.filters * 4, (1, 1), self.strides, name='proj')(residual)
            residual = norm(name='proj_norm')(residual)
        return nn.relu(residual + y)


BLOCKS = {'basic': BasicBlock, 'bottleneck': BottleneckBlock}


class ResNet(nn.Module):
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    block: str = 'basic'  # 'basic' or 'bottleneck'
    width: int = 64
    num_classes: int = 10
    stem: str = 'imagenet'  # 'imagenet' or 'cifar'
    dtype: str = 'float32'  # compute dtype; parameters stay float32

    @nn.compact
    def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        dtype = jnp.dtype(self.dtype)
        norm = functools.partial(
            nn.BatchNorm, use_running_average=not train, momentum=0.9, epsilon=1e-5,
            dtype=dtype,
            scale_init=nn.with_logical_partitioning(nn.initializers.ones_init(), ('conv_out',)),
            bias_init=nn.with_logical_partitioning(nn.initializers.zeros_init(), ('conv_out',)))
        x = x.astype(dtype)
        if self.stem == 'imagenet':
            x = Conv(self.width, (7, 7), (2, 2), padding=[(3, 3), (3, 3)], dtype=dtype,
                     name='stem')(x)
            x = nn.relu(norm(name='stem_norm')(x))
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding='SAME')
        else:
            x = Conv(self.width, (3, 3), dtype=dtype, name='stem')(x)
            x = nn.relu(norm(name='stem_norm')(x))
        block = BLOCKS[self.block]
        for i, size in enumerate(self.stage_sizes):
            for j in range(size):
                strides = 2 if i > 0 and j == 0 else 1
                x = block(self.width * 2**i, strides, name=f'stage{i}_block{j}')(x, norm)
        x = jnp.mean(x, axis=(1, 2))
        return named_dense(self.num_classes, ('embed', 'classes'), 'head',
                           dtype=jnp.float32)(x).astype(jnp.float32)


ResNet18 = functools.partial(ResNet, stage_sizes=(2, 2, 2, 2), block='basic')
ResNet50 = functools.partial(ResNet, stage_sizes=(3, 4, 6, 3), block='bottleneck')
ResNet20 = functools.partial(ResNet, stage_sizes=(3, 3, 3), block='basic', width=16,
                             stem='cifar')
ResNet56 = functools.partial(ResNet, stage_sizes=(9, 9, 9), block='basic', width=16,
                             stem='cifar')
