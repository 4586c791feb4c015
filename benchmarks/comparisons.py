"""Each comparison of ``python -m benchmarks.run``: its candidates, timed side by side.

A comparison runs in its own process (`benchmarks.run` starts one per comparison) and
returns a record: ``{'description', 'goal', 'results': {case: {...}}}`` where each case
(a model pair, or a memory variant) has ``ratio`` and ``meets_goal`` (None when the
comparison has no goal) plus every raw time. The order of the candidates is interleaved
(`harness.time_interleaved`), so the machine's drifting load hits all of them alike.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import harness, pairs, steps
from jaxdistill.runtime import hostmem

PAIRS = ('image', 'lm')
# Every ratio is lower-is-better except cpu_mfu's; a goal is the largest ratio that meets
# it, None when the issue sets no target (the number is measured and reported).
Goal = float | None


def _case(timings: dict[str, harness.Timing], numerator: str, denominator, goal: Goal,
          **extra: Any) -> dict[str, Any]:
    """One result row: the ratio of medians, the round-by-round ratios, every raw time."""
    value = harness.ratio(timings, numerator, denominator)
    return {'ratio': value, **_round_stats(harness.paired_ratios(timings, numerator, denominator)),
            'meets_goal': None if goal is None else bool(value <= goal),
            'timings': {name: t.summary() for name, t in timings.items()}, **extra}


def _round_stats(rounds: list[float]) -> dict[str, Any]:
    q1, q3 = (float(q) for q in np.percentile(rounds, [25, 75]))
    return {'ratio_per_round': rounds, 'ratio_per_round_median': float(np.median(rounds)),
            'ratio_per_round_iqr': [q1, q3]}


def _mesh():
    return steps.make_mesh(jax.devices()[:1])


def distill_over_limit(quick: bool, repeats: int) -> dict[str, Any]:
    goal = 1.05
    results = {}
    for name in PAIRS:
        pair = pairs.build(name, quick)
        teacher_vars, mesh = pairs.init_teacher(pair), _mesh()
        timings = harness.time_interleaved({
            'distill_step': steps.distill_runner(pair, mesh, teacher_vars),
            'teacher_forward': steps.teacher_forward(pair, mesh, teacher_vars),
            'student_step': steps.student_runner(pair, mesh)}, repeats=repeats)
        results[name] = _case(timings, 'distill_step', ['teacher_forward', 'student_step'],
                              goal, shape=pair.shape)
    return {'description': 'jaxdistill distill step / (teacher forward + student train step), '
                           'each measured alone on the same shapes',
            'goal_max': goal, 'results': results}


def vs_naive_jax(quick: bool, repeats: int) -> dict[str, Any]:
    goal = 0.8
    results = {}
    for name in PAIRS:
        pair = pairs.build(name, quick)
        teacher_vars = pairs.init_teacher(pair)
        timings = harness.time_interleaved({
            'distill_step': steps.distill_runner(pair, _mesh(), teacher_vars),
            'naive_jax': steps.naive_runner(pair, teacher_vars)}, repeats=repeats)
        results[name] = _case(timings, 'distill_step', 'naive_jax', goal, shape=pair.shape)
    return {'description': 'jaxdistill distill step / a hand-written JAX KD loop (teacher in '
                           'its own jit, fp32, no donation, numpy batches)',
            'goal_max': goal, 'results': results}


def vs_pytorch(quick: bool, repeats: int) -> dict[str, Any]:
    goal = None
    description = ('jaxdistill distill step / the same KD step in PyTorch (CPU, teacher under '
                   'no_grad, same architectures and batch)')
    if importlib.util.find_spec('torch') is None:
        return {'description': description, 'goal_max': goal, 'status': 'skipped',
                'reason': "torch is not installed: pip install -e '.[bench]' (PyTorch's "
                          'CPU build suffices)', 'results': {}}
    import torch

    from benchmarks import torch_peer

    results = {}
    for name in PAIRS:
        pair = pairs.build(name, quick)
        teacher_vars = pairs.init_teacher(pair)
        timings = harness.time_interleaved({
            'distill_step': steps.distill_runner(pair, _mesh(), teacher_vars),
            'pytorch': torch_peer.kd_runner(pair)}, repeats=repeats, warmup=2)
        results[name] = _case(timings, 'distill_step', 'pytorch', goal, shape=pair.shape,
                              torch_threads=torch.get_num_threads(),
                              omp_wait_policy=os.environ.get('OMP_WAIT_POLICY', ''))
    return {'description': description, 'goal_max': goal, 'results': results,
            'torch_version': torch.__version__}


def cached_over_student_only(quick: bool, repeats: int, k: int = 32) -> dict[str, Any]:
    goal = 1.1  # issue #7
    pair = pairs.build('lm', quick)
    teacher_vars, mesh = pairs.init_teacher(pair), _mesh()
    cache = steps.topk_targets(pair, teacher_vars, k)
    timings = harness.time_interleaved({
        'cached_topk_step': steps.cached_runner(pair, mesh, cache),
        'student_only_step': steps.cached_runner(pair, mesh, None)}, repeats=repeats)
    return {'description': f'jaxdistill step with teacher_signal=cached (float16 top-{k}, '
                           'sparse kd + ce) / the same step with ce alone (LM pair)',
            'goal_max': goal,
            'results': {'lm': _case(timings, 'cached_topk_step', 'student_only_step', goal,
                                    shape=pair.shape, k=k)}}


def chunked_kl_memory_ratio(quick: bool, repeats: int) -> dict[str, Any]:
    """benchmarks/chunked_kl.py's own measurement, each variant in a fresh process."""
    del repeats
    from benchmarks import chunked_kl

    goal = None
    size = chunked_kl.SIZES['quick' if quick else 'full']
    measured = {}
    for variant in ('naive-kd-logits', 'chunked-kd-logits', 'naive-kd-hidden',
                    'chunked-kd-hidden'):
        command = [sys.executable, '-m', 'benchmarks.chunked_kl', '--variant', variant]
        env = dict(os.environ, XLA_FLAGS='')
        done = subprocess.run(command + (['--quick'] if quick else []), capture_output=True,
                              text=True, check=True, env=env)
        measured[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    results = {}
    for source in ('logits', 'hidden'):
        naive, chunked = measured[f'naive-kd-{source}'], measured[f'chunked-kd-{source}']
        value = chunked['temp_bytes'] / naive['temp_bytes']
        results[f'kd-{source}'] = {
            'ratio': value, 'meets_goal': None,
            'added_rss_ratio': chunked['added_rss_bytes'] / naive['added_rss_bytes'],
            'time_ratio': chunked['time_s'] / naive['time_s'],
            'naive': naive, 'chunked': chunked}
    shape = {k: size[k] for k in ('batch', 'tokens', 'vocab', 'hidden', 'chunk')}
    return {'description': 'peak working memory (XLA temp bytes of the jitted fwd+bwd) of the '
                           'chunked token KL / the naive one' +
                           (' -- QUICK: small shapes, not V=32768' if quick else ''),
            'goal_max': goal, 'shape': shape, 'results': results}


def scaling_8dev(quick: bool, repeats: int) -> dict[str, Any]:
    """Needs 8 devices at JAX start-up: `benchmarks.run` sets XLA_FLAGS for this worker."""
    goal = None
    if jax.device_count() < 8:
        raise RuntimeError(f'scaling_8dev needs 8 devices, found {jax.device_count()} '
                           '(run with XLA_FLAGS=--xla_force_host_platform_device_count=8)')
    results = {}
    for name in PAIRS:
        pair = pairs.build(name, quick)
        teacher_vars = pairs.init_teacher(pair)
        timings = harness.time_interleaved({
            'eight_devices': steps.distill_runner(pair, steps.make_mesh(jax.devices()[:8]),
                                                  teacher_vars),
            'one_device': steps.distill_runner(pair, steps.make_mesh(jax.devices()[:1]),
                                               teacher_vars)}, repeats=repeats)
        results[name] = _case(timings, 'eight_devices', 'one_device', goal, shape=pair.shape)
    return {'description': 'distill step on 8 forced CPU devices / on 1, same global batch '
                           f'(the 8 devices share the machine\'s {os.cpu_count()} cores: this '
                           'measures the cost of sharding, not a speed-up)',
            'goal_max': goal, 'results': results}


def cpu_mfu(quick: bool, repeats: int) -> dict[str, Any]:
    goal = None
    size = 1024 if quick else 2048
    matmul_flops, _, matmul = harness.measure_matmul_peak(size, repeats=1)
    results = {}
    for name in PAIRS:
        pair = pairs.build(name, quick)
        teacher_vars = pairs.init_teacher(pair)
        distill = steps.distill_runner(pair, _mesh(), teacher_vars)
        xla_flops = distill.compiled_flops()
        analytic = pairs.analytic_flops(pair)
        step_flops = pairs.distill_step_flops(analytic)
        timings = harness.time_interleaved({'distill_step': distill, 'matmul': matmul},
                                           repeats=repeats)
        peak = matmul_flops / timings['matmul'].median_s
        achieved = step_flops / timings['distill_step'].median_s
        results[name] = {
            'ratio': achieved / peak, 'meets_goal': None,
            'mfu_from_xla_flops': xla_flops / timings['distill_step'].median_s / peak,
            'achieved_flops_per_s': achieved, 'peak_flops_per_s': peak,
            'analytic_flops': {**analytic, 'distill_step': step_flops},
            'xla_flops': xla_flops, 'xla_over_analytic': xla_flops / step_flops,
            'matmul_size': size, 'shape': pair.shape,
            'timings': {k: t.summary() for k, t in timings.items()}}
    return {'description': 'achieved FLOP/s of the distill step (analytic: teacher forward + '
                           f'3x student forward) / FLOP/s of a {size}x{size} fp32 jnp.dot',
            'goal_max': goal, 'results': results}


def _teacher_agreement(pair32: pairs.Pair, pair16: pairs.Pair, teacher_vars) -> dict:
    """How far the bf16 teacher's logits are from the fp32 teacher's on this batch."""
    x = pairs.sample_inputs(pair32)
    z32 = pair32.teacher.apply(teacher_vars['params'], teacher_vars['state'], x, train=False)[0]
    z16 = pair16.teacher.apply(teacher_vars['params'], teacher_vars['state'], x, train=False)[0]
    z32, z16 = z32.astype(jnp.float32), z16.astype(jnp.float32)
    logp32, logp16 = jax.nn.log_softmax(z32, -1), jax.nn.log_softmax(z16, -1)
    kl = jnp.sum(jnp.exp(logp32) * (logp32 - logp16), -1)
    return {'top1_agreement': float(jnp.mean(jnp.argmax(z32, -1) == jnp.argmax(z16, -1))),
            'kl_fp32_to_bf16_mean': float(jnp.mean(kl)),
            'max_abs_logit_diff': float(jnp.max(jnp.abs(z32 - z16)))}


def bf16_teacher(quick: bool, repeats: int) -> dict[str, Any]:
    goal = None
    results = {}
    for name in PAIRS:
        pair32, pair16 = pairs.build(name, quick), pairs.build(name, quick, 'bfloat16')
        teacher_vars, mesh = pairs.init_teacher(pair32), _mesh()
        timings = harness.time_interleaved({
            'bf16_teacher': steps.distill_runner(pair16, mesh, teacher_vars),
            'fp32_teacher': steps.distill_runner(pair32, mesh, teacher_vars)}, repeats=repeats)
        results[name] = _case(timings, 'bf16_teacher', 'fp32_teacher', goal, shape=pair32.shape,
                              agreement=_teacher_agreement(pair32, pair16, teacher_vars))
    return {'description': 'distill step with the teacher computing in bf16 (teacher.kwargs.'
                           "dtype='bfloat16') / with an fp32 teacher; agreement of their logits",
            'goal_max': goal, 'results': results}


def _minor_faults() -> int:
    import resource
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def host_memory_probe(quick: bool, repeats: int) -> dict[str, Any]:
    """In this process (its host-memory policy set at its start): each pair's distill step,
    timed, and the page faults one step takes."""
    out = {}
    for name in PAIRS:
        pair = pairs.build(name, quick)
        runner = steps.distill_runner(pair, _mesh(), pairs.init_teacher(pair))
        timing = harness.time_interleaved({'distill_step': runner}, repeats=repeats)
        before = _minor_faults()
        jax.block_until_ready(runner())
        out[name] = {'times_s': timing['distill_step'].times_s,
                     'minor_faults_per_step': _minor_faults() - before}
    return out


def host_memory(quick: bool, repeats: int, processes: int = 3) -> dict[str, Any]:
    """The distill step under ``--host_memory=reuse`` / under the C library's defaults.

    The policy is process-wide, so it cannot be interleaved within one process: this starts
    ``processes`` pairs of fresh processes, alternating the policies (reuse, system, reuse,
    ...) so that drift hits both alike; a "round" is one such pair of processes (its ratio
    of medians), and each policy's times are pooled over its processes.
    """
    goal = None
    runs: dict[str, list[dict]] = {'reuse': [], 'system': []}
    for _ in range(processes):
        for policy in runs:
            args = ['--probe', policy, '--repeats', str(repeats)] + (['--quick'] if quick else [])
            runs[policy].append(harness.run_marked(args, hostmem.environ(policy)))
    results = {}
    for name in PAIRS:
        timings = {policy: harness.Timing(policy, [t for run in runs[policy]
                                                   for t in run[name]['times_s']])
                   for policy in runs}
        rounds = [float(np.median(a[name]['times_s']) / np.median(b[name]['times_s']))
                  for a, b in zip(runs['reuse'], runs['system'])]
        results[name] = {
            'ratio': harness.ratio(timings, 'reuse', 'system'), **_round_stats(rounds),
            'meets_goal': None, 'timings': {k: t.summary() for k, t in timings.items()},
            'minor_faults_per_step': {p: [run[name]['minor_faults_per_step'] for run in runs[p]]
                                      for p in runs}}
    return {'description': 'distill step with --host_memory=reuse (XLA:CPU reuses the last '
                           "step's pages) / with the C library's defaults, one process per "
                           'policy, alternated', 'goal_max': goal, 'results': results}


def text_packing(quick: bool, repeats: int) -> dict[str, Any]:
    """`benchmarks.packing`: a corpus and 4x it packed, each in a fresh process; the ratio is
    the peak-RSS growth of the large one over the small one's (1.0: independent of size)."""
    del repeats
    sizes = (5, 20) if quick else (25, 100)
    results = {}
    for tokenizer in ('byte', 'bpe'):
        runs = {}
        for mb in sizes:
            command = [sys.executable, '-m', 'benchmarks.packing', '--mb', str(mb),
                       '--tokenizer', tokenizer]
            done = subprocess.run(command, capture_output=True, text=True, check=True,
                                  env=dict(os.environ, JAX_PLATFORMS='cpu'))
            runs[f'{mb}MB'] = json.loads(done.stdout.strip().splitlines()[-1])
        small, large = (runs[f'{mb}MB'] for mb in sizes)
        results[tokenizer] = {
            'ratio': large['rss_growth_mb'] / max(small['rss_growth_mb'], 1e-9),
            'meets_goal': None, 'peak_rss_ratio': large['peak_rss_mb'] / small['peak_rss_mb'],
            'mb_per_s': {k: r['mb_per_s'] for k, r in runs.items()}, 'runs': runs}
    return {'description': f'packing a generated .jsonl corpus of {sizes[1]} MB vs {sizes[0]} '
                           'MB (read, tokenize, pack, write ArrayRecord): peak-RSS growth ratio',
            'goal_max': None, 'results': results}


def cached_signal_memory(quick: bool, repeats: int) -> dict[str, Any]:
    """`benchmarks.signal_memory`: teacher_signal='cached' on a corpus and 4x it (pack, cache,
    a few student steps), each in a fresh process; the ratio of their peak RSS (1.0:
    independent of size), and the small one held whole for reference."""
    from benchmarks import signal_memory

    del repeats
    sizes = (2, 8) if quick else (25, 100)
    out = signal_memory.compare(sizes)
    return {'description': out['description'], 'goal_max': None,
            'results': {'cached': {'ratio': out['ratio'], 'meets_goal': None,
                                   'growth_difference_mb': out['growth_difference_mb'],
                                   'runs': out['runs']}}}


def hf_lm(quick: bool, repeats: int) -> dict[str, Any]:
    """`benchmarks.hf_lm`: a Llama-family teacher at V = 128,256 through the HF loader; the
    whole step's peak memory chunked / dense (each in a fresh process), and the chunked
    step's distill_over_limit and tokens/s."""
    goal = 0.3
    measured = {}
    for variant in ('memory-dense', 'memory-chunked', 'time'):
        command = [sys.executable, '-m', 'benchmarks.hf_lm', '--variant', variant,
                   '--repeats', str(repeats)] + (['--quick'] if quick else [])
        done = subprocess.run(command, capture_output=True, text=True, check=True,
                              env=dict(os.environ, XLA_FLAGS='', JAX_PLATFORMS='cpu'))
        measured[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    dense, chunked, timed = (measured[v] for v in ('memory-dense', 'memory-chunked', 'time'))
    ratio = chunked['peak_bytes'] / dense['peak_bytes']
    return {'description': 'Llama-family teacher (V=128256, imported by jaxdistill.hf.'
                           'load_causal_lm) -> half-depth student: whole distill step peak '
                           'memory, distill.token_loss chunked / dense',
            'goal_max': goal, 'results': {'peak_memory': {
                'ratio': ratio, 'meets_goal': bool(ratio <= goal),
                'temp_ratio': chunked['temp_bytes'] / dense['temp_bytes'],
                'dense': dense, 'chunked': chunked},
                'distill_over_limit': {
                    'ratio': timed['distill_over_limit'], 'meets_goal':
                    bool(timed['distill_over_limit'] <= 1.05), 'goal_max': 1.05,
                    'tokens_per_s': timed['tokens_per_s'], 'timings': timed['timings'],
                    'shape': timed['shape']}}}


COMPARISONS: dict[str, Callable[[bool, int], dict[str, Any]]] = {
    'distill_over_limit': distill_over_limit,
    'vs_naive_jax': vs_naive_jax,
    'vs_pytorch': vs_pytorch,
    'cached_over_student_only': cached_over_student_only,
    'chunked_kl_memory_ratio': chunked_kl_memory_ratio,
    'scaling_8dev': scaling_8dev,
    'cpu_mfu': cpu_mfu,
    'bf16_teacher': bf16_teacher,
    'host_memory': host_memory,
    'text_packing': text_packing,
    'cached_signal_memory': cached_signal_memory,
    'hf_lm': hf_lm,
}
