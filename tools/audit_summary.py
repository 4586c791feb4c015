"""Markdown tables of a measured audit zoo (tools/audit_zoo.py ... audit).

    python tools/audit_summary.py workdir/zoo_digits workdir/zoo_lm workdir/zoo_protect
    python tools/audit_summary.py --probes workdir/zoo_digits   # every audit_zoo_*.json

``--probes``: one table per zoo comparing the probe kinds (``audit_zoo.py audit --probes``),
each kind's AUC per access mode as mean ± sd over the probe seeds audited (with the seeds).

Lineage: ROC AUC and true-positive rate at 1 % false positives per access mode, for the
students of every signal against every negative (labels-only baselines and students of
other teachers), pooled over the teachers of the zoo. Watermark: z and p-values of every lm
model. Protections: teacher cost and residual gain, mean over seeds.
"""

from __future__ import annotations

import json
import os
import sys

import numpy as np


def lineage(result: dict) -> list[str]:
    lines = [f'### {result["domain"]}: {result["probe_size"]} probes, seed {result["seed"]}', '',
             '| access | suspects from A | positives / negatives | ROC AUC | TPR at 1 % FPR | '
             'median p (positives) | negatives with p <= 0.05 |', '|---|---|---|---|---|---|---|']
    for access, by_signal in result['summary'].items():
        for signal, s in by_signal.items():
            if not s:
                continue
            lines.append(f'| {access} | {signal} | {s["positives"]} / {s["negatives"]} | '
                         f'{s["auc"]:.3f} | {s["tpr_at_1pct_fpr"]:.2f} | '
                         f'{s["median_p_positive"]:.3f} | {s["p_negative_below_0.05"]:.2f} |')
    refs = sorted({r['references'] for r in result['rows']})
    lines += ['', f'References per test: {refs} (smallest attainable p = 1/(k+1)); anchors: '
              f'{len(result.get("anchors", []))}; scored: {result.get("scored", "consensus")}.',
              '']
    teachers = [(a, s) for a, by in result['summary'].items() for s in [by.get('all', {})]
                if 'median_p_teachers_positive' in s]
    if teachers:
        lines += ['Median p-value of the teacher among its anchors, positives: ' + ', '.join(
            f'{a} {s["median_p_teachers_positive"]:.3f}' for a, s in teachers) + '.', '']
    per = result.get('per_fingerprint', {})
    if per:
        lines += ['| access | fingerprint alone | ROC AUC | TPR at 1 % FPR |', '|---|---|---|---|']
        for access, by in per.items():
            for name, v in by.items():
                lines.append(f'| {access} | {name} | {v["auc"]:.3f} | {v["tpr_at_1pct_fpr"]:.2f} |')
        lines.append('')
    return lines


def watermark(w: dict) -> list[str]:
    lines = [f'### watermark (key {w["key"]}, gamma {w["gamma"]}, delta {w["delta"]})', '',
             '| model | signal | z (generated text) | p (text) | z (next-token distribution) | '
             'p (distribution) |', '|---|---|---|---|---|---|']
    for r in w['rows']:
        name = '/'.join(r['path'].rstrip('/').split('/')[-2:])
        lines.append(f'| {name} | {r["signal"] or "teacher"} | {r["text"]["z"]:.2f} | '
                     f'{r["text"]["p_value"]:.2g} | {r["distribution"]["z"]:.2f} | '
                     f'{r["distribution"]["p_value"]:.2g} |')
    for r in w['rows']:
        if 'perplexity' in r:
            lines.append(f'\nTeacher {r["teacher"]}: test perplexity {r["perplexity"]:.3f} -> '
                         f'{r["perplexity_watermarked"]:.3f} with the watermark; its own '
                         f'watermarked samples: z {r["text_watermarked"]["z"]:.1f}.')
    return lines + [''] + watermark_power(w['rows'])


def rank_p(z: float, null: list[float]) -> float:
    """Empirical p-value of ``z`` among the unwatermarked models' scores under the same key:
    ``(1 + #{null >= z}) / (n + 1)`` (exact when the suspect is exchangeable with them)."""
    return (1 + sum(x >= z for x in null)) / (len(null) + 1)


def watermark_power(rows: list[dict]) -> list[str]:
    """Students of watermarked sequences against every unwatermarked model of the zoo (the
    teachers' own distributions without the bias included): both z-scores, their nominal
    p-values, and each student's rank among the unwatermarked models (the fixed key gives
    every model of the text the same chance excess of green mass, so that rank is the
    exact comparison)."""
    marked = [r for r in rows if r['signal'] == 'sequence_wm']
    null = [r for r in rows if r['signal'] != 'sequence_wm']
    if not marked or not null:
        return []
    lines = ['| watermarked-sequence student | seed | z (text) | p (text) | rank p among '
             f'{len(null)} unwatermarked (text) | z (distribution) | p (distribution) | rank p '
             '(distribution) |', '|---|---|---|---|---|---|---|---|']
    for r in marked:
        name = '/'.join(r['path'].rstrip('/').split('/')[-2:])
        lines.append(
            f'| {name} | {r["seed"]} | {r["text"]["z"]:.2f} | {r["text"]["p_value"]:.2g} | '
            f'{rank_p(r["text"]["z"], [n["text"]["z"] for n in null]):.3f} | '
            f'{r["distribution"]["z"]:.2f} | {r["distribution"]["p_value"]:.2g} | '
            f'{rank_p(r["distribution"]["z"], [n["distribution"]["z"] for n in null]):.3f} |')
    for mode in ('text', 'distribution'):
        z = [n[mode]['z'] for n in null]
        seq = [n[mode]['z'] for n in null if n['signal'] == 'sequence']
        lines.append(f'\nUnwatermarked models ({len(null)}), {mode} z: {min(z):.2f} to '
                     f'{max(z):.2f}' + (f'; of them the unwatermarked sequence students '
                                        f'({len(seq)}): {min(seq):.2f} to {max(seq):.2f}'
                                        if seq else '') + '.')
    return lines + ['']


def protections(result: dict) -> list[str]:
    rows = result['rows']
    lines = ['### protections (digits, 10 % labels)', '',
             '| protection | teacher test accuracy | teacher test NLL | student accuracy | '
             'gain over labels-only baseline | seeds (students) |', '|---|---|---|---|---|---|']
    for name in dict.fromkeys(r['protection'] for r in rows):
        mine = [r for r in rows if r['protection'] == name]

        def stat(key, scale=1.0, unit='', digits=2, mine=mine):
            v = np.array([r[key] for r in mine if key in r]) * scale
            if not len(v):
                return 'not trained'
            return (f'{v.mean():.{digits}f} ± {v.std():.{digits}f}{unit}' if len(v) > 1
                    else f'{v.mean():.{digits}f}{unit}')

        trained = sum('gain' in r for r in mine)
        lines.append(f'| {name} | {stat("teacher_accuracy", 100, " %")} | '
                     f'{stat("teacher_nll", 1, "", 3)} | {stat("student_accuracy", 100, " %")} | '
                     f'{stat("gain", 100, " points")} | {len(mine)} ({trained}) |')
    base = {r['seed']: r['baseline_accuracy'] for r in rows}
    lines += ['', 'Labels-only baseline: ' + ', '.join(f'seed {s}: {100 * a:.2f} %'
                                                     for s, a in sorted(base.items())), '']
    return lines


def compare(root: str) -> list[str]:
    """``ROOT/audit_zoo.json`` and every ``ROOT/audit_zoo_*.json``, grouped by probe kind
    and crafting settings: ROC AUC (mean ± sd over probe seeds), TPR at 1 % FPR, median p
    of the positives and share of negatives at p <= 0.05, per access mode."""
    import glob

    groups: dict[tuple, list[dict]] = {}
    paths = [os.path.join(root, 'audit_zoo.json'), *sorted(glob.glob(os.path.join(
        root, 'audit_zoo_*.json')))]  # not other copies (audit_zoo.old.json)
    for path in filter(os.path.exists, paths):
        with open(path) as f:
            r = json.load(f)
        if 'summary' not in r or len({x['teacher'] for x in r['rows']}) < 2:
            continue
        key = (r.get('probes', 'mixes'), json.dumps(r.get('crafting', {}), sort_keys=True))
        groups.setdefault(key, []).append(r)
    lines = [f'### {root}: probe kinds', '', '| probes (settings) | access | seeds | ROC AUC | '
             'TPR at 1 % FPR | median p (positives) | negatives with p <= 0.05 |',
             '|---|---|---|---|---|---|---|']
    for (probes, crafting), results in groups.items():
        seen = {}
        for r in results:  # one result per seed (the first file of a seed)
            seen.setdefault(r['seed'], r)
        results = list(seen.values())
        for access in results[0]['summary']:
            alls = [r['summary'][access]['all'] for r in results if r['summary'][access]['all']]
            if not alls:
                continue

            def ms(key, digits=3, alls=alls):
                v = np.array([a[key] for a in alls])
                return (f'{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}' if len(v) > 1
                        else f'{v[0]:.{digits}f}')

            lines.append(f'| {probes} {crafting if crafting != "{}" else ""} | {access} | '
                         f'{",".join(str(r["seed"]) for r in results)} | {ms("auc")} | '
                         f'{ms("tpr_at_1pct_fpr", 2)} | {ms("median_p_positive")} | '
                         f'{ms("p_negative_below_0.05", 2)} |')
    return lines + ['']


def main(roots: list[str]) -> None:
    if roots[:1] == ['--probes']:
        for root in roots[1:]:
            print('\n'.join(compare(root)))
        return
    for root in roots:
        path = os.path.join(root, 'audit_zoo.json')
        if not os.path.exists(path):
            print(f'{root}: no audit_zoo.json yet\n')
            continue
        with open(path) as f:
            result = json.load(f)
        if 'summary' in result:
            print('\n'.join(lineage(result)))
        if 'watermark' in result:
            print('\n'.join(watermark(result['watermark'])))
        if 'summary' not in result and 'rows' in result:
            print('\n'.join(protections(result)))


if __name__ == '__main__':
    main(sys.argv[1:])
