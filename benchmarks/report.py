"""``benchmarks/results.json``: its schema, checked before writing, and the markdown table.

The JSON keeps everything (machine, versions, load, every raw time) so a number in the
README can be traced back to the run that produced it; the markdown is the summary the
README's Performance section shows.
"""

from __future__ import annotations

from typing import Any

SCHEMA_VERSION = 1
TOP_KEYS = ('schema_version', 'command', 'quick', 'timing_method', 'machine',
            'load_average_before', 'load_average_after', 'comparisons')
STATUSES = ('ok', 'skipped', 'error')
# What the ratio of each comparison means, for the table (lower is better unless noted).
MEANING = {
    'distill_over_limit': 'distill step / (teacher fwd + student step)',
    'vs_naive_jax': 'distill step / hand-written JAX KD loop',
    'vs_pytorch': 'distill step / PyTorch KD loop',
    'cached_over_student_only': 'cached top-k step / student-only step',
    'chunked_kl_memory_ratio': 'chunked / naive token-KL peak memory',
    'scaling_8dev': '8 forced devices / 1 device',
    'cpu_mfu': 'achieved / peak matmul FLOP/s (higher is better)',
    'bf16_teacher': 'bf16 teacher / fp32 teacher',
    'host_memory': 'reused / system host memory',
    'text_packing': 'packing peak-RSS growth, 4x corpus / 1x corpus',
    'cached_signal_memory': 'cached signal (pack, cache, steps) peak RSS, 4x corpus / 1x',
    'hf_lm': 'V=128k step peak memory, chunked / dense; chunked distill / limit',
}


class SchemaError(ValueError):
    """results.json would not have the documented shape."""


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise SchemaError(message)


def _check_load(value: Any, key: str) -> None:
    _require(isinstance(value, list) and len(value) == 3 and
             all(isinstance(x, (int, float)) for x in value),
             f'{key} must be the three load averages, got {value!r}')


def validate(report: dict[str, Any]) -> None:
    """Raises SchemaError naming the first key that does not fit the schema."""
    for key in TOP_KEYS:
        _require(key in report, f'results.json lacks {key!r}')
    _require(report['schema_version'] == SCHEMA_VERSION, 'unknown schema_version')
    _check_load(report['load_average_before'], 'load_average_before')
    _check_load(report['load_average_after'], 'load_average_after')
    for key in ('cpu_count', 'versions', 'devices'):
        _require(key in report['machine'], f'machine lacks {key!r}')
    for name, record in report['comparisons'].items():
        where = f'comparisons.{name}'
        _require(record.get('status') in STATUSES,
                 f'{where}.status must be one of {STATUSES}, got {record.get("status")!r}')
        if record['status'] != 'ok':
            _require(bool(record.get('reason')), f'{where} is {record["status"]}: no reason')
            continue
        for key in ('description', 'goal_max', 'results', 'wall_s'):
            _require(key in record, f'{where} lacks {key!r}')
        _check_load(record.get('load_average_before'), f'{where}.load_average_before')
        _check_load(record.get('load_average_after'), f'{where}.load_average_after')
        _require(bool(record['results']), f'{where}.results is empty')
        for case, row in record['results'].items():
            _require(isinstance(row.get('ratio'), (int, float)),
                     f'{where}.results.{case}.ratio must be a number')
            _require('meets_goal' in row, f'{where}.results.{case} lacks meets_goal')
            for cand, timing in row.get('timings', {}).items():
                for key in ('median_s', 'q1_s', 'q3_s', 'min_s', 'max_s', 'times_s'):
                    _require(key in timing, f'{where}.results.{case}.timings.{cand} lacks '
                                            f'{key!r}')


def _fmt_goal(record: dict[str, Any], row: dict[str, Any]) -> str:
    goal = row.get('goal_max', record.get('goal_max'))  # a case may carry its own goal
    if goal is None:
        return '–'
    mark = 'met' if row['meets_goal'] else 'not met'
    return f"<= {goal:g} ({mark})"


def _spread(row: dict[str, Any]) -> str:
    """The ratio's spread over the interleaved rounds (IQR), when it was timed in rounds."""
    if 'ratio_per_round_iqr' not in row:
        return ''
    q1, q3 = row['ratio_per_round_iqr']
    return f'{q1:.2f}–{q3:.2f}'


def _times(row: dict[str, Any]) -> str:
    parts = [f"{name} {t['median_s'] * 1e3:.1f}" for name, t in row.get('timings', {}).items()]
    return ', '.join(parts)


def _load_line(report: dict[str, Any], cores: int) -> str:
    """Whether other jobs shared the machine: the load *before* the run says so (the load
    after it counts the benchmark's own threads)."""
    before, after = report['load_average_before'][0], report['load_average_after'][0]
    loads = (f"load average {before:.1f} before the run on {cores} cores ({after:.1f} after "
             "it, which counts the benchmark's own threads)")
    side_by_side = ('the ratios are measured side by side in one process with the candidates '
                    'interleaved round by round')
    if before > 0.5 * cores:
        return (f'**Taken under load**: {loads}; other jobs shared the machine. Absolute times '
                f'are noisy; {side_by_side}, which is what keeps them meaningful.')
    return f'Taken on a quiet machine: {loads}; {side_by_side}.'


def markdown(report: dict[str, Any]) -> str:
    """The summary table, with the machine and its load stated next to the numbers."""
    m = report['machine']
    lines = [
        '# jaxdistill benchmarks',
        '',
        f"`{report['command']}` on {m['cpu_count']} CPU cores ({m.get('cpu_model', '?')}), "
        f"jax {m['versions'].get('jax')}, flax {m['versions'].get('flax')}, "
        f"optax {m['versions'].get('optax')}, torch {m['versions'].get('torch') or 'absent'}.",
        '',
        _load_line(report, m['cpu_count']) + (' `--quick`: small shapes.' if report['quick']
                                               else ''),
        '',
        '| comparison | case | ratio | spread (IQR over rounds) | goal | median ms per step |',
        '|---|---|---|---|---|---|',
    ]
    for name, record in report['comparisons'].items():
        if record['status'] != 'ok':
            lines.append(f"| {name} | – | {record['status']} | – | – | {record['reason']} |")
            continue
        for case, row in record['results'].items():
            lines.append(f"| {name} | {case} | {row['ratio']:.3f} | {_spread(row)} | "
                         f"{_fmt_goal(record, row)} | {_times(row)} |")
    lines += ['', 'What each ratio is:', '']
    lines += [f'- `{name}`: {MEANING.get(name, "")}. {record.get("description", "")}'
              for name, record in report['comparisons'].items()]
    lines += ['', f"Method: {report['timing_method']} Raw times, machine and per-comparison "
              'load: `benchmarks/results.json`.', '']
    return '\n'.join(lines)
