"""TFDS builder `digits`: scikit-learn's bundled 8x8 handwritten digits, made offline.

1,797 grey-scale 8x8 images of the digits 0-9 (UCI ML hand-written digits, as shipped
inside scikit-learn, so nothing is downloaded). Pixels are scaled from 0..16 to [0, 1].
Split (fixed, documented): the examples are permuted with ``numpy.random.RandomState(0)``;
the first 1,437 (80 %) are ``train`` and the last 360 are ``test``.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.errors import DataError

NUM_TRAIN = 1437


def _split_indices() -> tuple[np.ndarray, np.ndarray]:
    order = np.random.RandomState(0).permutation(1797)
    return order[:NUM_TRAIN], order[NUM_TRAIN:]


class Digits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's 8x8 digits as a TFDS dataset (ArrayRecord, no TensorFlow)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'sklearn load_digits, 1437 train / 360 test (RandomState(0)).'}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                'image': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.float32),
                'label': tfds.features.ClassLabel(num_classes=10),
            }),
            supervised_keys=('image', 'label'),
            homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the data ships with scikit-learn
        if importlib.util.find_spec('sklearn') is None:
            raise DataError("data.name='digits' is built from the digits bundled with "
                            'scikit-learn, which is not installed: pip install '
                            '"jaxdistill[demo]"')
        train, test = _split_indices()
        return {'train': self._generate_examples(train), 'test': self._generate_examples(test)}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        data = load_digits()
        for i in indices:
            image = (data.images[i] / 16.0).astype(np.float32)[..., None]
            yield int(i), {'image': image, 'label': int(data.target[i])}
