"""Prepare the next batches while the device runs this step.

Two ways, one interface (``next(feed)``, then ``feed.advance()`` once the step that
consumed it is dispatched):

* `prefetch`: a background thread makes the batches ``depth`` steps ahead; for input that
  waits on I/O, worker threads or processes (`loader.iterate`).
* `Inline`: the loop's own thread makes the next batch in ``advance``, between
  dispatching a step and waiting for the one before. Dispatch is asynchronous, so this
  overlaps the running step as a thread would, without the thread: no hand-off per step
  (a wake-up, a future), and no second thread holding the GIL when the loop needs it to
  dispatch. For batches that cost a fraction of a step, made from data in memory; under
  CPU contention it was slower than the thread (benchmarks/NOTES.md 15), so the loop uses
  it only when ``train._Loop.inline`` is set.
"""

from __future__ import annotations

import collections
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any


class prefetch:  # noqa: N801 - used as a function: ``for batch in prefetch(...)``
    """Yields ``make(step)`` for ``step`` in ``[start, stop)``, ``depth`` blocks of
    ``block`` steps ahead, made on one background thread. Exceptions raised by ``make``
    surface at the step that needed the batch. Use as ``with prefetch(...) as feed``
    (stops the thread).

    The block that replaces one used up is handed to the thread by `advance` (or by the
    next ``next``, if `advance` was not called): the loop calls it after dispatching its
    step, just before it blocks on the device, so the thread wakes up when the GIL is
    about to be free rather than while the loop needs it to dispatch. Each hand-off wakes
    the thread (~0.2 ms of CPU a step measured for the digits job: benchmarks/NOTES.md
    15), so small batches go ``block`` at a time."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int, depth: int = 2,
                 block: int = 1):
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix='jaxdistill-prefetch')
        self.make, self.stop, self.block = make, stop, max(1, int(block))
        self._pending: collections.deque = collections.deque()
        self._ready: collections.deque = collections.deque()
        self._step, self._owed = start, depth
        self.advance()

    def _make_block(self, first: int) -> list[tuple[Any, BaseException | None]]:
        out = []
        for step in range(first, min(first + self.block, self.stop)):
            try:
                out.append((self.make(step), None))
            except Exception as e:  # noqa: BLE001 - raised by __next__, at its own step
                out.append((None, e))
                break
        return out

    def __iter__(self) -> prefetch:
        return self

    def __next__(self) -> Any:
        self.advance()
        if not self._ready:
            if not self._pending:
                self.close()
                raise StopIteration
            self._ready.extend(self._pending.popleft().result())
            self._owed += 1
        batch, error = self._ready.popleft()
        if error is not None:
            raise error
        return batch

    def advance(self) -> None:
        """Hands the thread the blocks that replace the ones taken."""
        for _ in range(self._owed):
            if self._step < self.stop:
                self._pending.append(self._pool.submit(self._make_block, self._step))
                self._step += self.block
        self._owed = 0

    def close(self) -> None:
        for future in self._pending:
            future.cancel()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> prefetch:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Inline:
    """``make(step)`` for ``step`` in ``[start, stop)``, made on the calling thread one
    step ahead: `advance` makes the next batch (call it once the step that consumed the
    last one is dispatched), ``next`` hands it over (making it first if `advance` was not
    called). Exceptions raised by ``make`` surface at the step that needed the batch."""

    def __init__(self, make: Callable[[int], Any], start: int, stop: int):
        self.make, self._step, self.stop = make, start, stop
        self._ready: tuple[Any, BaseException | None] | None = None

    def __iter__(self) -> Inline:
        return self

    def advance(self) -> None:
        if self._ready is not None or self._step >= self.stop:
            return
        try:
            self._ready = (self.make(self._step), None)
        except Exception as e:  # noqa: BLE001 - raised by __next__, at its own step
            self._ready = (None, e)
        self._step += 1

    def __next__(self) -> Any:
        self.advance()
        if self._ready is None:
            raise StopIteration
        (batch, error), self._ready = self._ready, None
        if error is not None:
            raise error
        return batch

    def close(self) -> None:
        self._ready = None

    def __enter__(self) -> Inline:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
