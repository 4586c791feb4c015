"""results.json, report.md and the learning-curve PNG, written atomically to the workdir."""

from __future__ import annotations

import io
import json
from typing import Any

from jaxdistill import paths


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


def _columns(results: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(header, key, format) of the table's score columns; language models add perplexity,
    sentence embeddings have similarity scores instead of accuracy."""
    task = results['provenance'].get('task')
    if task == 'embedding':
        return [('Spearman vs teacher', 'spearman', 'num'),
                ('NN@10 agreement', 'nn_agreement_at_10', 'pct'),
                ('sentences/s', 'sentences_per_second', 'num'), ('params', 'params', 'num'),
                ('size ratio', 'size_ratio', 'num'), ('steps', 'steps', 'num')]
    lm = task == 'lm'
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
    lines = ['# jaxdistill report', '', _preamble(results), '',
             '| model | ' + ' | '.join(c[0] for c in cols) + ' |',
             '|---' * (len(cols) + 1) + '|', *rows, '']
    if 'baseline' in results and p.get('task') == 'embedding':
        b, s = results['baseline'], results['student']
        lines += [f"Distillation moved the Spearman correlation with the teacher from "
                  f"{b['spearman']:.4f} (the untrained student: without labels there is no "
                  f"baseline to train) to {s['spearman']:.4f}, and NN@10 agreement from "
                  f"{100 * b['nn_agreement_at_10']:.2f} % to "
                  f"{100 * s['nn_agreement_at_10']:.2f} %.", '']
    elif 'baseline' in results:
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
        f"- objective: `{json.dumps(p['losses'])}`",
    ]
    if p.get('teacher_signal', 'online') != 'online':
        extra = {k: v for k, v in p.items() if k.startswith(('cache_', 'on_policy_'))
                 or k in ('teacher_cache', 'teacher_sequences', 'generated_tokens')}
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


def _preamble(results: dict[str, Any]) -> str:
    p = results['provenance']
    if p.get('task') == 'embedding':
        return (f"Dataset `{p['dataset']}`, {results['test_examples']:,} held-out sentences. "
                "Spearman: rank correlation of the student's and the teacher's cosine "
                'similarities over every pair of sentences; NN@10: the fraction of the '
                "teacher's 10 nearest neighbours of a sentence among the student's 10; "
                'sentences/s: one batch, this machine; size ratio: teacher / student '
                'parameters. The teacher row compares it with itself (sanity: 1).')
    unit = 'target tokens' if p.get('task') == 'lm' else 'examples'
    what = 'token' if p.get('task') == 'lm' else 'class'
    return (f"Dataset `{p['dataset']}`, test split of {results['test_examples']:,} {unit}. "
            f"Agreement: the student predicts the teacher's top-1 {what}; KL: mean "
            'KL(teacher ‖ student) at T = 1, in nats.')


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
