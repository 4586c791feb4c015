"""One small interface between the train step and any Flax module.

The step never branches on what a model is: it calls `Model.init` and `Model.apply`.
A linen module becomes ``(params, state)`` where ``state`` holds every mutable
collection (BatchNorm ``batch_stats``, ...); it is updated in training and left
untouched in evaluation.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.errors import ConfigError

Params = Any
State = Any


@dataclasses.dataclass(frozen=True)
class Model:
    """A Flax module plus how to read its logits."""

    module: nn.Module
    logits_key: str = ''
    name: str = 'model'

    def init(self, rng: jax.Array, inputs: jnp.ndarray) -> tuple[Params, State]:
        p_rng, d_rng = jax.random.split(rng)
        variables = self.module.init({'params': p_rng, 'dropout': d_rng}, inputs, train=False)
        variables = dict(variables)
        params = variables.pop('params', {})
        return params, variables

    def apply(self, params: Params, state: State, inputs: jnp.ndarray, *, train: bool,
              rng: jax.Array | None = None) -> tuple[jnp.ndarray, State, dict[str, Any]]:
        """Returns ``(logits, new_state, features)``; ``state`` is unchanged unless ``train``."""
        variables = {'params': params, **state}
        rngs = {'dropout': rng} if rng is not None else {}
        mutable = list(state.keys()) if (train and state) else False
        out = self.module.apply(variables, inputs, train=train, rngs=rngs, mutable=mutable)
        if mutable:
            out, new_state = out
            new_state = dict(new_state)
        else:
            new_state = state
        return self.pick_logits(out), new_state, {}

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
