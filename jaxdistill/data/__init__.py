"""Data: TFDS sources read with Grain, sharded per process, deterministic per seed."""

# Imported to register the `digits`, `pytext` and `pysentences` TFDS builders
from jaxdistill.data import digits, sentences, text  # noqa: F401
from jaxdistill.data.pipeline import (
    Splits,
    eval_batches,
    labelled_subset,
    load_splits,
    subset,
    train_dataset,
)

__all__ = ['Splits', 'eval_batches', 'labelled_subset', 'load_splits', 'subset',
           'train_dataset']
