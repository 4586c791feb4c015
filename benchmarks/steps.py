"""The steps being timed: jaxdistill's own, their parts alone, and the loops they are compared to.

Each builder returns a `Runner`: calling it runs one training step (carrying its state
from call to call, as a training loop does) and returns something to block on.

* `distill_runner`: jaxdistill's real ``train.make_train_step`` with a frozen teacher and the
  task's ``prepare_fn``: one jit, state donated, the batch already on the device (what
  ``train.run_stage``'s prefetch provides).
* `student_runner`: the same function without a teacher and with the label loss alone.
* `teacher_forward`: the teacher's inference alone, jitted, same batch.
* `naive_runner`: the loop a user would write by hand from the Flax and Optax docs: the
  teacher in its own jit, fp32, no donation, numpy batches handed over every step.
* `cached_runner`: the real step under ``teacher_signal='cached'`` (no teacher; the batch
  carries the stored top-k), or `student_runner`: what cached targets cost over plain training.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from benchmarks import harness
from benchmarks.pairs import Pair
from jaxdistill import objective as objective_lib
from jaxdistill import signals, train
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.signals import cache as cache_lib

STEPS_FOR_SCHEDULE = 1000  # the optimizer's schedule length; the timed steps sit in warm-up


class Runner:
    """``runner()`` advances one step: ``carry, out = step(carry, *args)``; returns ``out``."""

    def __init__(self, step: Callable, carry: Any, args: tuple):
        self._step, self.carry, self._args = step, carry, args

    def __call__(self) -> Any:
        self.carry, out = self._step(self.carry, *self._args)
        return out

    def compiled_flops(self) -> float:
        """XLA's FLOP count of one step (the step must be a single jitted function)."""
        return harness.compiled_flops(self._step, self.carry, *self._args)


def make_mesh(devices: list | None = None) -> Mesh:
    cfg = {'data': -1, 'fsdp': 1, 'tensor': 1}
    return mesh_lib.make_mesh(cfg, devices)


def _optimizer(pair: Pair) -> optax.GradientTransformation:
    return train.make_optimizer(pair.optimizer_config(), STEPS_FOR_SCHEDULE)


def _train_runner(pair: Pair, mesh: Mesh, objective: objective_lib.Objective,
                  teacher_vars: dict | None, batch: dict | None = None,
                  prepare: Callable | None = None) -> Runner:
    optimizer = _optimizer(pair)
    sample = pair.batch['image' if pair.name == 'image' else 'inputs']
    state, shardings = train.create_train_state(pair.student, optimizer, jax.random.key(0),
                                                sample, mesh)
    teacher, t_shardings = None, None
    if teacher_vars is not None:
        teacher = pair.teacher
        t_shardings = mesh_lib.param_sharding(mesh, teacher_vars)
        teacher_vars = jax.device_put(teacher_vars, t_shardings)
    step = train.make_train_step(pair.student, objective, optimizer, mesh=mesh,
                                 state_shardings=shardings, prepare=prepare or pair.prepare,
                                 seed=0, teacher=teacher, teacher_shardings=t_shardings)
    batch = mesh_lib.to_global(mesh, pair.batch if batch is None else batch)
    return Runner(step, state, (teacher_vars, batch))


def distill_runner(pair: Pair, mesh: Mesh, teacher_vars: dict) -> Runner:
    """jaxdistill's distillation step exactly as ``train.run_stage`` builds it."""
    return _train_runner(pair, mesh, pair.objective(), teacher_vars)


def student_runner(pair: Pair, mesh: Mesh) -> Runner:
    """The same step with no teacher and the label loss alone: plain student training."""
    return _train_runner(pair, mesh, objective_lib.label_only(), None)


def teacher_forward(pair: Pair, mesh: Mesh, teacher_vars: dict) -> Runner:
    """The teacher's forward pass alone (what the distill step adds to student training)."""
    batch = mesh_lib.to_global(mesh, pair.batch)

    def forward(carry, tv, b):
        inputs = pair.prepare(b, jax.random.key(0)).inputs
        return carry, pair.teacher.apply(tv['params'], tv['state'], inputs, train=False)[0]

    return Runner(jax.jit(forward), None, (teacher_vars, batch))


# ------------------------------------------------------------------------------ naive loop
def _soft_kd(student_logits, teacher_logits, temperature):
    """Hinton KD as the optax docs compose it: T^2 * KL(softmax(t/T) || softmax(s/T))."""
    log_p_s = jax.nn.log_softmax(student_logits / temperature, axis=-1)
    log_p_t = jax.nn.log_softmax(teacher_logits / temperature, axis=-1)
    return temperature**2 * optax.losses.kl_divergence_with_log_targets(log_p_s, log_p_t)


def naive_runner(pair: Pair, teacher_vars: dict, params: Any = None) -> Runner:
    """A hand-written KD loop: two jits, fp32, no donation, numpy batches every step.

    ``params``: the student's initial parameters (tests start it where jaxdistill's does).
    """
    t_mod, s_mod = pair.teacher.module, pair.student.module
    (kd, ce) = pair.losses
    x_key, y_key = ('image', 'label') if pair.name == 'image' else ('inputs', 'targets')
    t_vars = {'params': teacher_vars['params'], **teacher_vars['state']}
    optimizer = _optimizer(pair)
    if params is None:
        params = nn.meta.unbox(s_mod.init(jax.random.key(0), pair.batch[x_key])['params'])
    opt_state = optimizer.init(params)

    @jax.jit
    def teacher_logits(variables, x):
        return t_mod.apply(variables, x, train=False)

    @jax.jit
    def student_step(params, opt_state, x, y, mask, t_logits):
        def loss_fn(p):
            logits = s_mod.apply({'params': p}, x, train=True)
            per_kd = _soft_kd(logits, t_logits, kd.temperature)
            per_ce = optax.softmax_cross_entropy_with_integer_labels(logits, y)
            per = kd.weight * per_kd + ce.weight * per_ce
            return jnp.sum(per * mask) / jnp.maximum(jnp.sum(mask), 1.0)

        loss, grads = jax.value_and_grad(loss_fn)(params)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    mask = pair.batch.get('mask', np.ones(pair.batch[y_key].shape, bool)).astype(np.float32)

    def step(carry, batch):
        params, opt_state = carry
        t = teacher_logits(t_vars, batch[x_key])
        params, opt_state, loss = student_step(params, opt_state, batch[x_key], batch[y_key],
                                               mask, t)
        return (params, opt_state), loss

    return Runner(step, (params, opt_state), (pair.batch,))


# ------------------------------------------------------------------------------ cached targets
def topk_targets(pair: Pair, teacher_vars: dict, k: int, dtype: str = 'float16'
                 ) -> dict[str, np.ndarray]:
    """The teacher's top-k per token, computed once and stored as the cache stores it
    (`jaxdistill.signals.cache.encode`: uint16 ids, float16 or uint8 log-probabilities)."""
    logits = pair.teacher.apply(teacher_vars['params'], teacher_vars['state'],
                                pair.batch['inputs'], train=False)[0]
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    values, ids = jax.lax.top_k(logp, k)
    return cache_lib.encode(np.asarray(values), np.asarray(ids), dtype, logits.shape[-1])


def cached_runner(pair: Pair, mesh: Mesh, cache: dict[str, np.ndarray] | None) -> Runner:
    """jaxdistill's real step under ``distill.teacher_signal='cached'``: no teacher, the
    batch carries the stored top-k, the pair's own ``distill.losses`` (kd becomes the
    sparse `losses.topk_kl`); with ``cache=None``, the same step with ``ce`` alone.

    Both variants are `train.make_train_step` as ``train.run_stage`` builds it, so their
    ratio is the cost of reading cached targets and computing the sparse KL, nothing else.
    """
    if cache is None:
        return student_runner(pair, mesh)
    return _train_runner(pair, mesh, pair.objective(), None, batch=dict(pair.batch, **cache),
                         prepare=signals.step_prepare(signals.get('cached'), pair.prepare))
