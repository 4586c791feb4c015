"""Per-example input pipelines and the workers that run them ahead of the step.

Augmentations that work image by image (``inception_crop``'s random-resized crop, the
resize of ``data.image_size``, records decoded one at a time) are a Grain per-example
pipeline: a random-access `grain.MapDataset` whose element ``i`` is this process's
``i``-th training row, augmented from a generator seeded by (seed, global row), then
batched. Element and batch ``s`` are pure functions of their index, so a batch does not
depend on which worker made it, how many there were, or where a run resumed.

`iterate` runs a batch dataset (image, text, cached teacher signals) with ``data.workers``
workers, each making whole batches in order ahead of the step: threads
(``data.workers_kind='threads'``, Grain's ``to_iter_dataset`` prefetch; numpy's copies and
Pillow's resampling release the GIL, so threads overlap on several cores) or processes
(``'processes'``, Grain's ``mp_prefetch``: no GIL to share, at the price of spawning
workers that each import the pipeline and receive a pickled copy of it). Batches made by
a few whole-batch numpy operations on data in memory (`whole_batch`: the shift of
``crop``/``flip_crop``) skip the threads: made on the loop's prefetch thread, they hold the
GIL for a fraction of a small step, and more threads only contend for it (Grain's advice
for data in memory too). Measured in benchmarks/input_pipeline.py.
"""

from __future__ import annotations

import os
import threading
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxdistill.errors import ConfigError

MAX_AUTO_WORKERS = 8
WORKER_KINDS = ('threads', 'processes')
_WHOLE_BATCH: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def resolve_workers(workers: int) -> int:
    """``data.workers``: 0 (auto) is one per CPU core, at most `MAX_AUTO_WORKERS`."""
    if workers < 0:
        raise ConfigError(f'data.workers={workers} must be >= 0 (0: one per CPU core, up to '
                          f'{MAX_AUTO_WORKERS})')
    return workers or min(os.cpu_count() or 1, MAX_AUTO_WORKERS)


def check_worker_kind(kind: str) -> str:
    """``data.workers_kind``: 'threads' or 'processes'."""
    if kind not in WORKER_KINDS:
        raise ConfigError(f'data.workers_kind={kind!r} must be one of {WORKER_KINDS}: '
                          "'threads' shares this process (and its GIL), 'processes' spawns "
                          'data.workers worker processes')
    return kind


def whole_batch(ds: grain.MapDataset, make: Callable[[int], Any]) -> grain.MapDataset:
    """Marks ``ds`` as made by whole-batch numpy operations on data in memory, ``ds[s] ==
    make(s)``: with threads, `iterate` calls ``make`` on the calling thread, without
    worker threads or Grain's per-element bookkeeping (~30 us a batch)."""
    _WHOLE_BATCH[ds] = make
    return ds


class ProcessRows:
    """This process's rows of every global batch, one element per row: ``rows[i]`` is
    ``(example id, global row)`` of row ``i % local`` of batch ``i // local``."""

    def __init__(self, order: Sequence[np.ndarray], global_batch: int, local: int, own: int):
        self.order, self.global_batch, self.local, self.own = order, global_batch, local, own
        self._ids: dict[int, np.ndarray] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.order) * self.local

    def __getstate__(self) -> dict[str, Any]:  # worker processes get a copy, lock-free
        return {k: v for k, v in self.__dict__.items() if k not in ('_ids', '_lock')}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _ids={}, _lock=threading.Lock())

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


def iterate(batches: Sequence[Any], start: int, stop: int, workers: int = 1,
            kind: str = 'threads') -> Iterator[Any]:
    """``batches[start], ..., batches[stop - 1]`` in order, ``workers`` threads or
    processes (``kind``) ahead."""
    check_worker_kind(kind)
    make = _WHOLE_BATCH.get(batches) if isinstance(batches, grain.MapDataset) else None
    if make is not None and kind == 'threads':
        return (make(s) for s in range(start, stop))
    if (workers < 1 or stop - start <= 1 or not isinstance(batches, grain.MapDataset)
            or (kind == 'threads' and workers == 1)):
        return (batches[s] for s in range(start, stop))
    if kind == 'processes':
        return _processes(batches[start:stop], workers)
    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
    return iter(batches[start:stop].to_iter_dataset(options))


def _processes(batches: grain.MapDataset, workers: int) -> Iterator[Any]:
    """Grain's ``mp_prefetch``: worker ``i`` makes batches ``i, i + workers, ...`` (one
    thread each: the data is theirs alone) and their outputs interleave back in order.
    The workers are spawned on the first batch and stopped when the iteration ends or is
    abandoned."""
    from absl import flags

    if not flags.FLAGS.is_parsed():  # the Python API, tests: Grain's workers read its flags
        flags.FLAGS.mark_as_parsed()
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    it = iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                          per_worker_buffer_size=2)))
    try:
        yield from it
    finally:
        it.close()
