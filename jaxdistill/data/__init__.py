"""Data: TFDS sources read with Grain, sharded per process, deterministic per seed."""

from jaxdistill.data import digits  # noqa: F401 - registers the `digits` TFDS builder
from jaxdistill.data.pipeline import Splits, eval_batches, load_splits, train_dataset

__all__ = ['Splits', 'eval_batches', 'load_splits', 'train_dataset']
