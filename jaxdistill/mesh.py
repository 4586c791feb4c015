"""The device mesh, built from ``mesh.*`` and passed explicitly (no global mesh).

Axes are always ``('data', 'fsdp', 'tensor')``; a size of -1 takes every device the
other axes leave. Batches are split over ``data`` x ``fsdp``; parameters are
replicated here (the sharding rules of the scale-out work build on `param_sharding`).
"""

from __future__ import annotations

import math

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill.errors import ConfigError

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')


def axis_sizes(cfg, num_devices: int) -> tuple[int, ...]:
    sizes = [int(cfg[a]) for a in AXES]
    free = [i for i, s in enumerate(sizes) if s == -1]
    if len(free) > 1:
        raise ConfigError(f'only one mesh axis may be -1, got {dict(zip(AXES, sizes))}')
    fixed = math.prod(s for s in sizes if s != -1)
    if free:
        if num_devices % fixed:
            raise ConfigError(f'mesh axes {dict(zip(AXES, sizes))}: the fixed sizes multiply to '
                              f'{fixed}, which does not divide the {num_devices} devices')
        sizes[free[0]] = num_devices // fixed
    if math.prod(sizes) != num_devices:
        raise ConfigError(f'mesh {dict(zip(AXES, sizes))} has {math.prod(sizes)} devices but '
                          f'{num_devices} are present: make the sizes multiply to {num_devices} '
                          'or set one axis to -1')
    return tuple(sizes)


def make_mesh(cfg, devices=None) -> Mesh:
    devices = jax.devices() if devices is None else devices
    sizes = axis_sizes(cfg, len(devices))
    return Mesh(np.asarray(devices).reshape(sizes), AXES)


def batch_size_per_shard(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(mesh: Mesh, batch_size: int, key: str = 'data.batch_size') -> None:
    n = batch_size_per_shard(mesh)
    if batch_size % n:
        raise ConfigError(f'{key}={batch_size} is not divisible by the {n} batch shards '
                          f'(mesh data x fsdp): use a multiple of {n}, e.g. '
                          f'{max(n, batch_size // n * n)}')


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_sharding(mesh: Mesh, abstract_tree):
    """Shardings for a parameter tree: replicated on every device for now."""
    return jax.tree.map(lambda _: replicated(mesh), abstract_tree)


def sharded_abstract(mesh: Mesh, abstract_tree):
    """``(tree of ShapeDtypeStruct carrying target shardings, tree of shardings)``: what
    ``jit(out_shardings=...)`` and Orbax restores into those shardings need."""
    shardings = param_sharding(mesh, abstract_tree)
    with_sharding = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract_tree, shardings)
    return with_sharding, shardings


def to_global(mesh: Mesh, local_batch: dict) -> dict:
    """This process's rows -> one global array per key, split over the batch axes."""
    sharding = batch_sharding(mesh)
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v))
            for k, v in local_batch.items()}
