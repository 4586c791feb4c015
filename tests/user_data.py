"""A user's own data, as `data.source` functions return it (``--config.data.source=
tests.user_data:signals``): records with keys other than ``image`` / ``label``.

``signals``: 1-D inputs ``[L, C]`` (a 32-step, 2-channel signal per record, float32) under
the key ``signal``; the class is which of 4 frequencies the first channel oscillates at,
so a small model learns it in a few steps.
"""

import numpy as np

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
