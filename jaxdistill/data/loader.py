"""Per-example input pipelines and the worker threads that run them ahead of the step.

Augmentations that work image by image (``inception_crop``'s random-resized crop, the
resize of ``data.image_size``, records decoded one at a time) are a Grain per-example
pipeline: a random-access `grain.MapDataset` whose element ``i`` is this process's
``i``-th training row, augmented from a generator seeded by (seed, global row), then
batched. Element and batch ``s`` are pure functions of their index, so a batch does not
depend on which worker made it, how many there were, or where a run resumed.

`iterate` runs any batch dataset (image, text, cached teacher signals) with
``data.workers`` threads, each making whole batches in order ahead of the step (Grain's
``to_iter_dataset`` prefetch); numpy's copies and Pillow's resampling release the GIL,
so threads overlap on several cores. Measured in benchmarks/input_pipeline.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxdistill.errors import ConfigError

MAX_AUTO_WORKERS = 8


def resolve_workers(workers: int) -> int:
    """``data.workers``: 0 (auto) is one per CPU core, at most `MAX_AUTO_WORKERS`."""
    if workers < 0:
        raise ConfigError(f'data.workers={workers} must be >= 0 (0: one per CPU core, up to '
                          f'{MAX_AUTO_WORKERS})')
    return workers or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)


class ProcessRows:
    """This process's rows of every global batch, one element per row: ``rows[i]`` is
    ``(example id, global row)`` of row ``i % local`` of batch ``i // local``."""

    def __init__(self, order: Sequence[np.ndarray], global_batch: int, local: int, own: int):
        self.order, self.global_batch, self.local, self.own = order, global_batch, local, own
        self._ids: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.order) * self.local

    def _batch_ids(self, step: int) -> np.ndarray:
        ids = self._ids.get(step)
        if ids is None:  # one order lookup per batch, not per row
            ids = np.asarray(self.order[step])[self.own:self.own + self.local]
            with self._lock:
                self._ids = {k: v for k, v in self._ids.items() if step - 64 <= k <= step + 64}
                self._ids[step] = ids
        return ids

    def __getitem__(self, i: int) -> tuple[int, int]:
        step, j = divmod(int(i), self.local)
        return int(self._batch_ids(step)[j]), step * self.global_batch + self.own + j


def stack(examples: Sequence[dict[str, np.ndarray]]) -> dict[str, np.ndarray]:
    return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def per_example_batches(source: Sequence[Any], rows: ProcessRows,
                        transform: Callable[[dict[str, np.ndarray], int], dict[str, Any]],
                        labelled: np.ndarray | None = None) -> grain.MapDataset:
    """``ds[step]``: this process's rows of global batch ``step``, each
    ``transform(source[example id], global row)``; ``labelled`` (a boolean per example)
    adds the ``labelled`` column."""

    def example(row: tuple[int, int]) -> dict[str, Any]:
        index, global_row = row
        out = dict(transform(source[index], global_row))
        if labelled is not None:
            out['labelled'] = labelled[index]
        return out

    return (grain.MapDataset.source(rows).map(example)
            .batch(rows.local, drop_remainder=True, batch_fn=stack))


def iterate(batches: Sequence[Any], start: int, stop: int, workers: int = 1) -> Iterator[Any]:
    """``batches[start], ..., batches[stop - 1]`` in order, ``workers`` threads ahead."""
    if workers <= 1 or stop - start <= 1 or not isinstance(batches, grain.MapDataset):
        return (batches[s] for s in range(start, stop))
    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
    return iter(batches[start:stop].to_iter_dataset(options))
