"""results.json, report.md and the learning-curve PNG, written atomically to the workdir."""

from __future__ import annotations

import json
import os
from typing import Any


def write_atomic(path: str, text: str | bytes) -> None:
    """Write to a temporary file beside ``path`` and rename: never a half-written file."""
    tmp = f'{path}.tmp-{os.getpid()}'
    with open(tmp, 'wb' if isinstance(text, bytes) else 'w') as f:
        f.write(text)
    os.replace(tmp, path)


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


def _columns(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(header, key, format) of the table's score columns; language models add perplexity."""
    lm = results['provenance'].get('task') == 'lm'
    cols = [('test perplexity', 'perplexity', 'num')] if lm else []
    cols += [('next-token accuracy' if lm else 'test accuracy', 'accuracy', 'pct'),
             ('agreement with teacher', 'agreement', 'pct'),
             ('KL to teacher', 'kl_to_teacher', 'num')]
    return cols + [('params', 'params', 'num'), ('steps', 'steps', 'num'),
                   ('steps/s', 'steps_per_second', 'num')]


def markdown(results: dict[str, Any], curves_png: str | None) -> str:
    cols = _columns(results)
    rows = []
    for name, r in results.items():
        if not isinstance(r, dict) or name in ('provenance',) or 'params' not in r:
            continue
        cells = [_fmt(r.get(key), fmt == 'pct') for _, key, fmt in cols]
        rows.append(f"| {name} | {' | '.join(cells)} |")
    p = results['provenance']
    unit = 'target tokens' if p.get('task') == 'lm' else 'examples'
    what = 'token' if p.get('task') == 'lm' else 'class'
    lines = [
        '# jaxdistill report', '',
        f"Dataset `{p['dataset']}`, test split of {results['test_examples']:,} {unit}. "
        f"Agreement: the student predicts the teacher's top-1 {what}; KL: mean "
        'KL(teacher ‖ student) at T = 1, in nats.', '',
        '| model | ' + ' | '.join(c[0] for c in cols) + ' |',
        '|---' * (len(cols) + 1) + '|',
        *rows, '',
    ]
    if 'baseline' in results:
        gain = results['student']['accuracy'] - results['baseline']['accuracy']
        agree = results['student']['agreement'] - results['baseline']['agreement']
        n, labelled = p.get('train_examples'), p.get('labelled_examples')
        same = ('same batches' if n is None or labelled == n else
                f'both may read the labels of the same {labelled:,} of {n:,} train examples; '
                'the baseline trains on those alone, the distilled student on every image')
        lines += [f'Distillation changed test accuracy by {100 * gain:+.2f} points and agreement '
                  f'with the teacher by {100 * agree:+.2f} points over the label-only baseline '
                  f'(same student, same initialisation, {same}).', '']
    lines += [
        '## Provenance', '',
        f"- teacher parameters SHA-256: `{p['teacher_params_sha256']}`",
        f"- teacher checkpoint: `{p['teacher_checkpoint']}`",
        f"- student parameters SHA-256: `{results['student']['params_sha256']}`",
        f"- objective: `{json.dumps(p['losses'])}`", '',
    ]
    if curves_png:
        lines += ['## Learning curves', '', f'![learning curves]({curves_png})', '']
    return '\n'.join(lines)


def plot_curves(histories: dict[str, list[dict[str, Any]]], path: str) -> bool:
    """Training loss per stage (and test accuracy where evaluated) against steps."""
    import matplotlib

    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    has_eval = any('eval/accuracy' in h for hist in histories.values() for h in hist)
    fig, axes = plt.subplots(1, 2 if has_eval else 1, figsize=(10 if has_eval else 5.5, 3.6),
                             squeeze=False)
    axes = axes[0]
    for name, history in histories.items():
        loss = [(h['step'], h['loss']) for h in history if 'loss' in h]
        if loss:
            axes[0].plot(*zip(*loss), label=name)
        acc = [(h['step'], h['eval/accuracy']) for h in history if 'eval/accuracy' in h]
        if acc:
            axes[1].plot(*zip(*acc), marker='o', markersize=3, label=name)
    axes[0].set(xlabel='step', ylabel='training loss (stage objective)', yscale='log')
    if has_eval:
        axes[1].set(xlabel='step', ylabel='test accuracy')
    for ax in axes:
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend()
    fig.tight_layout()
    tmp = f'{path}.tmp-{os.getpid()}.png'
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)
    return True
