"""The measuring pieces every comparison shares: an interleaved timer, FLOP counts, machine info,
and the record a worker process prints (`run_marked`: `benchmarks.run` and `comparisons` both
start workers, so it lives here, below both).

Why interleaved: this machine's cores are shared with other jobs, so its speed drifts by
tens of percent within a minute. Timing candidate A ten times and then B ten times would
fold that drift into the A/B ratio; timing A, B, A, B, ... (with the order rotated each
round) exposes both to the same drift, so their *ratio* stays meaningful even when the
absolute times do not. Every raw time is kept, with the median and the spread.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np


@dataclasses.dataclass
class Timing:
    """Seconds per step of one candidate, one entry per timed repeat."""

    name: str
    times_s: list[float]

    @property
    def median_s(self) -> float:
        return statistics.median(self.times_s)

    def summary(self) -> dict[str, Any]:
        """Median, quartiles (the IQR), min and max, and every raw time."""
        q1, q3 = (float(q) for q in np.percentile(self.times_s, [25, 75]))
        return {'median_s': self.median_s, 'q1_s': q1, 'q3_s': q3,
                'min_s': min(self.times_s), 'max_s': max(self.times_s),
                'repeats': len(self.times_s), 'times_s': list(self.times_s)}


def _block(out: Any) -> None:
    """Waits for JAX results; other values (a PyTorch step returns None) are ready already."""
    jax.block_until_ready(out)


def time_interleaved(candidates: Mapping[str, Callable[[], Any]], *, repeats: int,
                     warmup: int = 1, steps: int = 1,
                     clock: Callable[[], float] = time.perf_counter) -> dict[str, Timing]:
    """Times each ``fn()`` ``repeats`` times, round-robin, after ``warmup`` untimed calls each.

    Each timed call runs ``steps`` times back to back (dispatch overlapping the previous
    step, as in a training loop) and is ended by ``block_until_ready``; the recorded value is
    seconds per step. The order of the candidates rotates every round so none always runs
    right after the same neighbour.
    """
    if repeats < 1 or steps < 1:
        raise ValueError(f'repeats={repeats} and steps={steps} must be >= 1')
    names = list(candidates)
    for name in names:
        for _ in range(warmup):  # compilation and first-touch allocations are not timed
            _block(candidates[name]())
    times: dict[str, list[float]] = {name: [] for name in names}
    for r in range(repeats):
        for name in names[r % len(names):] + names[:r % len(names)]:
            fn = candidates[name]
            start = clock()
            out = None
            for _ in range(steps):
                out = fn()
            _block(out)
            times[name].append((clock() - start) / steps)
    return {name: Timing(name, t) for name, t in times.items()}


def ratio(timings: Mapping[str, Timing], numerator: str, denominator: str | list[str]) -> float:
    """``median(numerator) / median(denominator)`` (a list of names: the sum of their medians)."""
    names = [denominator] if isinstance(denominator, str) else denominator
    return timings[numerator].median_s / sum(timings[n].median_s for n in names)


def paired_ratios(timings: Mapping[str, Timing], numerator: str,
                  denominator: str | list[str]) -> list[float]:
    """The ratio round by round: its spread shows how much the load moved the ratio itself."""
    names = [denominator] if isinstance(denominator, str) else denominator
    dens = [sum(v) for v in zip(*(timings[n].times_s for n in names))]
    return [a / b for a, b in zip(timings[numerator].times_s, dens)]


# ------------------------------------------------------------------------------ FLOPs
def compiled_flops(fn: Callable, *args: Any) -> float:
    """XLA's own FLOP count of ``jit(fn)(*args)`` (every op, elementwise ones included).

    ``fn`` may be jitted already (then its shardings and donation are kept).
    """
    jitted = fn if hasattr(fn, 'lower') else jax.jit(fn)
    analysis = jitted.lower(*args).compile().cost_analysis()
    if isinstance(analysis, (list, tuple)):  # older JAX: one dict per computation
        analysis = analysis[0]
    return float(analysis['flops'])


def matmul_flops(m: int, k: int, n: int) -> int:
    """A ``[m, k] @ [k, n]`` product: ``m * n`` dot products of ``k`` multiply-adds."""
    return 2 * m * k * n


def measure_matmul_peak(size: int, repeats: int) -> tuple[float, Timing, Callable[[], Any]]:
    """FLOP/s of one large fp32 ``jnp.dot`` on this machine: the denominator of MFU.

    Returns ``(flops_per_call, timing, fn)``; ``fn`` lets a caller interleave more repeats
    with its own step, so peak and step feel the same load.
    """
    import jax.numpy as jnp

    a = jax.random.normal(jax.random.key(0), (size, size), jnp.float32)
    b = jax.random.normal(jax.random.key(1), (size, size), jnp.float32)
    dot = jax.jit(jnp.dot)
    fn = lambda: dot(a, b)
    timing = time_interleaved({'matmul': fn}, repeats=repeats)['matmul']
    return float(matmul_flops(size, size, size)), timing, fn


# ------------------------------------------------------------------------------ machine
def _cpu_model() -> str:
    try:
        with open('/proc/cpuinfo') as f:
            for line in f:
                if line.startswith('model name'):
                    return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _version(module: str) -> str | None:
    try:
        from importlib import metadata
        return metadata.version(module)
    except Exception:  # noqa: BLE001 - not installed
        return None


def machine_info() -> dict[str, Any]:
    """What the numbers were measured on; times mean little without it."""
    return {
        'cpu_count': os.cpu_count(),
        'cpu_model': _cpu_model(),
        'platform': platform.platform(),
        'python': platform.python_version(),
        'versions': {name: _version(name) for name in
                     ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch')},
        'devices': [str(d) for d in jax.devices()],
        'xla_flags': os.environ.get('XLA_FLAGS', ''),
    }


def load_average() -> list[float]:
    """1, 5 and 15 minute load averages: > cpu_count means the cores were shared."""
    return [round(x, 2) for x in os.getloadavg()]


def finish_record(record: dict[str, Any], path: str) -> None:
    """Ends a benchmark: records ``load_after``, writes ``record`` as JSON to ``path`` and
    says where."""
    record['load_after'] = load_average()
    with open(path, 'w') as f:
        json.dump(record, f, indent=2)
    print(f'wrote {path}')


# ------------------------------------------------------------ records from other processes
MARKER = 'BENCHMARK_RESULT '
"""Prefix of the one stdout line in which a ``benchmarks.run`` worker prints its record."""


class WorkerError(RuntimeError):
    """A ``benchmarks.run`` subprocess gave no record; the message says why."""


def run_marked(args: list[str], env: dict[str, str], timeout_s: float | None = None
               ) -> dict[str, Any]:
    """Runs ``python -m benchmarks.run ARGS`` and returns the record it printed after
    `MARKER`; raises `WorkerError` with the reason if it timed out, failed or printed none."""
    command = [sys.executable, '-m', 'benchmarks.run', *args]
    try:
        done = subprocess.run(command, capture_output=True, text=True, env=env,
                              timeout=timeout_s)
    except subprocess.TimeoutExpired:
        raise WorkerError(f'timed out after {timeout_s:.0f} s') from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        tail = (done.stderr.strip().splitlines() or ['no output'])[-1]
        raise WorkerError(f'exit {done.returncode}: {tail}')
    return json.loads(lines[-1][len(MARKER):])
