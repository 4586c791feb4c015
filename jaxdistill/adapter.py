"""One small interface between the train step and any Flax module.

The step never branches on what a model is: it calls `Model.init` and `Model.apply`.
A linen module becomes ``(params, state)`` where ``state`` holds every mutable
collection (BatchNorm ``batch_stats``, ...); it is updated in training and left
untouched in evaluation. Intermediate activations ("features") are tapped by module
path (``'conv0'``, ``'stage1_block0/proj'``) without editing the module.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.errors import ConfigError, closest

Params = Any
State = Any
TAPS = 'intermediates'


def _tap_filter(names: Sequence[str] | None):
    """capture_intermediates filter: the ``__call__`` outputs of the named submodules."""
    wanted = None if names is None else frozenset(names)

    def keep(module: nn.Module, method_name: str) -> bool:
        if method_name != '__call__' or not module.path:
            return False
        return wanted is None or '/'.join(module.path) in wanted

    return keep


def _collect(intermediates: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out = {}
    for key, value in intermediates.items():
        if key == '__call__':
            out[prefix.rstrip('/')] = value[0]
        elif isinstance(value, Mapping):
            out.update(_collect(value, f'{prefix}{key}/'))
    return out


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax module plus how to read its logits."""

    module: nn.Module
    logits_key: str = ''
    name: str = 'model'

    def init(self, rng: jax.Array, inputs: jnp.ndarray) -> tuple[Params, State]:
        p_rng, d_rng = jax.random.split(rng)
        variables = self.module.init({'params': p_rng, 'dropout': d_rng}, inputs, train=False)
        variables = dict(nn.meta.unbox(variables))  # plain arrays
        params = variables.pop('params', {})
        variables.pop(TAPS, None)
        return params, variables

    def apply(self, params: Params, state: State, inputs: jnp.ndarray, *, train: bool,
              rng: jax.Array | None = None, taps: Sequence[str] = ()
              ) -> tuple[jnp.ndarray, State, dict[str, Any]]:
        """Returns ``(logits, new_state, features)``; ``state`` is unchanged unless ``train``.

        ``features`` maps each name in ``taps`` to that submodule's output.
        """
        variables = {'params': params, **state}
        rngs = {'dropout': rng} if rng is not None else {}
        mutable = list(state.keys()) if (train and state) else []
        if taps:
            mutable.append(TAPS)
        out = self.module.apply(variables, inputs, train=train, rngs=rngs,
                                mutable=mutable or False,
                                capture_intermediates=_tap_filter(taps) if taps else False)
        new_state, features = state, {}
        if mutable:
            out, collections = out
            collections = dict(collections)
            features = _collect(collections.pop(TAPS, {}))
            if train and state:
                new_state = collections
        return self.pick_logits(out), new_state, {name: features[name] for name in taps}

    def feature_shapes(self, inputs: jnp.ndarray) -> dict[str, tuple[int, ...]]:
        """Every tappable submodule output and its shape (no computation, only tracing)."""

        def run(rng):
            params, state = self.init(rng, inputs)
            variables = {'params': params, **state}
            _, collections = self.module.apply(variables, inputs, train=False, mutable=[TAPS],
                                               capture_intermediates=_tap_filter(None))
            return _collect(collections[TAPS])

        shapes = jax.eval_shape(run, jax.random.key(0))
        return {name: tuple(s.shape) for name, s in shapes.items() if hasattr(s, 'shape')}

    def check_taps(self, names: Sequence[str], inputs: jnp.ndarray,
                   key: str) -> dict[str, tuple[int, ...]]:
        shapes = self.feature_shapes(inputs)
        for name in names:
            if name not in shapes:
                raise ConfigError(
                    f'{key}: {self.name} has no layer {name!r}; {closest(name, shapes)} '
                    f'(run with --config.mode=list_features to see every name and shape)')
        return {name: shapes[name] for name in names}

    def pick_logits(self, out: Any) -> jnp.ndarray:
        if isinstance(out, Mapping):
            key = self.logits_key or 'logits'
            if key not in out:
                raise ConfigError(
                    f'{self.name}.logits_key={self.logits_key!r}: the module returns a dict '
                    f'with keys {sorted(out)}; set {self.name}.logits_key to the one with logits')
            return out[key]
        if isinstance(out, (tuple, list)):
            return out[0]
        return out
