"""Peak memory and time of naive vs chunked token-level KD/JSD, forward + backward.

    python -m benchmarks.chunked_kl            # B=8, T=1024, V=32768 -> benchmarks/chunked_kl.json
    python -m benchmarks.chunked_kl --quick    # tiny shapes, a smoke run (chunked_kl_quick.json)

Eight variants: {naive, chunked} x {kd, jsd} x {from logits, from hidden states}. Each runs in a
fresh subprocess (so one variant's buffers cannot inflate another's peak) and reports:

* ``temp_bytes`` etc.: XLA's compiled memory statistics of the jitted forward+backward
  (``jax.jit(...).lower(...).compile().memory_analysis()``): the working set beyond the
  arguments and outputs. Deterministic, and what grows with ``B*T*V``.
* ``peak_rss_bytes``: the process's peak resident memory while compiling and running
  (``ru_maxrss``, its high-water mark reset through ``/proc/self/clear_refs`` once the inputs
  exist, so input generation's transients do not count); ``rss_inputs_bytes``, the resident
  memory with the inputs created; ``added_rss_bytes``, the difference: what the computation
  itself needed.
* ``time_s``: the median of ``--repeats`` runs after one warm-up, each ended with
  ``block_until_ready``.

"From logits" differentiates w.r.t. ``[B, T, V]`` student logits (the inputs and the gradient are
B*T*V arrays either way; chunking removes the intermediates). "From hidden states"
differentiates w.r.t. ``[B, T, D]`` hidden states and the ``[D, V]`` output projection; the naive
path materialises both models' logits, the chunked one (:func:`chunked_kd_from_hidden`) never
does.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import time

SIZES = {
    'full': dict(batch=8, tokens=1024, vocab=32768, hidden=256, chunk=1024, repeats=3),
    'quick': dict(batch=2, tokens=128, vocab=4096, hidden=64, chunk=128, repeats=2),
}
VARIANTS = [f'{path}-{loss}-{source}' for source in ('logits', 'hidden')
            for loss in ('kd', 'jsd') for path in ('naive', 'chunked')]
HYPER = {'kd': dict(temperature=2.0), 'jsd': dict(beta=0.5)}


def _maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _rss_bytes() -> int:
    with open('/proc/self/status') as f:
        return int(next(line for line in f if line.startswith('VmRSS:')).split()[1]) * 1024


def _reset_peak_rss() -> bool:
    """Resets the high-water mark behind ``ru_maxrss`` (Linux >= 4.0); False if unsupported."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def run_variant(name: str, size: dict) -> dict:
    """Compiles, warms up and times one variant in this process; returns its measurements."""
    import jax

    from jaxdistill import losses
    from jaxdistill.losses import token as token_losses

    path, loss, source = name.split('-')
    b, t, v, d, chunk = (size[k] for k in ('batch', 'tokens', 'vocab', 'hidden', 'chunk'))
    keys = jax.random.split(jax.random.key(0), 5)
    mask = jax.random.uniform(keys[0], (b, t)) < 0.9  # ~10% padding tokens
    hyper = HYPER[loss]

    def mean(per_token):
        return losses.token_mean(per_token, mask)

    if source == 'logits':
        args = (2.0 * jax.random.normal(keys[1], (b, t, v)),
                2.0 * jax.random.normal(keys[2], (b, t, v)))
        argnums = 0
        if path == 'naive':
            def objective(zs, zt):
                return mean(losses.get(loss)(zs, zt, where=mask, **hyper))
        else:
            def objective(zs, zt):
                return mean(token_losses.chunked_token_loss(
                    zs, zt, loss=loss, where=mask, chunk_size=chunk, **hyper))
    else:
        args = (jax.random.normal(keys[1], (b, t, d)),
                jax.random.normal(keys[2], (d, v)) / d**0.5,
                jax.random.normal(keys[3], (b, t, d)),
                jax.random.normal(keys[4], (d, v)) / d**0.5)
        argnums = (0, 1)
        if path == 'naive':
            def objective(h_s, w_s, h_t, w_t):
                return mean(losses.get(loss)(h_s @ w_s, h_t @ w_t, where=mask, **hyper))
        else:
            def objective(h_s, w_s, h_t, w_t):
                return mean(token_losses.chunked_kd_from_hidden(
                    h_s, w_s, h_t, w_t, loss=loss, where=mask, chunk_size=chunk, **hyper))

    jax.block_until_ready(args)
    rss_inputs = _rss_bytes()
    peak_was_reset = _reset_peak_rss()
    step = jax.jit(jax.value_and_grad(objective, argnums))
    start = time.perf_counter()
    compiled = step.lower(*args).compile()
    compile_s = time.perf_counter() - start
    stats = compiled.memory_analysis()
    jax.block_until_ready(compiled(*args))  # warm-up
    times = []
    for _ in range(size['repeats']):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        times.append(time.perf_counter() - start)
    return {
        'variant': name,
        'time_s': statistics.median(times),
        'times_s': times,
        'compile_s': compile_s,
        'temp_bytes': int(stats.temp_size_in_bytes),
        'argument_bytes': int(stats.argument_size_in_bytes),
        'output_bytes': int(stats.output_size_in_bytes),
        'rss_inputs_bytes': rss_inputs,
        'peak_rss_bytes': _maxrss_bytes(),
        'added_rss_bytes': _maxrss_bytes() - rss_inputs,
        'peak_rss_reset_after_inputs': peak_was_reset,
        'load_average_after': os.getloadavg(),  # other processes share the CPU: see the times
    }


def machine_info() -> dict:
    import jax

    return {
        'cpu_count': os.cpu_count(),
        'platform': platform.platform(),
        'processor': platform.processor() or platform.machine(),
        'python': platform.python_version(),
        'jax': jax.__version__,
        'device': str(jax.devices()[0]),
        'load_average_at_start': os.getloadavg(),
    }


def ratios(results: dict[str, dict]) -> dict:
    """naive / chunked for memory (how much chunking saves), chunked / naive for time."""
    out = {}
    for source in ('logits', 'hidden'):
        for loss in ('kd', 'jsd'):
            naive = results[f'naive-{loss}-{source}']
            chunked = results[f'chunked-{loss}-{source}']
            out[f'{loss}-{source}'] = {
                'temp_memory_naive_over_chunked': naive['temp_bytes'] / chunked['temp_bytes'],
                'peak_rss_naive_over_chunked': naive['peak_rss_bytes'] / chunked['peak_rss_bytes'],
                'added_rss_naive_over_chunked':
                    naive['added_rss_bytes'] / chunked['added_rss_bytes'],
                'time_chunked_over_naive': chunked['time_s'] / naive['time_s'],
            }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true', help='tiny shapes, a smoke run')
    parser.add_argument('--variant', choices=VARIANTS, help='run one variant (in this process)')
    parser.add_argument('--out', help='JSON output (default: benchmarks/chunked_kl[_quick].json)')
    args = parser.parse_args(argv)
    size_name = 'quick' if args.quick else 'full'
    size = SIZES[size_name]
    if args.variant:
        print(json.dumps(run_variant(args.variant, size)))
        return
    results = {}
    for name in VARIANTS:
        command = [sys.executable, '-m', 'benchmarks.chunked_kl', '--variant', name]
        command += ['--quick'] if args.quick else []
        env = dict(os.environ, XLA_FLAGS='')  # one CPU device, whatever the caller forces
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
        results[name] = json.loads(done.stdout.strip().splitlines()[-1])
        r = results[name]
        print(f"{name:20s} time {r['time_s']:8.3f} s   temp {r['temp_bytes'] / 2**20:9.1f} MiB   "
              f"peak rss {r['peak_rss_bytes'] / 2**20:9.1f} MiB", flush=True)
    report = {
        'command': 'python -m benchmarks.chunked_kl' + (' --quick' if args.quick else ''),
        'size': dict(size, name=size_name),
        'memory_method': 'compiled memory_analysis().temp_size_in_bytes of the jitted fwd+bwd; '
                         'ru_maxrss of a fresh subprocess per variant, its high-water mark reset '
                         '(/proc/self/clear_refs) after the inputs were created',
        'machine': machine_info(),
        'results': results,
        'ratios': ratios(results),
    }
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, 'chunked_kl_quick.json' if args.quick
                                   else 'chunked_kl.json')
    with open(out, 'w') as f:
        json.dump(report, f, indent=2)
        f.write('\n')
    print(json.dumps(report['ratios'], indent=2))
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
