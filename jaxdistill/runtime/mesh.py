"""The device mesh, built from ``mesh.*`` and passed explicitly (no global mesh), and the
shardings of everything placed on it.

Axes are always ``('data', 'fsdp', 'tensor')``; a size of -1 takes every device the
other axes leave. Batches are split over ``data`` x ``fsdp``. Parameters are sharded by
*logical axis names*: built-in modules name each parameter dimension
(``nn.with_logical_partitioning``, e.g. a Dense kernel is ``('embed', 'mlp')``) and each
model's ``sharding_rules`` map names to mesh axes, flax style. `sharded_abstract` is the
one place computing shardings, for train states (optimizer moments follow their
parameters: optax copies the names) and for teacher restores. See docs/scaling.md.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import flax.linen as nn
import jax
import numpy as np
from flax.core import meta
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from jaxdistill.errors import ConfigError

AXES = ('data', 'fsdp', 'tensor')
BATCH_AXES = ('data', 'fsdp')
UNNAMED = '*'  # the rule for parameters without logical names (user modules)

# (logical name, mesh axis or axes or None), first match wins per mesh axis (flax rules).
# FSDP splits the input side of every weight over 'fsdp', tensor parallelism its output
# side over 'tensor'; logits and small per-layer axes stay whole. With the default mesh
# (fsdp = tensor = 1) every parameter is replicated.
DEFAULT_RULES = (
    ('batch', BATCH_AXES),
    ('embed', 'fsdp'),
    ('conv_in', 'fsdp'),
    ('mlp', 'tensor'),
    ('heads', 'tensor'),
    ('conv_out', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('length', None),
    ('layers', None),
    ('classes', None),
    (UNNAMED, 'fsdp'),
)
Rules = tuple[tuple[str, Any], ...]


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
    """`jax.make_mesh`: devices ordered by the physical topology on TPUs (rings along the
    axes), in the given order elsewhere; every axis ``Auto`` (shardings come from the
    jitted step's in/out shardings, as for a plain Mesh). `check_process_rows` then
    proves each process still owns a contiguous block of the batch axes. Multi-slice
    device sets, which `jax.make_mesh` refuses, keep the id order."""
    devices = jax.devices() if devices is None else list(devices)
    sizes = axis_sizes(cfg, len(devices))
    auto = (AxisType.Auto,) * len(AXES)
    try:
        return jax.make_mesh(sizes, AXES, axis_types=auto, devices=devices)
    except ValueError:  # several slices: jax.make_mesh refuses them
        return Mesh(np.asarray(devices).reshape(sizes), AXES, axis_types=auto)


def batch_size_per_shard(mesh: Mesh) -> int:
    return math.prod(mesh.shape[a] for a in BATCH_AXES)


def check_batch(mesh: Mesh, batch_size: int, key: str = 'data.batch_size') -> None:
    n = batch_size_per_shard(mesh)
    if batch_size % n:
        raise ConfigError(f'{key}={batch_size} is not divisible by the {n} batch shards '
                          f'(mesh data x fsdp): use a multiple of {n}, e.g. '
                          f'{max(n, batch_size // n * n)}')
    check_process_rows(mesh, batch_size, key)


def check_process_rows(mesh: Mesh, batch_size: int, key: str = 'data.batch_size') -> None:
    """Each process must feed exactly its own contiguous block of every global batch.

    The pipeline gives process ``p`` rows ``[p * B/P, (p + 1) * B/P)``; that is what
    `to_global` can place without moving data between hosts. A ``tensor`` axis spanning
    processes would replicate the batch across them instead.
    """
    count = jax.process_count()
    if count == 1:
        return
    local = batch_size // count
    rows = batch_sharding(mesh).addressable_devices_indices_map((batch_size,))
    blocks = {(s[0].start or 0, batch_size if s[0].stop is None else s[0].stop)
              for s in rows.values()}
    start = jax.process_index() * local
    if (min(blocks)[0] != start or sum(b - a for a, b in blocks) != local
            or batch_size % count):
        raise ConfigError(
            f'mesh {dict(mesh.shape)} does not give each of the {count} processes its own '
            f'block of the {key}={batch_size} rows: keep mesh.tensor within one host '
            f'({jax.local_device_count()} devices) and the batch divisible by {count}')


def batch_sharding(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


# ---------------------------------------------------------------- rules


def normalize_rules(rules: Any) -> Rules:
    """Config values (tuples, or lists after a JSON round trip) -> hashable pairs."""
    out = []
    for name, axes in rules:
        out.append((name, tuple(axes) if isinstance(axes, (list, tuple)) else axes))
    return tuple(out)


def check_rules(rules: Any, key: str) -> None:
    """One-line ConfigError for a malformed rule or an unknown mesh axis."""
    hint = ("e.g. (('embed', 'fsdp'), ('mlp', 'tensor'), ('classes', None)); "
            f"mesh axes: {', '.join(AXES)} or None")
    if not isinstance(rules, (tuple, list)):
        raise ConfigError(f'{key}={rules!r} must be a tuple of (logical name, mesh axis) '
                          f'pairs: {hint}')
    for i, rule in enumerate(rules):
        if (not isinstance(rule, (tuple, list)) or len(rule) != 2
                or not isinstance(rule[0], str)):
            raise ConfigError(f'{key}[{i}]={rule!r} is not a (logical name, mesh axis) '
                              f'pair: {hint}')
        axes = rule[1] if isinstance(rule[1], (tuple, list)) else (rule[1],)
        for axis in axes:
            if axis is not None and axis not in AXES:
                raise ConfigError(f'{key}[{i}]={tuple(rule)!r}: {axis!r} is not a mesh axis; '
                                  f'use one of {", ".join(map(repr, AXES))} or None')


def _axes_size(mesh: Mesh, axes) -> int:
    return math.prod(mesh.shape[a] for a in axes)


def _effective(mesh: Mesh, axes, dim: int):
    """The mesh axes of one dimension, without size-1 axes; None if they do not divide it.

    Dropping size-1 axes keeps a replicated run's shardings exactly ``P()``, so its
    checkpoints do not change; a dimension its axes do not divide (3 input channels over
    8 devices) stays whole rather than failing to compile.
    """
    if axes is None:
        return None
    axes = tuple(a for a in (axes if isinstance(axes, tuple) else (axes,))
                 if mesh.shape[a] > 1)
    if not axes or dim % _axes_size(mesh, axes):
        return None
    return axes[0] if len(axes) == 1 else axes


def spec_for(mesh: Mesh, shape: Sequence[int], names: Sequence[str | None] | None,
             rules: Rules) -> P:
    """The PartitionSpec of one array from its logical names (None: a user module's
    unnamed parameter, which follows the ``'*'`` rule)."""
    if names is None:
        return _unnamed_spec(mesh, shape, rules)
    if len(names) != len(shape):
        raise ConfigError(f'a parameter of shape {tuple(shape)} has {len(names)} logical axis '
                          f'names {tuple(names)}: give one name (or None) per dimension')
    axes = list(nn.logical_to_mesh_axes(tuple(names), list(rules)))
    axes += [None] * (len(shape) - len(axes))
    return _spec(_effective(mesh, a, d) for a, d in zip(axes, shape))


def _spec(axes) -> P:
    """Without trailing Nones: a replicated array is ``P()`` however it was named."""
    axes = list(axes)
    while axes and axes[-1] is None:
        axes.pop()
    return P(*axes)


def _unnamed_spec(mesh: Mesh, shape: Sequence[int], rules: Rules) -> P:
    """Matrices and larger: the largest dimension the ``'*'`` axis divides; vectors
    (biases, norms, BatchNorm statistics) and scalars: replicated."""
    axes = next((a for n, a in rules if n == UNNAMED), None)
    if len(shape) < 2 or axes is None:
        return P()
    order = sorted(range(len(shape)), key=lambda i: -shape[i])
    for i in order:
        effective = _effective(mesh, axes, shape[i])
        if effective is not None:
            return _spec(effective if j == i else None for j in range(len(shape)))
    return P()


# ---------------------------------------------------------------- shardings of trees


def _is_box(x: Any) -> bool:
    return isinstance(x, meta.AxisMetadata)


def param_sharding(mesh: Mesh, abstract_tree: Any, rules: Any = ()) -> Any:
    """Shardings for a tree whose leaves may be boxed with logical names; the result has
    the structure of the *unboxed* tree."""
    rules = normalize_rules(rules)

    def one(leaf):
        if isinstance(leaf, nn.LogicallyPartitioned):
            spec = spec_for(mesh, leaf.value.shape, leaf.names, rules)
        elif isinstance(leaf, nn.Partitioned):  # its names are mesh axes already
            spec = _spec(_effective(mesh, a, d) for a, d in zip(leaf.names, leaf.value.shape))
        else:  # a plain array, or other flax metadata: no logical names
            value = leaf.unbox() if _is_box(leaf) else leaf
            spec = spec_for(mesh, value.shape, None, rules)
        return NamedSharding(mesh, spec)

    return jax.tree.map(one, abstract_tree, is_leaf=_is_box)


def sharded_abstract(mesh: Mesh, abstract_tree: Any, rules: Any = ()) -> tuple[Any, Any]:
    """``(tree of ShapeDtypeStruct carrying target shardings, tree of shardings)``: what
    ``jit(out_shardings=...)`` and Orbax restores into those shardings need.

    ``abstract_tree`` comes from ``jax.eval_shape`` of an init that keeps flax's boxes
    (``Model.init(..., boxed=True)``); both results are unboxed, matching the plain
    arrays the state holds, so checkpoints and ``params_sha256`` never see the names.
    """
    shardings = param_sharding(mesh, abstract_tree, rules)
    plain = meta.unbox(abstract_tree)
    with_sharding = jax.tree.map(
        lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), plain, shardings)
    return with_sharding, shardings


# ---------------------------------------------------------------- host <-> devices


def to_global(mesh: Mesh, local_batch: dict) -> dict:
    """This process's rows -> one global array per key, split over the batch axes.

    One call for the whole batch: per key, JAX's own checks and transfer set-up cost
    ~0.1 ms, a tenth of a small model's step (benchmarks/input_pipeline.py)."""
    local = {k: np.asarray(v) for k, v in local_batch.items()}
    return jax.make_array_from_process_local_data(batch_sharding(mesh), local)


def batch_placer(mesh: Mesh) -> Callable[[dict], dict]:
    """`to_global` for the training loop's batches, whose shapes repeat every step.

    On one process, a jitted identity with the batch sharding places them: jit's C++ path
    moves numpy arguments in ~20 us, where ``device_put`` spends ~100 us in Python per
    batch, a few percent of a small model's step (benchmarks/input_pipeline.py
    ``producer``). One compile per batch shape. Several processes use `to_global`.
    """
    if jax.process_count() > 1:
        return lambda local_batch: to_global(mesh, local_batch)
    sharding = batch_sharding(mesh)
    place = jax.jit(lambda batch: batch, in_shardings=sharding, out_shardings=sharding)
    return lambda local_batch: place({k: np.asarray(v) for k, v in local_batch.items()})


def to_host(tree: Any) -> Any:
    """Numpy copies of every leaf; arrays sharded across processes are gathered first
    (a collective: every process must call it)."""
    def one(x):
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return np.asarray(jax.device_get(x))

    return jax.tree.map(one, tree)
