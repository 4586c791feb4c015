"""Training one model: state, optimizer, the jitted step, and the stage loop.

The same functions train the teacher, the baseline (labels only) and the distilled
student; they differ only in the `Objective` and whether a frozen teacher is passed.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import signal
import time
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh

from jaxdistill import objective as objective_lib
from jaxdistill import provenance
from jaxdistill.data import loader
from jaxdistill.data import prefetch as prefetch_lib
from jaxdistill.models.adapter import Model
from jaxdistill.objective import Objective
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks import StepInputs
from jaxdistill.tasks.evaluate import count_params  # noqa: F401  (train.count_params: run, export)
from jaxdistill.train import checkpoint as ckpt_lib
from jaxdistill.train import hidden_logits, telemetry
from jaxdistill.train.checkpoint import StageCheckpoints
from jaxdistill.train.metrics import MetricWriter, Progress, wandb_args
from jaxdistill.train.preemption import NonFiniteGuard, Preempted, PreemptionWatch


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


def _init_fn(model: Model, optimizer, sample, projections: dict[str, tuple[int, int]],
             boxed: bool = False):
    def init(rng, given=None):
        model_rng, aux_rng = jax.random.split(rng)
        params, state = model.init(model_rng, sample, boxed=boxed)
        if given is not None:  # a student that starts from given weights (models.students)
            params = jax.tree.map(lambda g, p: g.astype(p.dtype), given, params)
        init_proj = jax.nn.initializers.lecun_normal()
        aux = {key: init_proj(jax.random.fold_in(aux_rng, i), shape, jnp.float32)
               for i, (key, shape) in enumerate(sorted(projections.items()))}
        return TrainState(jnp.zeros((), jnp.int32), params, state,
                          optimizer.init((params, aux)), aux)

    return init


def create_train_state(model: Model, optimizer: optax.GradientTransformation, rng: jax.Array,
                       sample: jax.Array, mesh: Mesh,
                       projections: dict[str, tuple[int, int]] | None = None,
                       init_params: Any = None) -> tuple[TrainState, Any]:
    """Initialises straight into the target shardings (no full copy on one device);
    ``init_params`` (plain arrays in the params' shardings) replace the random params."""
    init = _init_fn(model, optimizer, sample, projections or {})
    _, shardings = abstract_state(model, optimizer, rng, sample, mesh, projections)
    return jax.jit(init, out_shardings=shardings)(rng, init_params), shardings


def abstract_state(model: Model, optimizer, rng, sample, mesh,
                   projections: dict[str, tuple[int, int]] | None = None
                   ) -> tuple[TrainState, Any]:
    """Shapes, dtypes and shardings of the state, without computing it. Traced with the
    logical axis names kept, which optax copies onto the moments: they shard like params."""
    init = _init_fn(model, optimizer, sample, projections or {}, boxed=True)
    return mesh_lib.sharded_abstract(mesh, jax.eval_shape(init, rng), model.sharding_rules)


def make_train_step(student: Model, objective: Objective, optimizer, *, mesh: Mesh,
                    state_shardings, prepare: Callable[[dict, jax.Array], StepInputs],
                    seed: int, teacher: Model | None = None,
                    teacher_shardings=None, grad_accum_steps: int = 1,
                    token_loss: str = 'dense', chunk_size: int = 1024) -> Callable:
    """Returns ``step(state, teacher_model, batch) -> (state, metrics)``, jitted once.

    ``prepare(batch, rng)`` (from the task) turns a batch into the models' inputs, the
    targets and the masks; the step itself knows nothing of images or tokens.

    ``grad_accum_steps=N`` splits the prepared batch into N micro-batches (rows ``m``,
    ``m + N``, ... so each stays spread over the data axis), runs the teacher and the student
    on one at a time under ``lax.scan`` and sums their gradients: every token and example
    term is normalised by the whole batch's valid count (`objective.accumulation_window`),
    so the update is the one-batch update, in about 1/N of the activation memory. Feature
    and batch-level terms (``rkd``, ``dist``, ...) are averaged over the micro-batches, and
    mutable state (BatchNorm statistics) is updated once per micro-batch.

    ``token_loss`` (`jaxdistill.train.hidden_logits`, resolved by `run.plan`): ``'chunked'`` taps
    the decoders' final hidden states and computes the logit terms ``chunk_size`` tokens at
    a time from them and the output projections; ``'vocab_sharded'`` computes the pointwise
    teacher terms on logits split over the mesh's tensor axis.
    """
    s_head = hidden_logits.head(student) if token_loss == 'chunked' else None
    t_head = hidden_logits.head(teacher) if token_loss == 'chunked' and teacher else None
    hidden_tap = (hidden_logits.HIDDEN_TAP,)

    def objective_loss(total_of, logits, teacher_logits, targets, mask, labelled, step):
        """``total_of(precomputed) -> (loss, metrics)``, its logit terms computed without
        the dense path where ``token_loss`` says so."""
        if token_loss not in ('chunked', 'vocab_sharded'):
            return total_of(None)
        rows = {i: objective_lib.rows_of(t, mask, labelled)
                for i, t in enumerate(objective.terms) if not t.taps}
        if isinstance(logits, hidden_logits.HiddenLogits):
            return hidden_logits.chunked_objective(total_of, objective, step, logits,
                                                   teacher_logits, targets, rows, chunk_size)
        return total_of(hidden_logits.sharded_means(objective, step, logits, teacher_logits,
                                                    rows, mesh))

    def micro_loss(trained, model_state, step, micro: StepInputs, teacher_model, dropout_rng,
                   window):
        inputs, targets, mask, labelled, teacher_logits = micro
        teacher_features = {}
        # another tokenizer: the teacher reads its own tokens (`crosstok.data.CrossTeacher`)
        cross = teacher_logits if hasattr(teacher_logits, 'alignment') else None
        if teacher is not None:
            teacher_logits, _, teacher_features = teacher.apply(
                teacher_model['params'], teacher_model['state'],
                inputs if cross is None else cross.inputs, train=False,
                taps=objective.teacher_taps + (hidden_tap if t_head else ()))
            if t_head:  # its dense logits are then unused: XLA drops them
                teacher_logits = hidden_logits.HiddenLogits(
                    teacher_features.pop(hidden_tap[0]), t_head(teacher_model['params']))
            teacher_logits, teacher_features = jax.lax.stop_gradient(
                (teacher_logits, teacher_features))
            if cross is not None:
                teacher_logits = cross._replace(logits=teacher_logits)

        def loss_fn(trained):
            params, aux = trained
            logits, new_state, features = student.apply(
                params, model_state, inputs, train=True, rng=dropout_rng,
                taps=objective.student_taps + (hidden_tap if s_head else ()))
            if s_head:
                logits = hidden_logits.HiddenLogits(features.pop(hidden_tap[0]), s_head(params))
            total_of = functools.partial(
                objective, step, logits, teacher_logits, targets, mask, label_mask=labelled,
                student_features=features, teacher_features=teacher_features,
                projections=aux, window=window)
            loss, metrics = objective_loss(lambda values: total_of(precomputed=values), logits,
                                           teacher_logits, targets, mask, labelled, step)
            return loss, (new_state, metrics)

        (_, (new_state, metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(trained)
        return grads, new_state, metrics

    def accumulate(state: TrainState, teacher_model, prepared: StepInputs, dropout_rng):
        n = grad_accum_steps
        micro = jax.tree.map(lambda x: jnp.moveaxis(x.reshape(x.shape[0] // n, n, *x.shape[1:]),
                                                    1, 0), prepared)
        first = jax.tree.map(lambda x: x[0], micro)
        logits = jax.eval_shape(lambda p: student.apply(p, state.model_state, first.inputs,
                                                        train=False)[0], state.params)
        batch = jax.tree.leaves(prepared.inputs)[0].shape[0]
        window = objective_lib.accumulation_window(
            objective, (batch,) + tuple(logits.shape[1:]), prepared.mask,
            prepared.label_mask, n, teacher=prepared.teacher)
        trained = (state.params, state.aux)

        def body(carry, xs):
            grads, model_state, metrics = carry
            m, one = xs
            g, model_state, out = micro_loss(trained, model_state, state.step, one,
                                             teacher_model, jax.random.fold_in(dropout_rng, m),
                                             window)
            add = lambda a, b: jax.tree.map(jnp.add, a, b)
            return (add(grads, g), model_state, add(metrics, out)), None

        zeros = jax.tree.map(jnp.zeros_like, trained)
        metric_zeros = {k: jnp.zeros((), jnp.float32)
                        for k in (*objective.metric_names, 'loss')}
        (grads, model_state, metrics), _ = jax.lax.scan(
            body, (zeros, state.model_state, metric_zeros), (jnp.arange(n), micro))
        return grads, model_state, metrics

    def step_fn(state: TrainState, teacher_model, batch):
        rng = jax.random.fold_in(jax.random.key(seed), state.step)
        data_rng, dropout_rng = jax.random.split(rng)
        prepared = prepare(batch, data_rng)
        if grad_accum_steps == 1:
            grads, new_state, metrics = micro_loss((state.params, state.aux), state.model_state,
                                                   state.step, prepared, teacher_model,
                                                   dropout_rng, None)
        else:
            grads, new_state, metrics = accumulate(state, teacher_model, prepared, dropout_rng)
        trained = (state.params, state.aux)
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
    # The teacher's params_sha256 and path: in a student's checkpoints, checked on resume.
    teacher_identity: dict[str, Any] | None = None
    # ``hook(state, batch, step) -> batch`` on the mesh before each step (on-policy samples)
    batch_hook: Callable[[Any, dict, int], dict] | None = None
    # How logit terms are computed (`jaxdistill.train.hidden_logits`): 'dense', 'chunked', ...
    token_loss: str = 'dense'
    # The parameters a fresh start begins from (None: random from the seed); see students.py
    init_params: Any = None


def run_stage(stage: Stage, config, mesh: Mesh, sample: jax.Array,
              is_main: bool = True) -> StageResult:
    """Trains ``stage`` from scratch, or continues it from its newest good checkpoint.

    A resumed stage continues the same run bit for bit: batch ``s`` and step ``s``'s
    random numbers are functions of (seed, s), and the checkpoint must show the same
    RNG, data and teacher (`checkpoint.check_resume`). On SIGTERM the stage saves at the
    next step boundary and raises `preemption.Preempted` (exit status 0).
    """
    tcfg = config.train
    started = time.perf_counter()  # time to first step: restore or init, compile, step 1
    optimizer = make_optimizer(config.optimizer, stage.steps)
    if tcfg.skip_nonfinite:  # a skipped step leaves params and optimizer state as they were
        optimizer = optax.apply_if_finite(optimizer, max_consecutive_errors=stage.steps + 1)
    say = print if is_main else (lambda _: None)
    ckpts = StageCheckpoints(stage.directory, keep=tcfg.keep_checkpoints,
                             best_metric=tcfg.best_metric, best_mode=tcfg.best_mode, report=say)
    try:
        state, shardings, meta = _restore_or_init(stage, config, ckpts, optimizer, mesh, sample)
        if meta['done'] and int(state.step) == stage.steps:
            say(f'{stage.name:<9} done already ({stage.steps} steps, '
                f'loss {meta["train_loss"]:.4f}): skipped')
            return StageResult(state.model, meta)
        if int(state.step):
            say(f'{stage.name:<9} resuming from step {int(state.step)} '
                f'({ckpts.directory}/{int(state.step)})')
        step_fn = make_train_step(stage.model, stage.objective, optimizer, mesh=mesh,
                                  state_shardings=shardings, prepare=stage.prepare,
                                  seed=stage.seed, teacher=stage.teacher,
                                  teacher_shardings=stage.teacher_shardings,
                                  grad_accum_steps=tcfg.grad_accum_steps,
                                  token_loss=stage.token_loss,
                                  chunk_size=config.distill.chunk_size)
        if tcfg.skip_nonfinite:
            step_fn = _keep_model_state_on_skip(step_fn)
        with PreemptionWatch() as watch:
            loop = _Loop(stage, config, mesh, ckpts, meta, is_main, started)
            state = loop.run(state, step_fn, watch)
    finally:
        ckpts.close()  # waits for the last async save
    return StageResult(state.model, meta)


def _restore_or_init(stage: Stage, config, ckpts: StageCheckpoints, optimizer, mesh: Mesh,
                     sample) -> tuple[TrainState, Any, dict[str, Any]]:
    """The state, shardings and meta to start from: the newest good checkpoint, restored
    into this mesh's shardings (whatever layout wrote it), or a fresh initialisation."""
    rng = jax.random.key(stage.seed)
    identity = ckpt_lib.run_identity(stage.seed, stage.batches[0], stage.teacher_identity)
    abstract, shardings = abstract_state(stage.model, optimizer, rng, sample, mesh,
                                         stage.projections)
    found = ckpts.restore_latest(abstract.model, abstract.train)
    if found is None:
        state, shardings = create_train_state(stage.model, optimizer, rng, sample, mesh,
                                              stage.projections, stage.init_params)
        return state, shardings, {
            'stage': stage.name, 'steps': stage.steps, 'done': False, 'history': [],
            'train_seconds': 0.0, 'timed_steps': 0, **identity,
            'config': json.loads(config.to_json_best_effort())}
    step, restored = found
    ckpt_lib.check_resume(restored.meta, identity, step, f'{ckpts.directory}/{step}')
    state = TrainState(step=restored.train['step'], params=restored.model['params'],
                       model_state=restored.model['state'], opt_state=restored.train['opt_state'],
                       aux=restored.train['aux'])
    return state, shardings, {**identity, **restored.meta}


def _keep_model_state_on_skip(step_fn: Callable) -> Callable:
    """With ``train.skip_nonfinite``, a step whose gradients `optax.apply_if_finite`
    rejected must not update BatchNorm statistics either: they would hold the NaN."""

    def guarded(state: TrainState, teacher_model, batch):
        new, metrics = step_fn(state, teacher_model, batch)
        keep = new.opt_state.last_finite
        model_state = jax.tree.map(lambda n, o: jnp.where(keep, n, o), new.model_state,
                                   state.model_state)
        return new.replace(model_state=model_state), metrics

    return jax.jit(guarded, donate_argnums=(0,))


class _Loop:
    """One stage's steps: metrics, evaluation, checkpoints, preemption, divergence."""

    # Whole batches of data in memory made by the loop itself (`_feed`) instead of the
    # prefetch thread: measured slower under load (benchmarks/NOTES.md 15), so off.
    inline = False

    def __init__(self, stage: Stage, config, mesh: Mesh, ckpts: StageCheckpoints,
                 meta: dict[str, Any], is_main: bool, started: float):
        tcfg = config.train
        self.stage, self.tcfg, self.mesh, self.ckpts, self.meta = stage, tcfg, mesh, ckpts, meta
        self.is_main, self._warned, self.started = is_main, False, started
        resolved = json.loads(config.to_json_best_effort())
        workdir = stage.directory.rstrip('/').rsplit('/', 1)[0]
        self.writer = MetricWriter(
            stage.directory + '_metrics', enabled=is_main, hparams=resolved,
            wandb=wandb_args(tcfg.wandb_project, workdir, stage.name))
        self.guard = NonFiniteGuard(stage.name, ckpts.directory, not tcfg.skip_nonfinite)
        self.clock = _TrainClock()
        self.digest = meta['data']['digest']
        self.schedule = learning_rate_schedule(config.optimizer, stage.steps)
        lm = config.task == 'lm'
        self.throughput = telemetry.Throughput(
            config.data.batch_size * (config.data.seq_len if lm else 1),
            'tokens' if lm else 'examples',
            peak=telemetry.peak_flops(jax.devices()[0].device_kind, tcfg.peak_tflops),
            devices=mesh.size)
        window = tcfg.profile_steps if tcfg.profile_steps and \
            tcfg.profile_steps[1] <= stage.steps else ()
        self.profiler = telemetry.Profiler(window, f'{workdir}/profile/{stage.name}', is_main)
        self.workers = loader.resolve_workers(config.data.workers)
        self.workers_kind = loader.worker_kind(config.data)
        self._place = mesh_lib.batch_placer(mesh)
        self._host = None

    def _fetch(self, step: int):
        """This step's batch on the mesh, and its digest (on the prefetch thread, or on
        the loop's own after the previous step's dispatch: `_feed`)."""
        del step  # the batches come in step order from `loader.iterate`
        batch = next(self._host)
        return provenance.batch_sha256(batch, max_values=4096), self._place(batch)

    def _feed(self, start: int):
        """The batches of steps ``[start, steps)``: made by a prefetch thread, or inline
        by the loop for whole batches of data in memory if `inline` (`loader.runs_inline`)."""
        self._host = loader.iterate(self.stage.batches, start, self.stage.steps, self.workers,
                                    self.workers_kind)
        if self.inline and loader.runs_inline(self.stage.batches, self.workers_kind):
            return prefetch_lib.Inline(self._fetch, start, self.stage.steps)
        return prefetch_lib.prefetch(self._fetch, start, self.stage.steps,
                                     block=loader.feed_block(self.stage.batches,
                                                             self.workers_kind))

    def _advance(self, feed, outputs) -> None:
        """Lets ``feed`` make the next batch while the device runs the step just
        dispatched. Inline, that time is ``train/input_work_share``, and it counts as
        waiting for input too if the step was over by its end (at most that long the
        device waited on the loop; otherwise the step hid it)."""
        if not isinstance(feed, prefetch_lib.Inline):
            feed.advance()  # the prefetch thread's next batch, as the loop will block
            return
        t = time.perf_counter()
        feed.advance()
        self.throughput.add_input_work(time.perf_counter() - t, all(
            x.is_ready() for x in jax.tree.leaves(outputs)))

    def run(self, state: TrainState, step_fn: Callable, watch: PreemptionWatch) -> TrainState:
        stage, start = self.stage, int(state.step)
        progress = Progress(stage.name, stage.steps, start=start, enabled=self.is_main)
        self.guard.last_saved = start or None
        try:
            with self._feed(start) as batches:
                state = self._steps(state, step_fn, watch, batches, progress)
        finally:
            self.profiler.close()
            self.writer.close()
        progress.done(f'{self.meta.get("steps_per_second", 0.0):.1f} steps/s overall')
        return state

    def _steps(self, state: TrainState, step_fn: Callable, watch: PreemptionWatch, batches,
               progress: Progress) -> TrainState:
        stage, tcfg, start = self.stage, self.tcfg, int(state.step)
        for step in range(start, stage.steps):
            with self.throughput.waiting():
                batch_hash, batch = next(batches)
            if stage.batch_hook is not None:
                batch = stage.batch_hook(state, batch, step)
            self.profiler.before(step)
            state, metrics = step_fn(state, stage.teacher_model, batch)
            self._advance(batches, metrics)
            done = step + 1
            self.profiler.after(done, metrics)
            self.digest = provenance.advance_digest(self.digest, batch_hash)
            self.guard.push(done, metrics)
            if step == start:  # the first step compiles: start the clocks after it
                jax.block_until_ready(metrics)
                self._first_step(done, step_fn, state, batch)
                progress.t0, progress.start = self.clock.t0, done
            if done % tcfg.log_every == 0 or done == stage.steps:
                self._log(done, state, metrics, progress)
            scores = self._evaluate(done, state)
            stop = watch.should_stop(done)
            if (stop or done % tcfg.checkpoint_every == 0 or done == stage.steps
                    or (scores and tcfg.best_metric)):
                self._save(done, state, metrics, scores)
            if stop:
                progress.done('preempted')
                self._preempted(done, watch)
        return state

    def _first_step(self, done: int, step_fn: Callable, state: TrainState, batch) -> None:
        """Clocks start after the first (compiling) step; its FLOPs give the MFU."""
        self.clock.start(done)
        self.throughput.restart(done)
        self.writer.write(done, {'train/time_to_first_step': time.perf_counter() - self.started})
        if self.is_main:
            self.throughput.flops_per_step = telemetry.step_flops(
                step_fn, state, self.stage.teacher_model, batch)

    def _log(self, done: int, state: TrainState, metrics, progress: Progress) -> None:
        scalars = {k: float(v) for k, v in jax.device_get(metrics).items()}
        scalars['train/learning_rate'] = float(self.schedule(done - 1))
        scalars.update(self.throughput.scalars(done))
        if self.tcfg.skip_nonfinite:
            scalars['train/nonfinite_skips'] = float(state.opt_state.total_notfinite)
        self.meta['history'].append({'step': done, **scalars})
        self.writer.write(done, scalars)
        progress.update(done, scalars['loss'])

    def _evaluate(self, done: int, state: TrainState) -> dict[str, float] | None:
        if not (self.stage.evaluate and self.tcfg.eval_every and done % self.tcfg.eval_every == 0):
            return None
        with self.clock.paused(), self.throughput.paused():
            scores = {f'eval/{k}': v for k, v in self.stage.evaluate(state.model).items()}
        self.meta['history'].append({'step': done, **scores})
        self.writer.write(done, scores)
        return scores

    def _save(self, done: int, state: TrainState, metrics, scores) -> None:
        self.guard.flush()  # never checkpoint a diverged state
        jax.block_until_ready(state)
        seconds, steps = self.clock.lap(done)
        meta = self.meta
        meta.update(train_seconds=meta['train_seconds'] + seconds,
                    timed_steps=meta['timed_steps'] + steps, done=done == self.stage.steps,
                    train_loss=float(metrics['loss']),
                    data={**meta['data'], 'position': done, 'digest': self.digest})
        meta['steps_per_second'] = (meta['timed_steps'] / meta['train_seconds']
                                    if meta['train_seconds'] > 0 else 0.0)
        with self.clock.paused(), self.throughput.paused():
            self.ckpts.save(done, state.model, state.train, dict(meta), self._ranking(scores))
        self.guard.last_saved = done

    def _ranking(self, scores: dict[str, float] | None) -> dict[str, float] | None:
        """What ranks this checkpoint for ``train.best_metric`` (None: not ranked)."""
        metric = self.tcfg.best_metric
        if not (metric and scores):
            return None
        if metric not in scores and self.is_main and not self._warned:
            print(f'{self.stage.name}: train.best_metric={metric!r} is not among its '
                  f'evaluation metrics {sorted(scores)}: keeping the last checkpoints only')
            self._warned = True
        return {metric: float(scores[metric])} if metric in scores else None

    def _preempted(self, done: int, watch: PreemptionWatch) -> None:
        self.ckpts.wait()
        what = signal.Signals(watch.received).name if watch.received else 'a preemption notice'
        message = (f'{self.stage.name}: {what} received; saved step {done}/{self.stage.steps} '
                   f'to {self.ckpts.directory}/{done}; rerun the same command to resume')
        if self.is_main:
            print(message, flush=True)
        raise Preempted(message)


