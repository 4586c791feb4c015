"""Prepare the next batches on a background thread while the device runs this step."""

from __future__ import annotations

import collections
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any


def prefetch(make: Callable[[int], Any], start: int, stop: int, depth: int = 2) -> Iterator[Any]:
    """Yields ``make(step)`` for ``step`` in ``[start, stop)``, ``depth`` steps ahead.

    Exceptions raised by ``make`` surface at the step that needed the batch.
    """
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix='jaxdistill-prefetch') as pool:
        first = range(start, min(stop, start + depth))
        pending = collections.deque(pool.submit(make, s) for s in first)
        step = start + len(pending)
        while pending:
            batch = pending.popleft().result()
            if step < stop:
                pending.append(pool.submit(make, step))
                step += 1
            yield batch
