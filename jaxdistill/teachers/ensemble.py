"""Several teachers behind the one-model interface: the step and the evaluators see a `Model`.

``distill.ensemble`` says how their outputs meet the student:

- ``'probs'``: the weighted mean of the teachers' probabilities, ``log sum_k w_k p_k``,
  is *the* teacher distribution (returned as log-probabilities, which are valid logits);
  the losses' temperature then applies to it. Hinton et al. 2015, section 3.
- ``'terms'``: every teacher-based loss term is computed once per teacher and summed
  with the weights (``Objective`` receives the stacked logits ``[K, ...]``).

Feature losses tap the first teacher (``teacher``) only. Evaluation always compares the
student with the ``'probs'`` ensemble. Weights are normalised to sum to 1.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from jaxdistill.models.adapter import Model

MODES = ('probs', 'terms')


def normalise(weights: Sequence[float]) -> list[float]:
    """Teacher weights scaled to sum to 1 (what provenance reports and 'terms' applies)."""
    total = sum(weights)
    return [w / total for w in weights]


def mix_probabilities(logits: Sequence[jax.Array], weights: Sequence[float]) -> jax.Array:
    """``log(sum_k w_k softmax(z_k))`` in float32, computed stably in log space."""
    w = jnp.asarray(weights, jnp.float32)
    logp = jnp.stack([jax.nn.log_softmax(z.astype(jnp.float32), axis=-1) for z in logits])
    log_w = jnp.log(w / w.sum()).reshape((-1,) + (1,) * (logp.ndim - 1))
    return jax.nn.logsumexp(logp + log_w, axis=0)


@dataclasses.dataclass(frozen=True)
class Ensemble:
    """Teachers ``models`` with ``weights``; variables are ``{'params': (p_0, ...),
    'state': (s_0, ...)}`` so one sharded tree holds them all. Each teacher is initialised,
    restored and inspected (feature taps) on its own; the ensemble only applies them."""

    models: tuple[Model, ...]
    weights: tuple[float, ...]
    mode: str = 'probs'
    name: str = 'ensemble'

    def apply(self, params: Sequence[Any], state: Sequence[Any], inputs: jax.Array, *,
              train: bool = False, rng: jax.Array | None = None, taps: Sequence[str] = ()
              ) -> tuple[jax.Array, Any, dict[str, Any]]:
        """Frozen teachers only: ``train`` must be False (their statistics never move)."""
        del rng
        if train:
            raise ValueError('an Ensemble of teachers is never trained')
        logits, features = [], {}
        for i, (model, p, s) in enumerate(zip(self.models, params, state)):
            z, _, f = model.apply(p, s, inputs, train=False, taps=taps if i == 0 else ())
            logits.append(z)
            features = f if i == 0 else features
        if self.mode == 'terms':
            combined = jnp.stack([z.astype(jnp.float32) for z in logits])
        else:
            combined = mix_probabilities(logits, self.weights)
        return combined, tuple(state), features
