"""What is being distilled: the data, what the step feeds the models, and how they are scored.

A task hides everything that differs between image classification, language modelling
and sentence embeddings from the trainer: `train.make_train_step` only calls ``task.prepare`` inside
the jitted step, and `run.py` only asks the task for batches, a sample input and an
evaluator. ``config.task`` picks one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax

from jaxdistill.errors import ConfigError

TASKS = ('classification', 'lm', 'embedding')


class StepInputs(NamedTuple):
    """What one training step feeds the models and the objective (all traced arrays)."""

    inputs: jax.Array  # the models' input: images [B, ...] or tokens [B, T]
    targets: jax.Array  # label probabilities [B, C], or integer labels [B] / [B, T]
    mask: jax.Array | None  # valid rows / tokens; None: all valid
    label_mask: jax.Array | None  # rows whose labels a label loss may read; None: all
    # A teacher signal that came with the batch (`objective.SparseTeacher` from a cache);
    # None: the teacher, if any, runs inside the step.
    teacher: Any = None


def build(config, **kwargs: Any):
    """The task named by ``config.task``, with its data opened (nothing is written)."""
    if config.task == 'classification':
        from jaxdistill.tasks.classification import ClassificationTask
        return ClassificationTask(config, **kwargs)
    if config.task == 'lm':
        from jaxdistill.tasks.lm import LanguageModelTask
        return LanguageModelTask(config, **kwargs)
    if config.task == 'embedding':
        from jaxdistill.tasks.embedding import EmbeddingTask
        return EmbeddingTask(config, **kwargs)
    raise ConfigError(f'task={config.task!r} is not one of {list(TASKS)}')
