"""How much the lineage test's ROC AUC on a digits zoo moves with the probe draw.

    python tools/audit_probe_draws.py --domain=digits --root=workdir/zoo_digits --draws=5

Runs every model of a built zoo (tools/audit_zoo.py) once on ``draws`` independent probe
sets of each kind (5,000 mixes at a uniform weight, 2,000 half-and-half mixes; seeds 101 and
102, disjoint from the audit's default seed 0), then scores every (teacher, suspect) pair of
the zoo as ``audit_zoo.py audit`` does (leave-one-out references, the zoo's anchor
teachers) with ``teacher_llr`` and ``teacher_coef`` alone, per access mode. Writes
``ROOT/probe_draws.json``: per access, statistic and probe kind, the AUC, TPR at 1 % FPR,
median p of the positives and share of negatives at p <= 0.05 of every draw.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np

KINDS = {'uniform': (5000, 101), 'half': (2000, 102)}  # probes per draw, seed


def outputs(zoo: list[dict], root: str, draws: int) -> tuple[dict, np.ndarray]:
    """Every model's logits on ``draws`` probe sets of each kind, concatenated; ``kind[N]``
    names the draw of each probe (e.g. 'uniform3')."""
    from jaxdistill.audit import models as am

    first = os.path.dirname([m for m in zoo if m['role'] == 'teacher'][0]['path'])
    config = am.read_config(first)
    parts, kind = [], []
    for name, (size, seed) in KINDS.items():
        p = am.probe_from_run(config, seed=seed, ambiguous=size * draws, max_tokens=0,
                              source=first, mix=name)
        mixes = p.inputs[p.ambiguous]
        parts.append(mixes)
        kind += [f'{name}{k}' for k in range(draws) for _ in range(size)][:len(mixes)]
    inputs = np.concatenate(parts)
    probe = am.Probe('classification', inputs, -np.ones(len(inputs), np.int64),
                     np.ones(len(inputs)), np.ones(len(inputs), bool), first)
    return ({m['path']: am.outputs(am.load(m['path'], m['path']), probe) for m in zoo},
            np.array(kind))


def draw_summary(zoo: list[dict], outs: dict, mask: np.ndarray, access: str,
                 statistic: str) -> dict:
    from jaxdistill.audit import fingerprints as fp
    from jaxdistill.audit import relative, stats

    teachers = [m for m in zoo if m['role'] == 'teacher']
    anchors = np.stack([outs[m['path']][mask] for m in zoo if m['role'] == 'anchor'])
    suspects = [m for m in zoo if m['role'] in ('student', 'baseline')]
    views = []
    for j, m in enumerate(suspects):
        logits = outs[m['path']][mask]
        samples = (fp.sample(logits, 4, np.random.default_rng([0, j]))
                   if access == 'samples' else None)
        views.append(relative.view(access, logits, samples))
    rows = []
    for t in teachers:
        f = np.array([[relative.fingerprints(outs[t['path']][mask], anchors, v)[statistic]]
                      for v in views])
        negatives = [i for i, m in enumerate(suspects) if m['teacher'] != t['teacher']]
        for i, m in enumerate(suspects):
            pool = [i] + [j for j in negatives if j != i]
            r = stats.permutation_test(f[pool[0]], f[pool[1:]])
            rows.append((m['teacher'] == t['teacher'], r['score'], r['p_value']))
    pos = [s for q, s, _ in rows if q]
    neg = [s for q, s, _ in rows if not q]
    return {'auc': stats.roc_auc(pos, neg), 'tpr_at_1pct_fpr': stats.tpr_at_fpr(pos, neg),
            'median_p_positive': float(np.median([p for q, _, p in rows if q])),
            'p_negative_below_0.05': float(np.mean([p <= 0.05 for q, _, p in rows if not q])),
            'positives': len(pos), 'negatives': len(neg)}


def main() -> None:
    import audit_zoo

    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('--domain', choices=('digits', 'digits_wide'), default='digits')
    ap.add_argument('--root', required=True)
    ap.add_argument('--seed_base', type=int, default=0)
    ap.add_argument('--draws', type=int, default=5)
    args = ap.parse_args()
    zoo = audit_zoo.models(args.domain, args.root, args.seed_base)
    if not any(m['role'] == 'anchor' for m in zoo):
        raise SystemExit(f'--root={args.root}: no finished anchor teacher (X*) in the zoo')
    outs, kind = outputs(zoo, args.root, args.draws)
    result = {'root': args.root, 'draws': args.draws, 'kinds': KINDS, 'results': {}}
    for access in ('logits', 'top1', 'samples'):
        for statistic in ('teacher_llr', 'teacher_coef'):
            for name in KINDS:
                per = [draw_summary(zoo, outs, kind == f'{name}{k}', access, statistic)
                       for k in range(args.draws)]
                auc = np.array([p['auc'] for p in per])
                result['results'][f'{access} {statistic} {name}'] = per
                print(f'{access:8s} {statistic:13s} {name:8s} AUC {auc.mean():.3f} ± '
                      f'{auc.std(ddof=1) if len(auc) > 1 else 0:.3f} '
                      f'(min {auc.min():.3f}, max {auc.max():.3f})', flush=True)
    with open(os.path.join(args.root, 'probe_draws.json'), 'w') as f:
        json.dump(result, f, indent=1)


if __name__ == '__main__':
    main()
