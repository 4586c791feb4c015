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

Each mode is one `Signal` object (`signals.base`: its config section, checks, rows, batch
hook, objective, provenance, and whether the teacher runs in the step) in its own file,
listed once in `REGISTRY`. A new mode is one file and one line there (or a call to
`register` from user code); nothing else in the trainer names a mode.
"""

from __future__ import annotations

from jaxdistill.errors import ConfigError, closest
from jaxdistill.signals.base import BaseSignal, Context, Prepared, Signal, step_prepare
from jaxdistill.signals.cache import Cached
from jaxdistill.signals.on_policy import OnPolicySignal
from jaxdistill.signals.online import Online
from jaxdistill.signals.sequence import Sequence

__all__ = ['BaseSignal', 'Context', 'Prepared', 'Signal', 'REGISTRY', 'register', 'get',
           'names', 'check_config', 'check_models', 'prepare', 'step_prepare']

# distill.teacher_signal -> the Signal; its order is the order of the config sections.
REGISTRY: dict[str, Signal] = {s.name: s for s in (
    Online(),
    Cached(),
    Sequence(),
    OnPolicySignal(),
)}


def register(signal: Signal) -> Signal:
    """Adds ``signal`` under ``signal.name`` (e.g. a mode defined outside jaxdistill)."""
    if not isinstance(signal, Signal):
        raise TypeError(f'{signal!r} does not implement jaxdistill.signals.Signal')
    REGISTRY[signal.name] = signal
    return signal


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> Signal:
    """The signal called ``name``; a one-line error naming the closest known one."""
    if name not in REGISTRY:
        raise ConfigError(f'distill.teacher_signal={name!r} is not one of '
                          f'{list(REGISTRY)}: {closest(str(name), REGISTRY)}')
    return REGISTRY[name]


def defaults() -> dict:
    """Every signal's config sections under ``distill``, in registry order (shared sections,
    such as ``sampling``, must have the same defaults in every signal that reads them)."""
    out = {}
    for signal in REGISTRY.values():
        for section, value in signal.defaults().items():
            if section in out and out[section].to_dict() != value.to_dict():
                raise ValueError(f'signals disagree on the defaults of distill.{section}')
            out.setdefault(section, value)
    return out


def check_config(config) -> None:
    """Config-time checks (no models, no data): one line naming the key."""
    d = config.distill
    signal = get(d.teacher_signal)
    if config.mode == 'cache_teacher' and d.teacher_signal != 'cached':
        raise ConfigError("mode='cache_teacher' writes the cache of "
                          "distill.teacher_signal='cached': set both")
    if signal.tasks is not None and config.task not in signal.tasks:
        need = ' or '.join(f'task={t!r}' for t in signal.tasks)
        raise ConfigError(f'distill.teacher_signal={d.teacher_signal!r} distils {need} only: '
                          f"it needs {need} (got {config.task!r}); use 'online'")
    signal.check_config(config)


def check_models(config, teacher, student, objective) -> None:
    """Plan-time checks with the modules built: who samples, and from how long a prompt."""
    get(config.distill.teacher_signal).check_models(config, teacher, student, objective)


def prepare(config, workdir: str, task, teacher, teacher_vars, teacher_sha256: str, student,
            mesh, say=print) -> Prepared:
    """Makes (or finds) what the signal needs from the teacher, once, before the student.

    ``teacher`` is the (combined) teacher model the step would run; ``teacher_sha256`` the
    first teacher's parameter digest, part of every stored signal's fingerprint.
    """
    return get(config.distill.teacher_signal).prepare(
        Context(config, workdir, task, teacher, teacher_vars, teacher_sha256, student, mesh,
                say))
