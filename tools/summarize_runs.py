"""Mean ± std over several jaxdistill runs (e.g. seeds), as the README's markdown table.

    python tools/summarize_runs.py workdir/digits_s0 workdir/digits_s1 workdir/digits_s2
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

ROWS = (('teacher', ('accuracy',)),
        ('baseline', ('accuracy', 'agreement', 'kl_to_teacher')),
        ('student', ('accuracy', 'agreement', 'kl_to_teacher')))


def table(results: list[dict]) -> str:
    def cell(name, key):
        values = np.array([r[name][key] for r in results if key in r.get(name, {})], float)
        if not len(values):
            return '–'
        scale, unit = (100, ' %') if key != 'kl_to_teacher' else (1, '')
        digits = 2 if key != 'kl_to_teacher' else 4
        return (f'{scale * values.mean():.{digits}f} ± {scale * values.std(ddof=1):.{digits}f}'
                f'{unit}' if len(values) > 1 else f'{scale * values[0]:.{digits}f}{unit}')

    lines = [f'| model ({len(results)} seeds, mean ± std) | test accuracy | agreement with '
             'teacher | KL to teacher | params |', '|---|---|---|---|---|']
    for name, _ in ROWS:
        lines.append(f'| {name} | {cell(name, "accuracy")} | {cell(name, "agreement")} | '
                     f'{cell(name, "kl_to_teacher")} | {results[0][name]["params"]:,} |')
    wins = sum(r['student']['accuracy'] > r['baseline']['accuracy'] for r in results)
    agree = sum(r['student']['agreement'] > r['baseline']['agreement'] for r in results)
    lines.append('')
    lines.append(f'The distilled student beat the baseline in accuracy in {wins} of {len(results)} '
                 f'runs and in agreement in {agree} of {len(results)}.')
    return '\n'.join(lines)


def main(paths: list[str]) -> None:
    results = [json.loads((pathlib.Path(p) / 'results.json').read_text()) for p in paths]
    print(table(results))


if __name__ == '__main__':
    main(sys.argv[1:])
