"""results.json, report.md and the learning-curve PNG, written atomically to the workdir."""

from __future__ import annotations

import io
import json
from typing import Any

from jaxdistill import signals, tasks
from jaxdistill.runtime import paths


def write_atomic(path: str, text: str | bytes) -> None:
    """Never a half-written file, locally or in a bucket (`paths.write_atomic`)."""
    paths.write_atomic(path, text)


def write_json(path: str, data: Any) -> None:
    write_atomic(path, json.dumps(data, indent=2, sort_keys=True) + '\n')


def _fmt(value: Any, pct: bool = False) -> str:
    if value is None:
        return '–'
    if pct:
        return f'{100 * value:.2f} %'
    if isinstance(value, float):
        return f'{value:.4f}'
    return f'{value:,}' if isinstance(value, int) else str(value)


def _task(results: dict[str, Any]) -> type:
    """The task class that shapes the table (its columns, preamble and summary)."""
    name = results['provenance'].get('task')
    return tasks.get(name) if name in tasks.REGISTRY else tasks.BaseTask


def markdown(results: dict[str, Any], curves_png: str | None) -> str:
    task = _task(results)
    cols = task.columns
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or name in ('provenance',) or 'params' not in r:
            continue
        cells = [_fmt(r.get(key), fmt == 'pct') for _, key, fmt in cols]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    p = results['provenance']
    lines = ['# jaxdistill report', '', task.preamble(results), '',
             '| model | ' + ' | '.join(c[0] for c in cols) + ' |',
             '|---' * (len(cols) + 1) + '|', *rows, '']
    lines += task.summary(results)
    lines += [
        '## Provenance', '',
        f"- teacher parameters SHA-256: `{p['teacher_params_sha256']}`",
        f"- teacher checkpoint: `{p['teacher_checkpoint']}`",
        f"- student parameters SHA-256: `{results['student']['params_sha256']}`",
        f"- objective: `{json.dumps(p['losses'])}`",
    ]
    if p.get('teacher_signal', 'online') != 'online':
        shown = getattr(signals.REGISTRY.get(p['teacher_signal']), 'report_keys', ())
        extra = {k: v for k, v in p.items() if k in shown}
        lines.append(f"- teacher signal: `{p['teacher_signal']}` `{json.dumps(extra)}`")
    lines.append('')
    lines += _samples(results.get('samples'))
    if curves_png:
        lines += ['## Learning curves', '', f'![learning curves]({curves_png})', '']
    return '\n'.join(lines)


def _samples(samples: list[dict[str, str]] | None) -> list[str]:
    """Greedy continuations of held-out prompts, one block per prompt (task='lm')."""
    if not samples:
        return []
    lines = ['## Sampled continuations (greedy, held-out prompts)', '']
    for i, sample in enumerate(samples):
        lines += [f'**Prompt {i + 1}:** `{_one_line(sample["prompt"])}`', '']
        lines += [f'- {name}: `{_one_line(text)}`' for name, text in sample.items()
                  if name != 'prompt']
        lines.append('')
    return lines


def _one_line(text: str) -> str:
    return text.replace('\n', '⏎').replace('`', "'")


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: str) -> bool:
    """Training loss per stage (and test accuracy where evaluated) against steps; False
    (nothing written) without matplotlib (the ``demo`` extra)."""
    try:
        import matplotlib
    except ImportError:
        return False

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    score = ('eval/spearman' if any('eval/spearman' in h for hist in histories.values()
                                    for h in hist) else 'eval/accuracy')
    has_eval = any(score in h for hist in histories.values() for h in hist)
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(10 if has_eval else 5.5, 3.6),
                             squeeze=False)
    axes = axes[0]
    for name, history in histories.items():
        loss = [(h['step'], h['loss']) for h in history if 'loss' in h]
        if loss:
            axes[0].plot(*zip(*loss), label=name)
        acc = [(h['step'], h[score]) for h in history if score in h]
        if acc:
            axes[1].plot(*zip(*acc), marker='o', markersize=3, label=name)
    axes[0].set(xlabel='step', ylabel='training loss (stage objective)', yscale='log')
    if has_eval:
        axes[1].set(xlabel='step', ylabel='Spearman vs teacher' if score == 'eval/spearman'
                    else 'test accuracy')
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    png = io.BytesIO()
    fig.savefig(png, format='png', dpi=110)
    plt.close(fig)
    write_atomic(path, png.getvalue())
    return True
