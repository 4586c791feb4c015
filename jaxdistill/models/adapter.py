"""One small interface between the train step and any Flax module, linen or NNX.

The step never branches on what a model is: it calls `Model.init` and `Model.apply`.
`Model` picks its backend once, when it is built: a linen module (`_Linen`) or an NNX
class with its constructor arguments (`NnxSpec`, run by `_Nnx`). Either way a model is
``(params, state)``, two nested dicts of arrays: ``params`` are trained, ``state`` holds
everything else that persists (BatchNorm statistics, ...); it is updated in training
and returned untouched in evaluation. Plain dicts are what Orbax, the mesh shardings
and `provenance.params_sha256` already handle, so an NNX model checkpoints like a linen one.

Intermediate activations ("features") are tapped by module path (``'conv0'``,
``'stage1_block0/proj'``, ``'blocks/0/mlp'``) without editing the module: linen through
``capture_intermediates``, NNX by recording the ``__call__`` outputs of the submodules;
values sown into ``'intermediates'`` (linen) or ``nnx.Intermediate`` (NNX) are tapped
by ``module path/sow name``.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import nnx
from flax.core import meta

from jaxdistill.errors import ConfigError, closest

Params = Any
State = Any
Features = dict[str, Any]
TAPS = 'intermediates'


@dataclasses.dataclass(frozen=True, eq=False)
class NnxSpec:
    """An NNX Module class (or factory) and its keyword arguments, not yet built.

    NNX modules create their parameters in ``__init__``, so they are built inside
    `Model.init` from the init rng (``rngs=nnx.Rngs(...)``), like a linen ``init``.
    """

    factory: Callable[..., nnx.Module]
    kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


# ---------------------------------------------------------------- linen


def _tap_filter(names: Sequence[str] | None):
    """capture_intermediates filter: the ``__call__`` outputs of the named submodules."""
    wanted = None if names is None else frozenset(names)

    def keep(module: nn.Module, method_name: str) -> bool:
        if method_name != '__call__' or not module.path:
            return False
        return wanted is None or '/'.join(module.path) in wanted

    return keep


def _collect(intermediates: Mapping[str, Any], prefix: str = '') -> Features:
    """``{'a': {'b': {'__call__': (y,)}, 's': (z,)}}`` -> ``{'a/b': y, 'a/s': z}``."""
    out = {}
    for key, value in intermediates.items():
        if key == '__call__':
            out[prefix.rstrip('/')] = value[0]
        elif isinstance(value, Mapping):
            out.update(_collect(value, f'{prefix}{key}/'))
        elif isinstance(value, tuple) and value:  # a value sown into 'intermediates'
            out.setdefault(f'{prefix}{key}', value[0])
    return out


@dataclasses.dataclass(frozen=True)
class _Linen:
    module: nn.Module

    def init(self, rng: jax.Array, inputs: Any) -> tuple[Params, State]:
        p_rng, d_rng = jax.random.split(rng)
        variables = dict(self.module.init({'params': p_rng, 'dropout': d_rng}, inputs,
                                          train=False))
        params = variables.pop('params', {})
        variables.pop(TAPS, None)
        return params, variables

    def forward(self, params, state, inputs, *, train: bool, rng, taps):
        variables = {'params': params, **state}
        rngs = {'dropout': rng} if rng is not None else {}
        mutable = list(state.keys()) if (train and state) else []
        tapping = taps is None or bool(taps)
        if tapping:
            mutable.append(TAPS)
        out = self.module.apply(variables, inputs, train=train, rngs=rngs,
                                mutable=mutable or False,
                                capture_intermediates=_tap_filter(taps) if tapping else False)
        new_state, features = state, {}
        if mutable:
            out, collections = out
            collections = dict(collections)
            features = _collect(collections.pop(TAPS, {}))
            if train and state:
                new_state = collections
        return out, new_state, features


# ---------------------------------------------------------------- NNX


def _to_tree(flat, boxed: bool = False) -> dict[str, Any]:
    """NNX ``(path, Variable)`` pairs -> a nested dict with string keys ('0' for list items).

    With ``boxed``, values whose Variable carries logical axis names
    (``nnx.with_partitioning``) come as ``nn.LogicallyPartitioned``, as linen's do.
    """
    tree: dict[str, Any] = {}
    for path, var in flat:
        node = tree
        for part in path[:-1]:
            node = node.setdefault(str(part), {})
        value = var.get_value()
        names = var.get_metadata().get('out_sharding') if boxed else None
        node[str(path[-1])] = nn.LogicallyPartitioned(value, tuple(names)) if names else value
    return tree


def _from_tree(template, tree: Mapping[str, Any]) -> nnx.State:
    """The inverse of `_to_tree`, given the abstract ``(path, Variable)`` pairs."""
    items = []
    for path, var in template:
        node = tree
        for part in path:
            node = node[str(part)]
        items.append((path, var.replace(node)))
    return nnx.from_flat_state(items)


_RECORDERS: list[_Recorder] = []
_RECORDING_CLASSES: dict[type, type] = {}


def _recording_class(cls: type) -> type:
    """A subclass of ``cls`` whose ``__call__`` reports its output to the active recorder."""
    if cls not in _RECORDING_CLASSES:
        def __call__(self, *args, **kwargs):
            out = cls.__call__(self, *args, **kwargs)
            if _RECORDERS:
                _RECORDERS[-1].record(self, out)
            return out

        _RECORDING_CLASSES[cls] = type(cls.__name__, (cls,), {
            '__call__': __call__, '__module__': cls.__module__,
            '__qualname__': cls.__qualname__})
    return _RECORDING_CLASSES[cls]


class _Recorder:
    """Records the first output of each named submodule of a freshly merged module.

    The submodules' classes are swapped for recording subclasses while the forward runs
    and restored after, so the user's module needs no ``sow`` and no other instance,
    nor the class itself, is changed.
    """

    def __init__(self, root: nnx.Module, names: Sequence[str] | None):
        wanted = None if names is None else frozenset(names)
        self.names = {id(m): '/'.join(map(str, path)) for path, m in nnx.iter_modules(root)
                      if path and (wanted is None or '/'.join(map(str, path)) in wanted)}
        self.modules = [m for _, m in nnx.iter_modules(root) if id(m) in self.names]
        self.outputs: Features = {}

    def record(self, module: nnx.Module, out: Any) -> None:
        name = self.names.get(id(module))
        if name is not None:
            self.outputs.setdefault(name, out)

    def __enter__(self) -> _Recorder:
        self._classes = [type(m) for m in self.modules]
        for m, cls in zip(self.modules, self._classes):
            object.__setattr__(m, '__class__', _recording_class(cls))
        _RECORDERS.append(self)
        return self

    def __exit__(self, *exc) -> None:
        _RECORDERS.pop()
        for m, cls in zip(self.modules, self._classes):
            object.__setattr__(m, '__class__', cls)


@dataclasses.dataclass(frozen=True)
class _NnxStructure:
    """What never changes between calls: the graph and the abstract variables."""

    graphdef: Any
    params: Any  # FlatState of nnx.Param (trained)
    rngs: Any  # FlatState of nnx.RngState: re-keyed from the step's rng, never stored
    state: Any  # FlatState of every other Variable (BatchNorm statistics, ...)
    call_args: frozenset[str]  # which of 'train', 'rngs' the module's __call__ accepts


def _rngs(rng: jax.Array) -> nnx.Rngs:
    p_rng, d_rng = jax.random.split(rng)
    return nnx.Rngs(p_rng, params=p_rng, dropout=d_rng)


@dataclasses.dataclass(frozen=True)
class _Nnx:
    spec: NnxSpec

    def build(self, rng: jax.Array) -> nnx.Module:
        """The module, parameters drawn from ``rng``. Sharding annotations are kept as
        metadata, not applied: the mesh places arrays through jit's out_shardings."""
        kwargs = dict(self.spec.kwargs)
        if _accepts(self.spec.factory, 'rngs'):
            kwargs['rngs'] = _rngs(rng)
        with nnx.use_eager_sharding(False):
            return self.spec.factory(**kwargs)

    @functools.cached_property
    def structure(self) -> _NnxStructure:
        abstract = nnx.eval_shape(lambda: self.build(jax.random.key(0)))  # nothing allocated
        graphdef, params, rngs, state = nnx.split(abstract, nnx.Param, nnx.RngState, ...)
        call = type(abstract).__call__
        call_args = frozenset(a for a in ('train', 'rngs') if _accepts(call, a, explicit=True))
        return _NnxStructure(graphdef, nnx.to_flat_state(params), nnx.to_flat_state(rngs),
                             nnx.to_flat_state(state), call_args)

    def init(self, rng: jax.Array, inputs: Any) -> tuple[Params, State]:
        del inputs  # NNX modules know their input sizes from their arguments
        _, params, _, state = nnx.split(self.build(rng), nnx.Param, nnx.RngState, ...)
        return (_to_tree(nnx.to_flat_state(params), boxed=True),
                _to_tree(nnx.to_flat_state(state), boxed=True))

    def _rng_state(self, rng: jax.Array | None) -> nnx.State:
        """Every RNG stream of the module re-keyed from ``rng`` (a fixed key in eval)."""
        rng = jax.random.key(0) if rng is None else rng
        items = []
        for i, (path, var) in enumerate(self.structure.rngs):
            if isinstance(var, nnx.RngKey):  # one key, or distinct keys for split streams
                key = jax.random.fold_in(rng, i)
                value = jax.random.split(key, var.shape) if var.shape else key
                if not jax.dtypes.issubdtype(var.dtype, jax.dtypes.prng_key):
                    value = jax.random.key_data(value)
            else:
                value = jnp.zeros(var.shape, var.dtype)
            items.append((path, var.replace(value)))
        return nnx.from_flat_state(items)

    def forward(self, params, state, inputs, *, train: bool, rng, taps):
        s = self.structure
        module = nnx.merge(s.graphdef, _from_tree(s.params, params), self._rng_state(rng),
                           _from_tree(s.state, state))
        if train:
            module.train()
        else:
            module.eval()
        kwargs = {}
        if 'train' in s.call_args:
            kwargs['train'] = train
        if 'rngs' in s.call_args and rng is not None:
            kwargs['rngs'] = nnx.Rngs(dropout=rng)
        with _Recorder(module, taps) as recorder:
            out, sown = nnx.capture(module, nnx.Intermediate)(inputs, **kwargs)
        features = dict(recorder.outputs)
        for path, var in nnx.to_flat_state(sown):
            features.setdefault('/'.join(map(str, path)), var.get_value()[0])
        new_state = state
        if train:
            now = dict(nnx.to_flat_state(nnx.state(module, nnx.Not(nnx.Any(nnx.Param,
                                                                           nnx.RngState)))))
            new_state = _to_tree((path, now[path]) for path, _ in s.state)
        return out, new_state, features


def signature(fn: Callable) -> inspect.Signature | None:
    """What ``fn(...)`` accepts; for a class, its ``__init__`` (NNX's metaclass hides it)."""
    try:
        if isinstance(fn, type):
            sig = inspect.signature(fn.__init__)
            return sig.replace(parameters=list(sig.parameters.values())[1:])
        return inspect.signature(fn)
    except (TypeError, ValueError):
        return None


def _accepts(fn: Callable, name: str, explicit: bool = False) -> bool:
    """Whether ``fn`` takes keyword ``name`` (explicitly, or through ``**kwargs``)."""
    sig = signature(fn)
    if sig is None:
        return False
    params = sig.parameters
    return name in params or (not explicit and any(p.kind is p.VAR_KEYWORD
                                                   for p in params.values()))


# ---------------------------------------------------------------- the interface


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax module (linen instance or `NnxSpec`) plus how to read its logits."""

    module: nn.Module | NnxSpec
    logits_key: str = ''
    name: str = 'model'
    # (logical axis name, mesh axis or None) pairs: how `mesh.sharded_abstract` shards it.
    sharding_rules: tuple = ()
    _backend: Any = dataclasses.field(init=False, repr=False, compare=False)

    def __post_init__(self):
        if isinstance(self.module, nn.Module):
            backend = _Linen(self.module)
        elif isinstance(self.module, NnxSpec):
            backend = _Nnx(self.module)
        else:
            raise ConfigError(f'{self.name}.module: got a {type(self.module).__name__}; expected '
                              'a linen module or an NNX Module class')
        object.__setattr__(self, '_backend', backend)

    def init(self, rng: jax.Array, inputs: Any, *, boxed: bool = False
             ) -> tuple[Params, State]:
        """``(params, state)`` as nested dicts of arrays; ``rng`` seeds the parameters.

        ``boxed=True`` keeps logical axis names as ``nn.LogicallyPartitioned`` leaves (linen
        ``with_logical_partitioning``, NNX ``with_partitioning``): under ``jax.eval_shape``
        that is what `mesh.sharded_abstract` derives the parameter shardings from.
        """
        params, state = self._backend.init(rng, inputs)
        if boxed:
            return params, state
        return meta.unbox(params), meta.unbox(state)

    def apply(self, params: Params, state: State, inputs: Any, *, train: bool,
              rng: jax.Array | None = None, taps: Sequence[str] = ()
              ) -> tuple[jnp.ndarray, State, Features]:
        """Returns ``(logits, new_state, features)``; ``state`` is unchanged unless ``train``.

        ``rng`` keys dropout (one per step: the caller folds in the step number);
        ``features`` maps each name in ``taps`` to that submodule's output.
        """
        out, new_state, features = self._backend.forward(
            meta.unbox(params), meta.unbox(state), inputs, train=train, rng=rng,
            taps=tuple(taps))
        new_state = new_state if train else state  # evaluation never changes the state
        return self.pick_logits(out), new_state, {name: features[name] for name in taps}

    def feature_shapes(self, inputs: Any) -> dict[str, tuple[int, ...]]:
        """Every tappable submodule output and its shape (no computation, only tracing)."""

        def run(rng):
            params, state = self.init(rng, inputs)
            return self._backend.forward(params, state, inputs, train=False, rng=None,
                                         taps=None)[2]

        shapes = jax.eval_shape(run, jax.random.key(0))
        return {name: tuple(s.shape) for name, s in shapes.items() if hasattr(s, 'shape')}

    def check_taps(self, names: Sequence[str], inputs: Any,
                   key: str) -> dict[str, tuple[int, ...]]:
        """The shapes of ``names``; a one-line error naming ``key`` for an unknown one."""
        shapes = self.feature_shapes(inputs)
        for name in names:
            if name not in shapes:
                raise ConfigError(
                    f'{key}: {self.name} has no layer {name!r}; {closest(name, shapes)} '
                    f'(run with --config.mode=list_features to see every name and shape)')
        return {name: shapes[name] for name in names}

    def pick_logits(self, out: Any) -> jnp.ndarray:
        """The logits in a module's output: a dict entry, a tuple item, or the output."""
        key = self.logits_key
        if isinstance(out, Mapping):
            key = key or 'logits'
            if key not in out:
                raise ConfigError(
                    f'{self.name}.logits_key={self.logits_key!r}: the module returns a dict '
                    f'with keys {sorted(out)}; set {self.name}.logits_key to the one with logits')
            return out[key]
        if isinstance(out, (tuple, list)):
            fields = getattr(out, '_fields', ())  # a NamedTuple: by name or by index
            if key in fields:
                return getattr(out, key)
            index = key or '0'
            if not index.lstrip('-').isdigit() or not -len(out) <= int(index) < len(out):
                raise ConfigError(
                    f'{self.name}.logits_key={key!r}: the module returns a tuple of '
                    f'{len(out)} outputs; set {self.name}.logits_key to the index of the '
                    f"logits, e.g. '0'{f' (or a field: {list(fields)})' if fields else ''}")
            return out[int(index)]
        if key:
            raise ConfigError(
                f'{self.name}.logits_key={key!r}: the module returns one array, not a dict or '
                f'tuple; leave {self.name}.logits_key empty')
        return out
