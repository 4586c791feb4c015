"""``teacher_signal='on_policy'``: generalized knowledge distillation (GKD, Agarwal et al. 2024).

Before step ``s``, with probability ``distill.on_policy.lmbda`` (a pure function of
``(seed, s)``, so a resumed run makes the same choices), the data batch is replaced by
the student's own completions of its prompts: the first ``distill.sampling.prompt_len``
tokens of each row, continued by ``max_new_tokens`` tokens sampled from the student's
current parameters (KV-cached, under `jax.jit`, ``fold_in(key(seed), s)``). The step then
runs the teacher on those sequences and applies ``distill.losses`` to the generated
tokens only (``mask``); label losses (``ce``) skip such batches (``labelled`` False),
because the student's samples are not data. No gradient flows through sampling: the
samples are integers made before the step. With GKD's ``jsd`` (``beta``) in
``distill.losses`` this is the paper's objective; ``lmbda=0`` is supervised KD on data.

`OnPolicySignal` is the signal; its config sections are ``distill.on_policy`` and
``distill.sampling`` (shared with ``sequence``).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdistill.errors import ConfigError
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.signals import sequence
from jaxdistill.signals.base import BaseSignal, Context, Prepared, require_teacher_term


def uses_student_samples(seed: int, step: int, lmbda: float) -> bool:
    """Whether step ``step`` trains on the student's samples: a pure function of its inputs."""
    return bool(np.random.default_rng([seed, step, 0x6B64]).random() < lmbda)


def count(seed: int, steps: int, lmbda: float) -> int:
    """How many of ``steps`` steps train on the student's samples."""
    return sum(uses_student_samples(seed, s, lmbda) for s in range(steps))


class OnPolicy:
    """The stage's batch hook: ``hook(state, batch, step) -> batch`` (global arrays)."""

    def __init__(self, config, student, mesh):
        self.config, self.seed = config, config.seed
        self.lmbda = float(config.distill.on_policy.lmbda)
        rows = mesh_lib.batch_sharding(mesh)
        module = student.module

        def sampled(params, batch, rng):
            new = sequence.complete(module, params, batch, rng, config)
            return {**new, 'labelled': jnp.zeros(batch['inputs'].shape[:1], bool)}

        def data(batch):
            return {**batch, 'labelled': jnp.ones(batch['inputs'].shape[:1], bool)}

        self._sampled = jax.jit(sampled, out_shardings=rows)
        self._data = jax.jit(data, out_shardings=rows)

    def __call__(self, state, batch: dict[str, Any], step: int) -> dict[str, Any]:
        if not uses_student_samples(self.seed, step, self.lmbda):
            return self._data(batch)
        rng = jax.random.fold_in(jax.random.key(self.seed + 0x6B64), step)
        return self._sampled(state.params, batch, rng)

    def provenance(self, steps: int) -> dict[str, Any]:
        return {'on_policy_lambda': self.lmbda,
                'on_policy_steps': count(self.seed, steps, self.lmbda)}


class OnPolicySignal(BaseSignal):
    """``on_policy``: some batches are the student's own samples (the `OnPolicy` hook),
    scored by the teacher inside the step."""

    name = 'on_policy'
    tasks = ('lm',)
    report_keys = ('on_policy_lambda', 'on_policy_steps')

    def defaults(self) -> dict[str, ml_collections.ConfigDict]:
        c = ml_collections.ConfigDict()
        c.lmbda = 0.5  # GKD's lambda: the probability that a step trains on student samples
        return {'sampling': sequence.sampling_defaults(), 'on_policy': c}

    def check_config(self, config) -> None:
        sequence.check_sampling(config)
        lmbda = config.distill.on_policy.lmbda
        if not 0 <= lmbda <= 1:
            raise ConfigError(f'distill.on_policy.lmbda={lmbda} must be in [0, 1]')

    def check_models(self, config, teacher, student, objective) -> None:
        sequence.check_sampler(config, student, 'student.module')
        require_teacher_term(self.name, objective)

    def prepare(self, context: Context) -> Prepared:
        config = context.config
        hook = OnPolicy(config, context.student, context.mesh)
        return Prepared(batch_hook=hook, provenance={
            **hook.provenance(config.train.steps), 'sampling': config.distill.sampling.to_dict()})
