"""The README's teacher-signal table from the workdirs of `tools/lm_signal_sweep.sh`.

    python tools/lm_signal_table.py workdir/lm_signals
"""

from __future__ import annotations

import json
import os
import sys

ROWS = (('baseline (labels only)', 'online', 'baseline'), ('online KD', 'online', 'student'),
        ('cached top-32, float16', 'cached', 'student'),
        ('cached top-32, uint8', 'cached_uint8', 'student'),
        ('sequence-level (teacher text)', 'sequence', 'student'),
        ('on-policy GKD, lambda 0.5', 'on_policy', 'student'))


def _signal_cost(p: dict) -> str:
    if 'cache_bytes_per_token' in p:
        return f"{p['cache_bytes_per_token']:.0f} B/token cached"
    if 'generated_tokens' in p:
        return f"{p['generated_tokens']:,} tokens generated"
    if 'on_policy_steps' in p:
        return f"{p['on_policy_steps']} sampled batches"
    return '–'


def table(out: str) -> str:
    lines = ['| student | test perplexity | next-token accuracy | agreement with teacher | '
             'KL to teacher | steps | teacher signal |', '|---|---|---|---|---|---|---|']
    teacher = None
    for label, run, entry in ROWS:
        path = os.path.join(out, run, 'results.json')
        if not os.path.exists(path):
            continue
        with open(path) as f:
            r = json.load(f)
        teacher = teacher or r['teacher']
        s = r[entry]
        cost = '–' if entry == 'baseline' else _signal_cost(r['provenance'])
        lines.append(f"| {label} | {s['perplexity']:.3f} | {100 * s['accuracy']:.2f} % | "
                     f"{100 * s['agreement']:.2f} % | {s['kl_to_teacher']:.4f} | {s['steps']} | "
                     f'{cost} |')
    if teacher:
        lines.append(f"| teacher | {teacher['perplexity']:.3f} | "
                     f"{100 * teacher['accuracy']:.2f} % | – | – | {teacher['steps']} | – |")
    return '\n'.join(lines)


if __name__ == '__main__':
    print(table(sys.argv[1] if len(sys.argv) > 1 else 'workdir/lm_signals'))
