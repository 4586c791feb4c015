"""The `Signal` protocol: everything one teacher-signal mode decides, in one object.

A signal (``distill.teacher_signal``) is where the distilled student's knowledge of its
teacher comes from. It owns, in one file:

* its **config section** under ``distill`` (`Signal.defaults`) and its **checks**
  (`Signal.check_config` before anything is built, `Signal.check_models` once the modules
  exist);
* which **tasks** it applies to (`Signal.tasks`);
* what the student stage is built from (`Signal.prepare`, run once before the student): the
  **rows** it batches from, a **batch hook** run on the mesh before each step, and the
  **provenance** it adds to ``results.json`` (`Prepared`);
* whether the **teacher runs in the step** (`Signal.teacher_in_step`), and, when it does
  not, how the step reads the teacher from the batch (`Signal.step_teacher`);
* how it changes the **objective** (`Signal.objective`).

`BaseSignal` is the online behaviour (the teacher runs in every step on the student's
batch); a mode subclasses it and overrides what differs, then is registered by one line in
`jaxdistill.signals` (or `jaxdistill.signals.register` from user code).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, Protocol, runtime_checkable

import ml_collections

from jaxdistill.errors import ConfigError
from jaxdistill.objective import Objective


@dataclasses.dataclass
class Prepared:
    """What a signal made for the distilled student's stage (`Signal.prepare`)."""

    # train rows to batch from (None: the task's own): arrays, or a lazy source with
    # ``take(ids)`` and ``len`` (a stored signal joined to packed rows, `store.Joined`)
    rows: Any = None
    # ``hook(state, batch, step) -> batch`` on the mesh before each step (None: no hook)
    batch_hook: Callable[[Any, dict, int], dict] | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class Context:
    """What `Signal.prepare` may use: the teacher the step would run, and the run's pieces.

    ``teacher`` is the (combined) teacher model with ``teacher_vars``; ``teacher_sha256``
    the first teacher's parameter digest, part of every stored signal's fingerprint.
    """

    config: ml_collections.ConfigDict
    workdir: str
    task: Any  # a `jaxdistill.tasks.Task`
    teacher: Any
    teacher_vars: dict[str, Any]
    teacher_sha256: str
    student: Any
    mesh: Any
    say: Callable[..., None] = print


@runtime_checkable
class Signal(Protocol):
    """One value of ``distill.teacher_signal`` (see the module docstring)."""

    name: str  # the value of distill.teacher_signal
    tasks: tuple[str, ...] | None  # the tasks it distils (None: every task)
    teacher_in_step: bool  # the frozen teacher runs inside the student's jitted step
    report_keys: tuple[str, ...]  # provenance keys that report.md shows for it

    def defaults(self) -> Mapping[str, ml_collections.ConfigDict]:
        """Its config sections, ``{name: defaults}`` under ``distill``."""

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        """Config-time checks (no models, no data): one-line `ConfigError` naming the key."""

    def check_models(self, config: ml_collections.ConfigDict, teacher: Any, student: Any,
                     objective: Objective) -> None:
        """Plan-time checks, with the modules built and the objective validated."""

    def objective(self, configured: Objective) -> Objective:
        """The objective the student trains with, given ``distill.losses``."""

    def step_teacher(self, batch: dict[str, Any]) -> Any:
        """Inside the jitted step: the teacher signal the batch carries, or None."""

    def prepare(self, context: Context) -> Prepared:
        """Makes (or finds) what it needs from the teacher, once, before the student."""


class BaseSignal:
    """Online defaults: the teacher runs in the step; no config, rows, hook or provenance."""

    name = 'online'
    tasks: tuple[str, ...] | None = None
    teacher_in_step = True
    report_keys: tuple[str, ...] = ()

    def defaults(self) -> Mapping[str, ml_collections.ConfigDict]:
        return {}

    def check_config(self, config: ml_collections.ConfigDict) -> None:
        del config

    def check_models(self, config, teacher, student, objective: Objective) -> None:
        del config, teacher, student, objective

    def objective(self, configured: Objective) -> Objective:
        return configured

    def step_teacher(self, batch: dict[str, Any]) -> Any:
        del batch
        return None

    def prepare(self, context: Context) -> Prepared:
        del context
        return Prepared()


def require_teacher_term(name: str, objective: Objective | None) -> None:
    """A signal that feeds teacher terms is refused when ``distill.losses`` has none."""
    if objective is not None and not objective.needs_teacher:
        raise ConfigError(f'distill.teacher_signal={name!r} but distill.losses has no teacher '
                          "term: add one, e.g. {'name': 'kd', 'weight': 1.0}")


def step_prepare(signal: Signal, prepare: Callable[[dict, Any], Any]) -> Callable:
    """The task's ``prepare(batch, rng) -> StepInputs`` with the teacher signal each batch
    carries (`Signal.step_teacher`) when the teacher does not run in the step."""
    if signal.teacher_in_step:
        return prepare

    def with_teacher(batch: dict, rng: Any) -> Any:
        return prepare(batch, rng)._replace(teacher=signal.step_teacher(batch))

    return with_teacher
