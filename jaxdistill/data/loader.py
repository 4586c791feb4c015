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
a few whole-batch numpy operations on data in memory (`WholeBatches`: the shift of
``crop``/``flip_crop``) skip the worker threads: made on the loop's prefetch thread (or by
the loop itself: `runs_inline`), they hold the GIL for a fraction of a small step, and more
threads only contend for it (Grain's advice for data in memory too). Measured in
benchmarks/input_pipeline.py.
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import os
import queue
import re
import signal
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxdistill.errors import ConfigError, DataError

MAX_AUTO_WORKERS = 8
WORKER_KINDS = ('threads', 'processes')
DEFAULT_KIND = 'threads'
WORKER_POLL_S = 0.5  # how often a waiting loop checks that its worker processes live


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


def worker_kind(data_cfg) -> str:
    """``data.workers_kind`` of a ``data`` config block, checked ('threads' for a config
    written before the key existed)."""
    return check_worker_kind(data_cfg.get('workers_kind', DEFAULT_KIND))


@dataclasses.dataclass(frozen=True)
class WholeBatches:
    """Batches made by a few whole-batch numpy operations on data in memory: batch ``s``
    is ``make(s)``, called directly, without worker threads or Grain's per-element
    bookkeeping (~30 us a batch). ``dataset`` holds the same batches as a Grain dataset,
    for worker processes (``data.workers_kind='processes'``: Grain spawns them)."""

    make: Callable[[int], Any]
    dataset: grain.MapDataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, step: int) -> Any:
        return self.make(int(step))


class BlockCache:
    """``make(step)`` for `WholeBatches` from ``many(first, count)``, which makes ``count``
    consecutive batches at once: a step outside the block made last starts a new block
    there. A block holds ``steps`` batches: about ``BLOCK_BYTES`` of batches of
    ``batch_bytes`` (at most ``BLOCK_STEPS``; one for a batch larger than that). A small
    batch's numpy calls cost more than its bytes (benchmarks/NOTES.md 15): made a block at
    a time, each costs a fraction of them. Called by one thread at a time (the loop's feed,
    which hands blocks of the same size to its thread: `feed_block`)."""

    def __init__(self, many: Callable[[int, int], list[Any]], batch_bytes: int):
        self.many = many
        self.steps = int(max(1, min(BLOCK_STEPS, BLOCK_BYTES // max(int(batch_bytes), 1))))
        self._first, self._block = 0, []

    def __call__(self, step: int) -> Any:
        i = step - self._first
        if not 0 <= i < len(self._block):
            self._first, self._block, i = step, self.many(step, self.steps), 0
        return self._block[i]


BLOCK_STEPS = 16  # batches made at once, at most
BLOCK_BYTES = 1 << 20


def feed_block(batches: Any, kind: str) -> int:
    """How many consecutive batches the loop's prefetch thread makes per hand-off: a
    `BlockCache`'s block, else one."""
    if isinstance(batches, WholeBatches) and kind == 'threads' and isinstance(
            batches.make, BlockCache):
        return batches.make.steps
    return 1


def runs_inline(batches: Any, kind: str) -> bool:
    """Whether the training loop can make ``batches`` on its own thread, between
    dispatching a step and waiting for the one before (`prefetch.Inline`, when
    ``train._Loop.inline``), instead of on a prefetch thread: whole batches of data in
    memory, with threads."""
    return isinstance(batches, WholeBatches) and kind == 'threads'


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
    if isinstance(batches, WholeBatches):
        if kind == 'threads':
            return (batches[s] for s in range(start, stop))
        batches = batches.dataset
    if (workers < 1 or stop - start <= 1 or not isinstance(batches, grain.MapDataset)
            or (kind == 'threads' and workers == 1)):
        return (batches[s] for s in range(start, stop))
    if kind == 'processes':  # endless: a worker never stops before the loop stops it
        return _processes(batches[start:], workers, stop - start)
    options = grain.ReadOptions(num_threads=workers, prefetch_buffer_size=2 * workers)
    return iter(batches[start:stop].to_iter_dataset(options))


def _processes(batches: grain.MapDataset, workers: int, count: int,
               poll_s: float = WORKER_POLL_S) -> Iterator[Any]:
    """The first ``count`` of ``batches`` by Grain's ``mp_prefetch``: worker ``i`` makes
    batches ``i, i + workers, ...`` (one thread each: the data is theirs alone) and their
    outputs interleave back in order. The workers are spawned on the first batch and
    stopped when the iteration ends or is abandoned.

    A watchdog: Grain's iterator runs on a thread of its own, and while no batch comes
    the workers are checked every ``poll_s`` seconds. The workers run until this stops
    them (``batches`` outlasts ``count``), so one that exited was killed (for memory),
    crashed, or quit with status 0, which Grain would wait on forever: the iteration ends
    with a one-line `DataError` naming it and the fix."""
    from absl import flags

    if not flags.FLAGS.is_parsed():  # the Python API, tests: Grain's workers read its flags
        flags.FLAGS.mark_as_parsed()
    ds = batches.to_iter_dataset(grain.ReadOptions(num_threads=0, prefetch_buffer_size=0))
    watch = WorkerWatch()
    it = iter(ds.mp_prefetch(grain.MultiprocessingOptions(num_workers=workers,
                                                          per_worker_buffer_size=2)))
    box: queue.Queue = queue.Queue(maxsize=2)
    stop = threading.Event()
    threading.Thread(target=_pump, args=(it, box, stop), daemon=True,
                     name='jaxdistill-data-workers').start()
    try:
        while count > 0:
            try:
                what, value = box.get(timeout=poll_s)
            except queue.Empty:
                watch.check()
                continue
            if what == 'end':
                return
            if what == 'error':
                watch.check()  # a worker's exit explains Grain's error best
                raise _worker_error(value) or value
            if len(watch.seen) < workers:
                watch.scan()
            count -= 1
            yield value
    finally:
        stop.set()
        it.close()


def _pump(it: Iterator[Any], box: queue.Queue, stop: threading.Event) -> None:
    """Moves ``it``'s batches into ``box`` until it ends, fails, or ``stop`` is set."""
    def put(item) -> bool:
        while not stop.is_set():
            try:
                box.put(item, timeout=0.1)
                return True
            except queue.Full:
                pass
        return False

    try:
        for batch in it:
            if not put(('batch', batch)):
                return
        put(('end', None))
    except Exception as e:  # noqa: BLE001 - handed to the consumer
        put(('error', e))


class WorkerWatch:
    """The Grain worker processes spawned since it was made: `check` raises a one-line
    `DataError` if one has exited (they run until the iteration stops them)."""

    PREFIX = 'grain-process-prefetch'  # the name Grain gives them

    def __init__(self):
        self.before = set(multiprocessing.active_children())
        self.seen: list[multiprocessing.process.BaseProcess] = []

    def scan(self) -> None:
        for p in multiprocessing.active_children():  # (it forgets the exited ones: kept here)
            if p not in self.before and p not in self.seen and p.name.startswith(self.PREFIX):
                self.seen.append(p)

    def check(self) -> None:
        self.scan()
        for p in self.seen:
            if p.exitcode is not None:
                raise DataError(worker_exit_message(p.exitcode, p.pid))


def worker_exit_message(code: int, pid: int | None = None) -> str:
    """One line: which worker exited how, and what to do about it."""
    if code < 0:
        try:
            how = f'signal {signal.Signals(-code).name}'
        except ValueError:
            how = f'signal {-code}'
        if code == -signal.SIGKILL:
            how += ' (the out-of-memory killer sends it)'
    else:
        how = f'status {code}'
    who = f'data worker process {pid}' if pid is not None else 'a data worker process'
    return (f'{who} exited with {how} while making training batches; lower data.workers '
            "(each worker process holds a copy of the pipeline) or use "
            "data.workers_kind='threads'")


def _worker_error(error: BaseException) -> DataError | None:
    """Grain's own report of a worker that died, as a `DataError` (None: another error)."""
    found = re.search(r'terminated unexpectedly with exit code (-?\d+)', str(error))
    return DataError(worker_exit_message(int(found.group(1)))) if found else None
