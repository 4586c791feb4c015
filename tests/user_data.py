"""A user's own data, as `data.source` functions return it (``--config.data.source=
tests.user_data:signals``): records with keys other than ``image`` / ``label``.

``signals``: 1-D inputs ``[L, C]`` (a 32-step, 2-channel signal per record, float32) under
the key ``signal``; the class is which of 4 frequencies the first channel oscillates at,
so a small model learns it in a few steps.

``UserSignals`` and ``UserImages`` are the TFDS form of the same situation
(``--config.data.name=user_signals --config.data.image_key=signal
--config.data.label_key=class``): TFDS datasets whose features have other names.
"""

import numpy as np
import tensorflow_datasets as tfds

LENGTH, CHANNELS, CLASSES = 32, 2, 4


class RecordSource:
    """Random access to a list of dict records; ``num_classes`` as TFDS would give it."""

    num_classes = CLASSES

    def __init__(self, records):
        self.records = records

    def __len__(self):
        return len(self.records)

    def __getitem__(self, i):
        return self.records[i]


def _signal_records(n: int, seed: int) -> list[dict]:
    rng = np.random.default_rng(seed)
    t = np.arange(LENGTH) / LENGTH
    out = []
    for _ in range(n):
        label = int(rng.integers(CLASSES))
        wave = np.sin(2 * np.pi * (label + 1) * t + rng.uniform(0, 2 * np.pi))
        noise = rng.normal(0, 0.3, (LENGTH, CHANNELS))
        signal = np.stack([wave, rng.normal(0, 1, LENGTH)], axis=-1) + noise
        out.append({'signal': signal.astype(np.float32), 'label': label})
    return out


def signals():
    """(train, test): 96 and 32 records ``{'signal': [32, 2] float32, 'label': int}``."""
    return RecordSource(_signal_records(96, 0)), RecordSource(_signal_records(32, 1))


class UserSignals(tfds.core.GeneratorBasedBuilder):
    """A TFDS dataset whose features are not called image / label: ``signal`` [32, 2] and
    ``class`` (the records of `signals`). Built offline into a test's data dir."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'signal': tfds.features.Tensor(shape=(LENGTH, CHANNELS), dtype=np.float32),
            'class': tfds.features.ClassLabel(num_classes=CLASSES)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples(96, 0),
                'test': self._generate_examples(32, 1)}

    def _generate_examples(self, n, seed):
        for i, r in enumerate(_signal_records(n, seed)):
            yield i, {'signal': r['signal'], 'class': r['label']}


class UserImages(tfds.core.GeneratorBasedBuilder):
    """A TFDS image dataset under other keys: ``pixels`` (8x8x1 uint8) and ``digit``:
    scikit-learn's digits again, so the models learn something in a few steps."""

    VERSION = tfds.core.Version('1.0.0')

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            'pixels': tfds.features.Tensor(shape=(8, 8, 1), dtype=np.uint8),
            'digit': tfds.features.ClassLabel(num_classes=10)}))

    def _split_generators(self, dl_manager):
        del dl_manager
        return {'train': self._generate_examples(range(0, 160)),
                'test': self._generate_examples(range(160, 224))}

    def _generate_examples(self, indices):
        from sklearn.datasets import load_digits

        data = load_digits()
        for i in indices:
            pixels = (data.images[i] * 255 / 16).round().astype(np.uint8)[..., None]
            yield int(i), {'pixels': pixels, 'digit': int(data.target[i])}


def prepare(name: str, data_dir: str) -> None:
    """Builds ``user_signals`` / ``user_images`` once as ArrayRecord in ``data_dir``."""
    builder = tfds.builder(name, data_dir=data_dir)
    if not builder.is_prepared():
        builder.download_and_prepare(file_format='array_record')


def features():
    """(train, test) of flat feature vectors ``{'image': [6], 'label'}`` (no spatial axis)."""
    rng = np.random.default_rng(2)
    records = [{'image': rng.normal(size=6).astype(np.float32), 'label': i % 4}
               for i in range(16)]
    return RecordSource(records), RecordSource(records[:8])
