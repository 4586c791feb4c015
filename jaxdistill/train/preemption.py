"""Stopping a stage safely: on SIGTERM (preemption) and on a non-finite loss.

Schedulers announce preemption with SIGTERM and kill the process some time later
(Cloud TPU spot/preemptible VMs: about 30 s; SLURM: ``--signal`` sets the lead time).
The handler only sets a flag; the stage loop looks at it after every step, saves that
step, and exits with status 0, so rerunning the same command resumes. With several
processes, `jax.distributed` registers its own SIGTERM notifier and the hosts agree
on the step through `multihost_utils.reached_preemption_sync_point`, so each host
saves the same step.

A non-finite loss is caught one step late (reading step ``s``'s loss while step
``s + 1`` runs keeps the device busy) and always before a checkpoint is written, so
no checkpoint ever holds the diverged state.
"""

from __future__ import annotations

import math
import signal
import threading
from typing import Any

import jax
from jax.experimental import multihost_utils

from jaxdistill.errors import TrainingError


class Preempted(SystemExit):
    """Raised once the preemption checkpoint is written: the process exits with status 0."""

    def __init__(self, message: str):
        super().__init__(0)
        self.message = message


class PreemptionWatch:
    """``with PreemptionWatch() as watch: ... if watch.should_stop(step): save and stop``."""

    def __init__(self, signals: tuple[int, ...] = (signal.SIGTERM,)):
        self.signals = signals
        self.received: int | None = None
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> PreemptionWatch:
        # Several processes: JAX's coordination service owns SIGTERM. Signal handlers can
        # only be installed from the main thread (tests may run stages elsewhere).
        if jax.process_count() == 1 and threading.current_thread() is threading.main_thread():
            for sig in self.signals:
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame) -> None:
        del frame
        self.received = signum

    def should_stop(self, step: int) -> bool:
        """Whether to save ``step`` and stop; every process must call it at every step."""
        if jax.process_count() > 1:
            return multihost_utils.reached_preemption_sync_point(step)
        return self.received is not None


class NonFiniteGuard:
    """Stops training at the first non-finite loss or gradient norm, naming the step and
    the last good checkpoint (disabled when ``train.skip_nonfinite`` skips such steps)."""

    def __init__(self, stage: str, directory: str, enabled: bool = True):
        self.stage, self.directory, self.enabled = stage, directory, enabled
        self.last_saved: int | None = None
        self._pending: tuple[int, Any] | None = None

    def push(self, step: int, metrics: dict[str, Any]) -> None:
        """Queues ``step``'s metrics and checks the previous step's."""
        if self.enabled:
            self.flush()
            self._pending = (step, {k: metrics[k] for k in ('loss', 'grad_norm') if k in metrics})

    def flush(self) -> None:
        """Checks the queued step now (before a checkpoint is written)."""
        if self._pending is None:
            return
        step, values = self._pending
        self._pending = None
        values = jax.device_get(values)
        bad = [(k, float(values[k])) for k in ('loss', 'grad_norm')
               if k in values and not math.isfinite(values[k])]
        if bad:
            name, value = bad[0]
            last = (f'{self.directory}/{self.last_saved}' if self.last_saved is not None
                    else 'none (no checkpoint was written yet)')
            raise TrainingError(
                f'{self.stage}: {name} is {value} at step {step}; last good checkpoint: {last}; '
                'lower optimizer.learning_rate or check the data for NaN/inf, or set '
                'train.skip_nonfinite=True to skip such steps (in a new --workdir)')
