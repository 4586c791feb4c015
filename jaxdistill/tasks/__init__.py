"""What is being distilled: the data, what the step feeds the models, and how they are scored.

A task hides everything that differs between image classification, language modelling
and sentence embeddings from the trainer: `train.make_train_step` only calls ``task.prepare``
inside the jitted step, `run.py` only asks the task for batches, a sample input and an
evaluator, and `report.py` asks it for its table. ``config.task`` picks one from
`REGISTRY`; a new task is one file (a `Task`, usually a `BaseTask` subclass) and one line
there, or a call to `register` from user code.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from typing import Any, NamedTuple, Protocol, runtime_checkable

import jax

from jaxdistill.errors import ConfigError, closest


class StepInputs(NamedTuple):
    """What one training step feeds the models and the objective (all traced arrays)."""

    inputs: jax.Array  # the models' input: images [B, ...] or tokens [B, T]
    targets: jax.Array  # label probabilities [B, C], or integer labels [B] / [B, T]
    mask: jax.Array | None  # valid rows / tokens; None: all valid
    label_mask: jax.Array | None  # rows whose labels a label loss may read; None: all
    # A teacher signal that came with the batch (`objective.SparseTeacher` from a cache);
    # None: the teacher, if any, runs inside the step.
    teacher: Any = None


Column = tuple[str, str, str]  # (header, results key, 'num' | 'pct') of report.md's table


@runtime_checkable
class Task(Protocol):
    """One value of ``config.task``: built by ``Task(config)`` with its data opened.

    Data: ``train_batches`` (a `grain.MapDataset` indexed by step) and, for signals that
    bring their own rows (a cache, teacher completions), ``batches_from``. Step inputs:
    ``prepare_fn(mixup)`` returns ``prepare(batch, rng) -> StepInputs``, traced in the step.
    Evaluation: ``scorer`` (a model alone, while a teacher trains) and ``evaluator`` (students
    against the teacher; it has ``teacher_scores()`` and ``test_examples``). Report:
    ``columns``, ``preamble`` and ``summary`` shape report.md from ``results.json``.
    """

    name: str  # the value of config.task; results.json's provenance.task
    has_labels: bool  # a label-only baseline can be trained
    dataset: str  # what the data is, for provenance
    sample: Any  # one input example with a batch axis of 1 (shapes for init)
    columns: tuple[Column, ...]
    # a `crosstok.data.CrossTokenizer` when teacher and student tokenize differently, else None
    cross: Any

    def check_models(self, teacher: Any, student: Any) -> None:
        """Both models fit the data (output shapes, vocabulary); one-line ConfigError."""

    def train_batches(self, seed: int, rows: str = 'all') -> Any:
        """``rows``: 'all' (a teacher), 'labelled' (the baseline), 'transfer' (the student)."""

    def batches_from(self, rows: dict[str, Any], seed: int) -> Any:
        """Batches of other row-aligned arrays, shuffled exactly as the train rows are."""

    def prepare_fn(self, mixup: float = 0.0) -> Callable[[dict, jax.Array], StepInputs]: ...

    def scorer(self, model: Any, mesh: Any) -> Callable[[dict], dict[str, float]]: ...

    def evaluator(self, mesh: Any, teacher: Any, teacher_vars: dict, student: Any) -> Any: ...

    def provenance(self) -> dict[str, Any]: ...

    def samples(self, models: dict[str, tuple[Any, dict]], mesh: Any) -> list | None:
        """What the models generate, for the report (None: nothing to show)."""

    @classmethod
    def preamble(cls, results: dict[str, Any]) -> str: ...

    @classmethod
    def summary(cls, results: dict[str, Any]) -> list[str]: ...


class BaseTask:
    """Defaults shared by the tasks: no rows of other origin, no samples, and the
    classification report (accuracy, agreement and KL, and the gain over the baseline)."""

    name = ''
    has_labels = True
    cross: Any = None  # only `lm` sets it (teacher and student tokenizers differ)
    unit, what = 'examples', 'class'  # the preamble's words for test items and predictions
    columns: tuple[Column, ...] = (
        ('test accuracy', 'accuracy', 'pct'), ('agreement with teacher', 'agreement', 'pct'),
        ('KL to teacher', 'kl_to_teacher', 'num'), ('params', 'params', 'num'),
        ('steps', 'steps', 'num'), ('steps/s', 'steps_per_second', 'num'))

    def batches_from(self, rows: dict[str, Any], seed: int) -> Any:
        raise ConfigError(f'task={self.name!r} cannot train on rows a teacher signal made: '
                          "use distill.teacher_signal='online'")

    def samples(self, models: dict[str, tuple[Any, dict]], mesh: Any) -> list | None:
        del models, mesh
        return None

    @classmethod
    def preamble(cls, results: dict[str, Any]) -> str:
        p = results['provenance']
        return (f"Dataset `{p['dataset']}`, test split of {results['test_examples']:,} "
                f"{cls.unit}. Agreement: the student predicts the teacher's top-1 {cls.what}; "
                'KL: mean KL(teacher ‖ student) at T = 1, in nats.')

    @classmethod
    def summary(cls, results: dict[str, Any]) -> list[str]:
        """The lines under the table: what distillation changed over the baseline."""
        if 'baseline' not in results:
            return []
        p = results['provenance']
        gain = results['student']['accuracy'] - results['baseline']['accuracy']
        agree = results['student']['agreement'] - results['baseline']['agreement']
        n, labelled = p.get('train_examples'), p.get('labelled_examples')
        same = ('same batches' if n is None or labelled == n else
                f'both may read the labels of the same {labelled:,} of {n:,} train examples; '
                'the baseline trains on those alone, the distilled student on every image')
        return [f'Distillation changed test accuracy by {100 * gain:+.2f} points and agreement '
                f'with the teacher by {100 * agree:+.2f} points over the label-only baseline '
                f'(same student, same initialisation, {same}).', '']


# config.task -> 'module:Class' (imported on first use: a task's data stack loads only if
# it runs) or the class itself.
REGISTRY: dict[str, str | type] = {
    'classification': 'jaxdistill.tasks.classification:ClassificationTask',
    'lm': 'jaxdistill.tasks.lm:LanguageModelTask',
    'embedding': 'jaxdistill.tasks.embedding:EmbeddingTask',
}


def register(name: str, task: str | type) -> None:
    """Adds a task class (or its ``'module:Class'``) as ``config.task=name``."""
    REGISTRY[name] = task


def names() -> tuple[str, ...]:
    return tuple(REGISTRY)


def get(name: str) -> type:
    """The task class of ``config.task=name``."""
    if name not in REGISTRY:
        raise ConfigError(f'task={name!r} is not one of {list(REGISTRY)}: '
                          f'{closest(str(name), REGISTRY)}')
    entry = REGISTRY[name]
    if isinstance(entry, str):
        module, _, cls = entry.partition(':')
        entry = REGISTRY[name] = getattr(importlib.import_module(module), cls)
    return entry


def build(config, **kwargs: Any) -> Task:
    """The task named by ``config.task``, with its data opened (nothing is written)."""
    return get(config.task)(config, **kwargs)

