"""Classification: inputs and labels from TFDS / a user source; accuracy and fidelity.

Inputs are images ``[H, W, C]`` or any other array ``[..., C]`` (signals ``[L, C]``),
named by ``data.image_key`` in the source's records; `data.load_splits` maps the keys.

Fidelity is how faithfully a student copies its teacher on the test split: top-1
agreement and KL(teacher || student) at T = 1. With ``data.labelled_fraction < 1`` the
students may read only a seeded fraction of the labels (see `train_batches`).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdistill import data as data_lib
from jaxdistill.errors import ConfigError
from jaxdistill.models.adapter import Model
from jaxdistill.tasks import BaseTask, StepInputs
from jaxdistill.tasks import evaluate as eval_lib


def _mixup(rng, images, targets, labelled, alpha: float):
    """Beta(alpha, alpha) mixup with a permuted copy of the batch (teacher sees the same).

    A mixed row's label is known only when both of its rows are labelled.
    """
    lam_rng, perm_rng = jax.random.split(rng)
    lam = jax.random.beta(lam_rng, alpha, alpha)
    perm = jax.random.permutation(perm_rng, images.shape[0])
    if labelled is not None:
        labelled = labelled & labelled[perm]
    return (lam * images + (1 - lam) * images[perm],
            lam * targets + (1 - lam) * targets[perm], labelled)


def _check_resizable(shape: tuple[int, ...], d) -> None:
    """``data.image_size`` resizes images ``[H, W, C]``; other inputs keep their shape."""
    if len(shape) != 3:
        raise ConfigError(f'data.image_size={d.image_size} resizes images [H, W, C], but the '
                          f'inputs under data.image_key={d.image_key!r} have shape '
                          f'{list(shape)}: set data.image_size=0 (and data.augment to \'\', '
                          "'crop' or 'flip_crop')")


class ClassificationTask(BaseTask):
    """``config.task='classification'``: the ``data`` block names inputs and labels (its
    report is `BaseTask`'s: accuracy, fidelity, and the gain over the baseline)."""

    name = 'classification'
    has_labels = True  # a label-only baseline can be trained

    def __init__(self, config):
        self.config, self.data_cfg = config, config.data
        self.splits = data_lib.load_splits(config.data)
        self.dataset = self.splits.name
        example = self.splits.train[0]  # {'image', 'label'}, whatever the source's keys
        if config.data.augment in ('crop', 'flip_crop') and example['image'].ndim < 2:
            raise ConfigError(f'data.augment={config.data.augment!r} shifts inputs along their '
                              f'spatial axes, but the inputs under data.image_key='
                              f"{config.data.image_key!r} have shape "
                              f"{list(example['image'].shape)} (no such axis): set "
                              "data.augment=''")
        if config.data.image_size:
            _check_resizable(example['image'].shape, config.data)
            example = data_lib.pipeline.center_crop(example, config.data.image_size)
        self.sample = example['image'][None]
        self.num_classes = self.splits.num_classes

    # -- checks ---------------------------------------------------------------------
    def _logits_dim(self, model: Model, key: str) -> int:
        params_state = jax.eval_shape(model.init, jax.random.key(0), self.sample)
        logits = jax.eval_shape(
            lambda ps: model.apply(ps[0], ps[1], self.sample, train=False)[0], params_state)
        if logits.ndim != 2:
            raise ConfigError(f'{key} returns logits of shape {logits.shape}; expected '
                              '[batch, classes]')
        return logits.shape[-1]

    def check_models(self, teacher: Model, student: Model) -> None:
        """Teacher, student and data agree on the number of classes."""
        t_dim = self._logits_dim(teacher, 'teacher.module')
        s_dim = self._logits_dim(student, 'student.module')
        if t_dim != s_dim:
            raise ConfigError(f'teacher has {t_dim} outputs but student has {s_dim}: set '
                              'teacher.kwargs.num_classes and student.kwargs.num_classes equal')
        if self.num_classes is not None and s_dim != self.num_classes:
            raise ConfigError(f'the models have {s_dim} outputs but {self.splits.name} has '
                              f'{self.num_classes} classes: set student.kwargs.num_classes='
                              f'{self.num_classes} (and the teacher\'s)')
        self.num_classes = s_dim

    # -- data -----------------------------------------------------------------------
    def labelled_ids(self) -> np.ndarray | None:
        """The train examples whose labels the students may use (None: all of them)."""
        fraction = self.data_cfg.labelled_fraction
        if fraction >= 1:
            return None
        return data_lib.labelled_subset(len(self.splits.train), fraction, self.config.seed)

    def train_batches(self, seed: int, rows: str = 'all') -> grain.MapDataset:
        """Every train example with every label (``rows='all'``: the teacher), the
        labelled examples alone (``'labelled'``: the baseline), or every example with the
        labelled ones flagged (``'transfer'``: the distilled student)."""
        ids, source, flagged = self.labelled_ids(), self.splits.train, None
        if ids is not None and rows == 'labelled':
            source = data_lib.subset(source, ids)
        elif ids is not None and rows == 'transfer':
            flagged = ids
        d = self.data_cfg
        return data_lib.train_dataset(
            source, global_batch=d.batch_size, seed=seed, augment=d.augment,
            image_size=d.image_size, process_index=jax.process_index(),
            process_count=jax.process_count(), labelled=flagged)

    def test_batches(self) -> Iterator[dict[str, np.ndarray]]:
        d = self.data_cfg
        return data_lib.eval_batches(
            self.splits.test, global_batch=d.eval_batch_size, image_size=d.image_size,
            process_index=jax.process_index(), process_count=jax.process_count())

    def provenance(self) -> dict[str, Any]:
        ids = self.labelled_ids()
        n = len(self.splits.train)
        return {'dataset': self.dataset, 'train_examples': n,
                'labelled_examples': n if ids is None else len(ids)}

    # -- the step -------------------------------------------------------------------
    def prepare_fn(self, mixup: float = 0.0) -> Callable[[dict, jax.Array], StepInputs]:
        """``prepare(batch, rng) -> StepInputs``, traced inside the jitted step."""
        num_classes = self.num_classes

        def prepare(batch: dict, rng: jax.Array) -> StepInputs:
            images = batch['image']
            targets = jax.nn.one_hot(batch['label'], num_classes, dtype=jnp.float32)
            labelled = batch.get('labelled')  # transfer-set rows: no label losses on them
            if mixup > 0:
                images, targets, labelled = _mixup(rng, images, targets, labelled, mixup)
            return StepInputs(images, targets, None, labelled)

        return prepare

    # -- evaluation -----------------------------------------------------------------
    def scorer(self, model: Model, mesh: Mesh) -> Callable[[dict], dict[str, float]]:
        """A model's own test scores (used while the teacher trains)."""
        predict = eval_lib.make_predict(model, mesh)

        def score(model_vars):
            logits, labels = eval_lib.predict_all(predict, model_vars, self.test_batches(), mesh)
            return {'accuracy': eval_lib.accuracy(logits, labels)}

        return score

    def evaluator(self, mesh: Mesh, teacher: Model, teacher_vars: dict,
                  student: Model) -> Evaluator:
        return Evaluator(self, mesh, teacher, teacher_vars, student)


class Evaluator:
    """Scores students against one teacher whose test logits are computed once."""

    def __init__(self, task: ClassificationTask, mesh: Mesh, teacher: Model,
                 teacher_vars: dict, student: Model):
        self.task, self.mesh = task, mesh
        predict_t = eval_lib.make_predict(teacher, mesh)
        self.teacher_logits, self.labels = eval_lib.predict_all(
            predict_t, teacher_vars, task.test_batches(), mesh)
        self._predict = eval_lib.make_predict(student, mesh)
        self.test_examples = int(len(self.labels))

    def teacher_scores(self) -> dict[str, float]:
        return {'accuracy': eval_lib.accuracy(self.teacher_logits, self.labels)}

    def __call__(self, student_vars: dict) -> dict[str, float]:
        logits, _ = eval_lib.predict_all(self._predict, student_vars, self.task.test_batches(),
                                         self.mesh)
        return eval_lib.fidelity(logits, self.teacher_logits, self.labels)
