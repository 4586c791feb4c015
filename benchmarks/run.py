"""jaxdistill's speed and memory against the physical limit and against peers.

    python -m benchmarks.run            # -> benchmarks/results.json + results.md (tens of minutes)
    python -m benchmarks.run --quick    # small shapes, minutes -> results_quick.{json,md}
    python -m benchmarks.run --only distill_over_limit --only vs_naive_jax

Each comparison runs in its own Python process (``--worker NAME``), its candidates timed
side by side in that process with their repeats interleaved; a comparison that fails is
recorded as an error and the others still run. ``scaling_8dev``'s process starts with 8
forced CPU devices (the device count is fixed when JAX starts); ``chunked_kl_memory_ratio``
starts one more process per variant (`benchmarks.chunked_kl`), so no variant's buffers
inflate another's peak. Compilations are shared between processes through JAX's persistent
cache, so the same step is not compiled once per comparison.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from typing import Any

from benchmarks import comparisons, harness, report

NAMES = tuple(comparisons.COMPARISONS)
TIMING_METHOD = ('Each candidate is warmed up (compilation excluded), then timed for '
                 '`repeats` rounds, the candidates interleaved and their order rotated every '
                 'round; each timed call ends with `jax.block_until_ready` (PyTorch runs '
                 'synchronously on CPU). Reported: the median per candidate, its quartiles and '
                 'min/max, the ratio of medians, and the ratio round by round (its IQR is the '
                 "'spread').")


def _worker_env(name: str) -> dict[str, str]:
    from jaxdistill.runtime import hostmem

    # What the CLI runs under (jaxdistill/runtime/hostmem.py), decided for the CPU the worker uses.
    env = hostmem.environ('auto', dict(os.environ, JAX_PLATFORMS='cpu'))
    env['XLA_FLAGS'] = ('--xla_force_host_platform_device_count=8' if name == 'scaling_8dev'
                        else '')
    env.setdefault('JAX_COMPILATION_CACHE_DIR',
                   os.path.join(tempfile.gettempdir(), 'jaxdistill-bench-xla'))
    # PyTorch's OpenMP threads spin-wait by default; on a shared machine that made its steps
    # 3-8x slower here (benchmarks/NOTES.md), so the peer gets the policy that suits it.
    env.setdefault('OMP_WAIT_POLICY', 'PASSIVE')
    return env


def run_worker(name: str, quick: bool, repeats: int) -> dict[str, Any]:
    """Runs one comparison in this process; adds its load averages and wall time.

    The process was started with the host-memory policy the CLI takes (`_worker_env`,
    ``--host_memory=auto``), so every candidate in it, peers included, runs under it;
    ``host_memory`` measures what that policy is worth, one process per policy.
    """
    import jax

    from jaxdistill.runtime import hostmem

    before, start = harness.load_average(), time.perf_counter()
    record = comparisons.COMPARISONS[name](quick, repeats)
    record.setdefault('status', 'ok')
    record.update(load_average_before=before, load_average_after=harness.load_average(),
                  wall_s=time.perf_counter() - start, repeats=repeats,
                  host_memory=hostmem.in_force(),
                  devices=[str(d) for d in jax.devices()])
    return record


def run_in_subprocess(name: str, quick: bool, repeats: int, timeout_s: float) -> dict[str, Any]:
    """A comparison's record from its own process, or an error record saying why not."""
    args = ['--worker', name, '--repeats', str(repeats)] + (['--quick'] if quick else [])
    try:
        return harness.run_marked(args, _worker_env(name), timeout_s)
    except harness.WorkerError as e:
        return {'status': 'error', 'reason': str(e)}


def _summary_line(name: str, record: dict[str, Any]) -> str:
    if record['status'] != 'ok':
        return f"{name:26s} {record['status']}: {record['reason']}"
    ratios = ', '.join(f"{case} {row['ratio']:.3f}" for case, row in record['results'].items())
    return f"{name:26s} {ratios}   ({record['wall_s']:.0f} s)"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='small shapes: minutes, not tens')
    parser.add_argument('--only', action='append', choices=NAMES, help='run these comparisons')
    parser.add_argument('--repeats', type=int, help='timed rounds per comparison '
                                                    '(default 7, --quick 5)')
    parser.add_argument('--out', help='JSON output (default benchmarks/results[_quick].json; '
                                      'the markdown goes next to it)')
    parser.add_argument('--merge', action='store_true',
                        help='keep the other comparisons of the existing output file (each '
                             'record has its own load, repeats and wall time)')
    parser.add_argument('--timeout', type=float, default=3600, help='seconds per comparison')
    parser.add_argument('--worker', choices=NAMES, help=argparse.SUPPRESS)
    parser.add_argument('--probe', choices=('reuse', 'system'), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    repeats = args.repeats or (5 if args.quick else 7)
    if args.probe:  # one process of host_memory: the distill steps under one policy
        from jaxdistill.runtime import hostmem

        if hostmem.in_force() != args.probe:
            raise SystemExit(f'--probe {args.probe} started without its environment')
        print(harness.MARKER + json.dumps(comparisons.host_memory_probe(args.quick, repeats)),
              flush=True)
        return
    if args.worker:
        print(harness.MARKER + json.dumps(run_worker(args.worker, args.quick, repeats)),
              flush=True)
        return

    before = harness.load_average()
    records = {}
    for name in args.only or NAMES:
        records[name] = run_in_subprocess(name, args.quick, repeats, args.timeout)
        print(_summary_line(name, records[name]), flush=True)
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, 'results_quick.json' if args.quick else 'results.json')
    if args.merge and os.path.exists(out):
        with open(out) as f:
            records = {**json.load(f)['comparisons'], **records}
    command = 'python -m benchmarks.run' + (' --quick' if args.quick else '')
    results = {'schema_version': report.SCHEMA_VERSION, 'command': command,
               'quick': args.quick, 'timing_method': TIMING_METHOD,
               'machine': harness.machine_info(), 'load_average_before': before,
               'load_average_after': harness.load_average(), 'comparisons': records}
    report.validate(results)
    with open(out, 'w') as f:
        json.dump(results, f, indent=2)
        f.write('\n')
    with open(os.path.splitext(out)[0] + '.md', 'w') as f:
        f.write(report.markdown(results))
    print(f'wrote {out} and {os.path.splitext(out)[0]}.md')


if __name__ == '__main__':
    main()
