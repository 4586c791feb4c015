"""What a stage reports about its own speed, and the tools to look inside it.

* `Throughput`: per log interval, the step time, examples (or tokens) per second, the
  share of the time spent waiting for input, and the model FLOPs utilisation (MFU) when
  the step's FLOPs (XLA's cost analysis of the lowered step) and the device's peak are
  known.
* `Profiler`: ``train.profile_steps=(start, stop)`` traces those steps with
  `jax.profiler` into ``WORKDIR/profile/STAGE`` (open it with TensorBoard's profile
  plugin or Perfetto).
* `enable_compilation_cache`: JAX's persistent compilation cache under the workdir
  (``train.compilation_cache``), so a resumed or repeated run loads its compiled steps
  instead of compiling them again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable
from typing import Any

import jax

from jaxdistill.errors import ConfigError
from jaxdistill.runtime import paths

# Dense peak TFLOP/s per chip at bfloat16 (vendor data sheets); `train.peak_tflops`
# overrides it, and MFU is not reported for devices missing here (CPUs).
PEAK_TFLOPS = {
    'TPU v2': 45.0, 'TPU v3': 123.0, 'TPU v4': 275.0, 'TPU v5 lite': 197.0, 'TPU v5e': 197.0,
    'TPU v5p': 459.0, 'TPU v5': 459.0, 'TPU v6 lite': 918.0, 'TPU v6e': 918.0,
    'TPU7x': 2307.0,
    'NVIDIA A100': 312.0, 'NVIDIA H100': 989.0, 'NVIDIA H200': 989.0, 'NVIDIA H800': 989.0,
    'NVIDIA B200': 2250.0, 'NVIDIA L4': 121.0, 'NVIDIA A10G': 125.0,
}


def peak_flops(device_kind: str, override_tflops: float = 0.0) -> float | None:
    """The peak FLOP/s of one device: ``override_tflops`` if set, else the table's entry
    whose name starts ``device_kind`` (longest match), else None."""
    if override_tflops > 0:
        return override_tflops * 1e12
    matches = [k for k in PEAK_TFLOPS if device_kind.startswith(k)]
    return PEAK_TFLOPS[max(matches, key=len)] * 1e12 if matches else None


def step_flops(step_fn: Callable, *args: Any) -> float | None:
    """XLA's FLOP count of one call of the jitted ``step_fn`` over the whole mesh (the
    lowered, not yet partitioned program), or None where the backend gives none."""
    try:
        analysis = step_fn.lower(*args).cost_analysis()
    except Exception:  # noqa: BLE001 - an analysis the backend lacks is not an error
        return None
    if isinstance(analysis, (list, tuple)):
        analysis = analysis[0] if analysis else None
    flops = (analysis or {}).get('flops')
    return float(flops) if flops and flops > 0 else None


class Throughput:
    """Timing of one log interval: wall time without evaluation and checkpointing, the
    part of it spent waiting for the next batch (``train/input_wait_share``), the part
    spent making batches on the loop's own thread while steps ran
    (``train/input_work_share``, 0 with a prefetch thread), and the steps it covered."""

    def __init__(self, examples_per_step: int, unit: str = 'examples',
                 flops_per_step: float | None = None, peak: float | None = None,
                 devices: int = 1):
        self.examples_per_step, self.unit = examples_per_step, unit
        self.flops_per_step, self.peak, self.devices = flops_per_step, peak, devices
        self.restart(0)

    def restart(self, step: int) -> None:
        self._t0, self._step, self._paused = time.perf_counter(), step, 0.0
        self._waited = self._worked = 0.0

    @contextlib.contextmanager
    def paused(self):
        t = time.perf_counter()
        yield
        self._paused += time.perf_counter() - t

    @contextlib.contextmanager
    def waiting(self):
        t = time.perf_counter()
        yield
        self._waited += time.perf_counter() - t

    def add_input_work(self, seconds: float, device_waited: bool) -> None:
        """Input the loop made itself (`prefetch.Inline`): ``train/input_work_share``; and
        ``train/input_wait_share`` too if the device was done with its steps by the end."""
        self._worked += seconds
        if device_waited:
            self._waited += seconds

    def scalars(self, step: int) -> dict[str, float]:
        """The interval's scalars (namespaced ``train/``); starts the next interval."""
        seconds = time.perf_counter() - self._t0 - self._paused
        steps = step - self._step
        out = {}
        if steps > 0 and seconds > 0:
            step_time = seconds / steps
            out = {'train/step_time': step_time,
                   f'train/{self.unit}_per_second': self.examples_per_step / step_time,
                   'train/input_wait_share': min(self._waited / seconds, 1.0),
                   'train/input_work_share': min(self._worked / seconds, 1.0)}
            if self.flops_per_step:
                achieved = self.flops_per_step / step_time / self.devices
                out['train/tflops_per_device'] = achieved / 1e12
                if self.peak:
                    out['train/mfu'] = achieved / self.peak
        self.restart(step)
        return out


def check_profile_steps(window: Any, steps: int, key: str = 'train.profile_steps') -> None:
    """``()`` (off) or ``(start, stop)`` with ``0 <= start < stop <= steps``."""
    if not window:
        return
    if (not isinstance(window, (tuple, list)) or len(window) != 2
            or not all(isinstance(s, int) and not isinstance(s, bool) for s in window)):
        raise ConfigError(f'{key}={window!r} must be (start, stop): the steps to trace, e.g. '
                          '(10, 15), or () for none')
    start, stop = window
    if not 0 <= start < stop <= steps:
        raise ConfigError(f'{key}={tuple(window)!r} is outside the run of {steps} steps: give '
                          f'0 <= start < stop <= {steps}, e.g. ({min(10, steps - 1)}, '
                          f'{min(15, steps)})')


class Profiler:
    """Traces steps ``[start, stop)`` of a stage (step numbers as in the progress line:
    the trace starts before step ``start + 1`` runs) into ``directory``."""

    def __init__(self, window: Any, directory: str, enabled: bool = True):
        self.start, self.stop = tuple(window) if window else (-1, -1)
        self.directory, self.enabled = directory, enabled and bool(window)
        self.active = False

    def before(self, step: int) -> None:
        """Call before running step ``step`` (0-based)."""
        if self.enabled and step == self.start and not self.active:
            paths.makedirs(self.directory)
            jax.profiler.start_trace(self.directory)
            self.active = True

    def after(self, done: int, outputs: Any) -> None:
        """Call after step ``done - 1``; ``outputs`` are waited for before the trace ends."""
        if self.active and done >= self.stop:
            jax.block_until_ready(outputs)
            jax.profiler.stop_trace()
            self.active = False

    def close(self) -> None:
        if self.active:
            jax.profiler.stop_trace()
            self.active = False


def enable_compilation_cache(setting: str, workdir: str) -> str:
    """Turns on JAX's persistent compilation cache; returns its directory ('' if off).

    ``setting``: 'auto' (``WORKDIR/compilation_cache``), '' or 'off' (none), or a path.
    A cache chosen outside (``JAX_COMPILATION_CACHE_DIR``) is left as it is.
    """
    if setting in ('', 'off'):
        return ''
    if os.environ.get('JAX_COMPILATION_CACHE_DIR'):
        return os.environ['JAX_COMPILATION_CACHE_DIR']
    directory = paths.join(workdir, 'compilation_cache') if setting == 'auto' \
        else paths.resolve(setting)
    from jax.experimental.compilation_cache import compilation_cache

    if jax.config.jax_compilation_cache_dir == directory:
        return directory
    # Every compiled step is worth keeping: a resume otherwise recompiles the small ones too.
    jax.config.update('jax_persistent_cache_min_compile_time_secs', 0.0)
    jax.config.update('jax_persistent_cache_min_entry_size_bytes', 0)
    compilation_cache.set_cache_dir(directory)
    compilation_cache.reset_cache()  # taken up even if this process compiled before
    return directory
