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


def markdown(results: dict[str, Any], curves_png: str | None) -> str:
    rows = []
    for name in ('teacher', 'baseline', 'student'):
        r = results.get(name)
        if r is None:
            continue
        rows.append(f"| {name} | {_fmt(r.get('accuracy'), True)} | "
                    f"{_fmt(r.get('agreement'), True) if name != 'teacher' else '–'} | "
                    f"{_fmt(r.get('kl_to_teacher')) if name != 'teacher' else '–'} | "
                    f"{_fmt(r.get('params'))} | {_fmt(r.get('steps'))} | "
                    f"{_fmt(r.get('steps_per_second'))} |")
    p = results['provenance']
    lines = [
        '# jaxdistill report', '',
        f"Dataset `{p['dataset']}`, test split of {results['test_examples']} examples. "
        'Agreement: the student predicts the teacher\'s top-1 class; KL: mean '
        'KL(teacher ‖ student) at T = 1, in nats.', '',
        '| model | test accuracy | agreement with teacher | KL to teacher | params | steps '
        '| steps/s |',
        '|---|---|---|---|---|---|---|',
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
