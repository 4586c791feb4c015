"""Where the student's teacher signal comes from: ``distill.teacher_signal``.

Every mode feeds the same ``distill.losses`` through the same jitted step
(`train.make_train_step`); they differ in what the step receives:

* ``online``: the frozen teacher runs inside the step on the student's batch.
* ``cached``: each batch carries the teacher's stored top-k log-probabilities
  (`signals.cache`, written once by ``--config.mode=cache_teacher`` or on first use);
  ``kd``/``forward_kl`` become exact sparse KLs (`objective.SparseTeacher`) and the
  teacher never runs while the student trains.
* ``sequence``: the student trains by cross-entropy on the teacher's sampled completions
  of train prompts (`signals.sequence`): text only, as from an API.
* ``on_policy``: GKD (`signals.on_policy`): some batches are the student's own samples,
  scored by the teacher inside the step.

In every mode the students are evaluated against the real teacher on held-out text.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from jaxdistill.errors import ConfigError, closest

SIGNALS = ('online', 'cached', 'sequence', 'on_policy')


def check_config(config) -> None:
    """Config-time checks (no models, no data): one line naming the key."""
    d = config.distill
    if d.teacher_signal not in SIGNALS:
        raise ConfigError(f'distill.teacher_signal={d.teacher_signal!r} is not one of '
                          f'{list(SIGNALS)}: {closest(str(d.teacher_signal), SIGNALS)}')
    if config.mode == 'cache_teacher' and d.teacher_signal != 'cached':
        raise ConfigError("mode='cache_teacher' writes the cache of "
                          "distill.teacher_signal='cached': set both")
    if d.teacher_signal == 'online':
        return
    if config.task != 'lm':
        raise ConfigError(f"distill.teacher_signal={d.teacher_signal!r} distils language "
                          f"models: it needs task='lm' (got {config.task!r}); use 'online'")
    if config.teachers and d.teacher_signal == 'sequence':
        raise ConfigError("distill.teacher_signal='sequence' samples from one teacher: remove "
                          "`teachers`, or use 'online' / 'cached' for an ensemble")
    if d.cache.dtype not in ('float16', 'uint8'):
        raise ConfigError(f"distill.cache.dtype={d.cache.dtype!r} must be 'float16' or 'uint8'")
    if d.cache.k < 1:
        raise ConfigError(f'distill.cache.k={d.cache.k} must be >= 1 (e.g. 32)')
    s = d.sampling
    if d.teacher_signal in ('sequence', 'on_policy'):
        if not 1 <= s.prompt_len < config.data.seq_len:
            raise ConfigError(f'distill.sampling.prompt_len={s.prompt_len} must be in [1, '
                              f'data.seq_len={config.data.seq_len}): a prompt is the start of a '
                              'train row')
        new = s.max_new_tokens or config.data.seq_len - s.prompt_len
        if s.max_new_tokens < 0 or s.prompt_len + new > config.data.seq_len:
            raise ConfigError(
                f'distill.sampling: prompt_len {s.prompt_len} + max_new_tokens {new} exceeds '
                f'data.seq_len={config.data.seq_len}: shorten the prompts or generate fewer '
                'tokens (0: the rest of the row)')
        if not s.temperature > 0:
            raise ConfigError(f'distill.sampling.temperature={s.temperature} must be > 0')
        if not 0 < s.top_p <= 1 or s.top_k < 0:
            raise ConfigError(f'distill.sampling: top_p={s.top_p} must be in (0, 1] and '
                              f'top_k={s.top_k} >= 0 (0 and 1.0 disable them)')
        if s.batch_size <= 0:
            raise ConfigError(f'distill.sampling.batch_size={s.batch_size} must be positive')
        from jaxdistill.audit import watermark

        watermark.check(s.watermark)
    if not 0 <= d.on_policy.lmbda <= 1:
        raise ConfigError(f'distill.on_policy.lmbda={d.on_policy.lmbda} must be in [0, 1]')


def _context(model, key: str) -> int:
    from jaxdistill.models.decoder import Decoder

    if not isinstance(model.module, Decoder):
        raise ConfigError(f'{key} is {type(model.module).__name__}: sampling needs the built-in '
                          "'decoder' module (KV cache)")
    return model.module.max_len


def check_models(config, teacher, student, objective) -> None:
    """Plan-time checks with the modules built: who samples, and from how long a prompt."""
    signal = config.distill.teacher_signal
    s = config.distill.sampling
    new = s.max_new_tokens or config.data.seq_len - s.prompt_len
    sampler = {'sequence': ('teacher.module', teacher),
               'on_policy': ('student.module', student)}.get(signal)
    if sampler:
        key, model = sampler
        max_len = _context(model, f"distill.teacher_signal={signal!r}: {key}")
        if s.prompt_len + new > max_len:
            raise ConfigError(
                f'distill.sampling: prompt_len {s.prompt_len} + max_new_tokens {new} = '
                f'{s.prompt_len + new} tokens exceed the context of {key} (max_len={max_len}): '
                'shorten the prompts or generate fewer tokens')
    if signal in ('cached', 'on_policy') and not objective.needs_teacher:
        raise ConfigError(f'distill.teacher_signal={signal!r} but distill.losses has no teacher '
                          "term: add one, e.g. {'name': 'kd', 'weight': 1.0}")


@dataclasses.dataclass
class StudentSignal:
    """What the distilled student's stage is built from."""

    rows: dict[str, Any] | None  # train rows to batch from (None: the task's own)
    online_teacher: bool  # the teacher runs inside the step
    label_only: bool  # the objective is cross-entropy on the rows (sequence-level)
    batch_hook: Any = None  # ``hook(state, batch, step) -> batch`` before each step
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)


def prepare(config, workdir: str, task, teacher, teacher_vars, teacher_sha256: str, student,
            mesh, say=print) -> StudentSignal:
    """Makes (or finds) what the signal needs from the teacher, once, before the student.

    ``teacher`` is the (combined) teacher model the step would run; ``teacher_sha256`` the
    first teacher's parameter digest, part of every stored signal's fingerprint.
    """
    signal = config.distill.teacher_signal
    if signal == 'online':
        return StudentSignal(None, True, False)
    if signal == 'cached':
        from jaxdistill.signals import cache

        path = cache.directory(config, workdir)
        expected = cache.fingerprint(config, task, teacher_sha256)
        spec = cache.build(config, task, teacher, teacher_vars, mesh, path, expected, say)
        arrays = cache.load(path, expected, len(task.train_rows['inputs']))
        return StudentSignal(cache.attach(task.train_rows, arrays), False, False, provenance={
            'teacher_cache': path, 'cache_k': int(config.distill.cache.k),
            'cache_dtype': config.distill.cache.dtype,
            'cache_bytes_per_token': round(cache.bytes_per_token(spec), 2)})
    if signal == 'sequence':
        from jaxdistill.signals import sequence

        path = sequence.directory(workdir)
        expected = sequence.fingerprint(config, task, teacher_sha256)
        sequence.build(config, task, teacher, teacher_vars, mesh, path, expected, say)
        rows = sequence.load(path, expected)
        return StudentSignal(rows, False, True, provenance={
            'teacher_sequences': path, 'generated_tokens': int(rows['mask'].sum()),
            'sampling': config.distill.sampling.to_dict()})
    from jaxdistill.signals.on_policy import OnPolicy

    hook = OnPolicy(config, student, mesh)
    return StudentSignal(None, True, False, hook, provenance={
        **hook.provenance(config.train.steps), 'sampling': config.distill.sampling.to_dict()})
