"""Training one model: state, optimizer, the jitted step, and the stage loop.

The same functions train the teacher, the baseline (labels only) and the distilled
student; they differ only in the `Objective` and whether a frozen teacher is passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jaxdistill import mesh as mesh_lib
from jaxdistill.adapter import Model
from jaxdistill.checkpoint import StageCheckpoints
from jaxdistill.data.prefetch import prefetch
from jaxdistill.metrics import MetricWriter, Progress
from jaxdistill.objective import Objective
from jaxdistill.tasks import StepInputs


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any  # the module's parameters: what is evaluated, hashed and exported
    model_state: Any  # mutable collections, e.g. BatchNorm statistics
    opt_state: Any  # over (params, aux)
    aux: Any  # trained with the student, not part of it: feature-loss projections

    @property
    def model(self) -> dict[str, Any]:
        return {'params': self.params, 'state': self.model_state}

    @property
    def train(self) -> dict[str, Any]:
        return {'step': self.step, 'opt_state': self.opt_state, 'aux': self.aux}


def learning_rate_schedule(cfg, total_steps: int) -> optax.Schedule:
    """Linear warm-up to ``learning_rate``, then cosine / constant / linear to 0."""
    lr, warmup = cfg.learning_rate, cfg.warmup_steps
    rest = max(total_steps - warmup, 1)
    after = {
        'cosine': optax.cosine_decay_schedule(lr, rest),
        'constant': optax.constant_schedule(lr),
        'linear': optax.linear_schedule(lr, 0.0, rest),
    }[cfg.schedule]
    if not warmup:
        return after
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), after], [warmup])


def make_optimizer(cfg, total_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(cfg, total_steps)
    if cfg.name in ('adamw', 'adam'):
        opt = optax.adamw(schedule, b1=cfg.b1, b2=cfg.b2,
                          weight_decay=cfg.weight_decay if cfg.name == 'adamw' else 0.0)
    else:
        opt = optax.chain(optax.add_decayed_weights(cfg.weight_decay),
                          optax.sgd(schedule, momentum=cfg.momentum, nesterov=cfg.nesterov))
    if cfg.clip_norm:
        opt = optax.chain(optax.clip_by_global_norm(cfg.clip_norm), opt)
    return opt


def _init_fn(model: Model, optimizer, sample, projections: dict[str, tuple[int, int]]):
    def init(rng):
        model_rng, aux_rng = jax.random.split(rng)
        params, state = model.init(model_rng, sample)
        init_proj = jax.nn.initializers.lecun_normal()
        aux = {key: init_proj(jax.random.fold_in(aux_rng, i), shape, jnp.float32)
               for i, (key, shape) in enumerate(sorted(projections.items()))}
        return TrainState(jnp.zeros((), jnp.int32), params, state,
                          optimizer.init((params, aux)), aux)

    return init


def create_train_state(model: Model, optimizer: optax.GradientTransformation, rng: jax.Array,
                       sample: jax.Array, mesh: Mesh,
                       projections: dict[str, tuple[int, int]] | None = None
                       ) -> tuple[TrainState, Any]:
    """Initialises straight into the target shardings (no full copy on one device)."""
    init = _init_fn(model, optimizer, sample, projections or {})
    _, shardings = mesh_lib.sharded_abstract(mesh, jax.eval_shape(init, rng))
    return jax.jit(init, out_shardings=shardings)(rng), shardings


def abstract_state(model: Model, optimizer, rng, sample, mesh,
                   projections: dict[str, tuple[int, int]] | None = None
                   ) -> tuple[TrainState, Any]:
    """Shapes, dtypes and shardings of the state, without computing it."""
    init = _init_fn(model, optimizer, sample, projections or {})
    return mesh_lib.sharded_abstract(mesh, jax.eval_shape(init, rng))


def make_train_step(student: Model, objective: Objective, optimizer, *, mesh: Mesh,
                    state_shardings, prepare: Callable[[dict, jax.Array], StepInputs],
                    seed: int, teacher: Model | None = None,
                    teacher_shardings=None) -> Callable:
    """Returns ``step(state, teacher_model, batch) -> (state, metrics)``, jitted once.

    ``prepare(batch, rng)`` (from the task) turns a batch into the models' inputs, the
    targets and the masks; the step itself knows nothing of images or tokens.
    """

    def step_fn(state: TrainState, teacher_model, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        data_rng, dropout_rng = jax.random.split(rng)
        inputs, targets, mask, labelled = prepare(batch, data_rng)
        teacher_logits, teacher_features = None, {}
        if teacher is not None:
            teacher_logits, _, teacher_features = teacher.apply(
                teacher_model['params'], teacher_model['state'], inputs, train=False,
                taps=objective.teacher_taps)
            teacher_logits, teacher_features = jax.lax.stop_gradient(
                (teacher_logits, teacher_features))

        def loss_fn(trained):
            params, aux = trained
            logits, new_state, features = student.apply(
                params, state.model_state, inputs, train=True, rng=dropout_rng,
                taps=objective.student_taps)
            loss, metrics = objective(state.step, logits, teacher_logits, targets, mask,
                                      label_mask=labelled, student_features=features,
                                      teacher_features=teacher_features, projections=aux)
            return loss, (new_state, metrics)

        trained = (state.params, state.aux)
        (_, (new_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        updates, opt_state = optimizer.update(grads, state.opt_state, trained)
        params, aux = optax.apply_updates(trained, updates)
        metrics['grad_norm'] = optax.global_norm(grads)
        return state.replace(step=state.step + 1, params=params, model_state=new_state,
                             opt_state=opt_state, aux=aux), metrics

    replicated = mesh_lib.replicated(mesh)
    teacher_shardings = teacher_shardings if teacher is not None else None
    return jax.jit(step_fn,
                   in_shardings=(state_shardings, teacher_shardings,
                                 mesh_lib.batch_sharding(mesh)),
                   out_shardings=(state_shardings, replicated),
                   donate_argnums=(0,))


class _TrainClock:
    """Seconds spent training since the last lap, excluding evaluation and saving."""

    def start(self, step: int) -> None:
        self.t0 = self._lap_t = time.perf_counter()
        self._lap_step, self._paused = step, 0.0

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self._paused += time.perf_counter() - t

    def lap(self, step: int) -> tuple[float, int]:
        now = time.perf_counter()
        out = (now - self._lap_t - self._paused, step - self._lap_step)
        self._lap_t, self._lap_step, self._paused = now, step, 0.0
        return out


@dataclasses.dataclass
class StageResult:
    model: dict[str, Any]  # {'params', 'state'}
    meta: dict[str, Any]  # steps, train_loss, steps_per_second, history, ...


@dataclasses.dataclass
class Stage:
    """Everything one stage needs; `run_stage` trains it or resumes it from ``directory``."""

    name: str
    directory: str
    model: Model
    objective: Objective
    steps: int
    seed: int
    batches: Any  # grain.MapDataset of this process's rows, indexed by step
    teacher: Model | None = None
    teacher_model: Any = None
    teacher_shardings: Any = None
    evaluate: Callable[[dict[str, Any]], dict[str, float]] | None = None
    projections: dict[str, tuple[int, int]] | None = None  # feature-loss projector shapes
    # The task's ``prepare(batch, rng) -> StepInputs`` (e.g. with this stage's mixup).
    prepare: Callable[[dict, jax.Array], StepInputs] | None = None


def run_stage(stage: Stage, config, mesh: Mesh, sample: jax.Array,
              is_main: bool = True) -> StageResult:
    tcfg = config.train
    optimizer = make_optimizer(config.optimizer, stage.steps)
    rng = jax.random.key(stage.seed)
    ckpts = StageCheckpoints(stage.directory, keep=tcfg.keep_checkpoints)
    latest = ckpts.latest_step()
    meta = {'stage': stage.name, 'steps': stage.steps, 'done': False, 'history': [],
            'train_seconds': 0.0, 'timed_steps': 0}
    if latest is not None:
        abstract, shardings = abstract_state(stage.model, optimizer, rng, sample, mesh,
                                             stage.projections)
        restored = ckpts.restore(latest, abstract.model, abstract.train)
        meta = restored.meta
        state = TrainState(restored.train['step'], restored.model['params'],
                           restored.model['state'], restored.train['opt_state'],
                           restored.train['aux'])
        if meta.get('done') and latest == stage.steps:
            ckpts.close()
            if is_main:
                print(f'{stage.name:<9} done already ({stage.steps} steps, '
                      f'loss {meta["train_loss"]:.4f}): skipped')
            return StageResult(state.model, meta)
    else:
        state, shardings = create_train_state(stage.model, optimizer, rng, sample, mesh,
                                              stage.projections)
    step_fn = make_train_step(stage.model, stage.objective, optimizer, mesh=mesh,
                              state_shardings=shardings, prepare=stage.prepare,
                              seed=stage.seed, teacher=stage.teacher,
                              teacher_shardings=stage.teacher_shardings)
    writer = MetricWriter(stage.directory + '_metrics', enabled=is_main)
    start = int(state.step)
    progress = Progress(stage.name, stage.steps, start=start, enabled=is_main)
    history = meta['history']
    clock = _TrainClock()
    batches = prefetch(lambda s: mesh_lib.to_global(mesh, stage.batches[s]), start, stage.steps)
    for step, batch in zip(range(start, stage.steps), batches):
        state, metrics = step_fn(state, stage.teacher_model, batch)
        done = step + 1
        if step == start:  # the first step compiles: start the clocks after it
            jax.block_until_ready(metrics)
            clock.start(done)
            progress.t0, progress.start = clock.t0, done
        if done % tcfg.log_every == 0 or done == stage.steps:
            scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
            history.append({'step': done, **scalars})
            writer.write(done, scalars)
            progress.update(done, scalars['loss'])
        if stage.evaluate and tcfg.eval_every and done % tcfg.eval_every == 0:
            with clock.paused():
                scores = {f'eval/{k}': v for k, v in stage.evaluate(state.model).items()}
            history.append({'step': done, **scores})
            writer.write(done, scores)
        if done % tcfg.checkpoint_every == 0 or done == stage.steps:
            jax.block_until_ready(state)
            seconds, steps = clock.lap(done)
            meta.update(train_seconds=meta['train_seconds'] + seconds,
                        timed_steps=meta['timed_steps'] + steps,
                        done=done == stage.steps, history=history,
                        train_loss=next(h['loss'] for h in reversed(history) if 'loss' in h))
            meta['steps_per_second'] = (meta['timed_steps'] / meta['train_seconds']
                                        if meta['train_seconds'] > 0 else 0.0)
            with clock.paused():
                ckpts.save(done, state.model, state.train, dict(meta))
    ckpts.wait()
    ckpts.close()
    writer.close()
    progress.done(f'{meta.get("steps_per_second", 0.0):.1f} steps/s overall')
    return StageResult(state.model, meta)


def params_sha256(params: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in sorted path order."""
    import hashlib

    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(jax.device_get(params))[0]
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f'{arr.dtype.str}{arr.shape}'.encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def count_params(params: Any) -> int:
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))
