"""The README's cross-tokenizer tuning sweep: byte-level students of one BPE teacher.

Every run is ``configs/lm_cross.py`` (the lm_text 2-layer byte student, 200 steps) against
one trained BPE-512 teacher, same seed, initialisation and data order per seed; only
``distill.losses`` differs. The first run of each seed also trains the labels-only baseline
(``train.baseline=True``), the others skip it (the baseline does not depend on the distilled
student's loss). Resumable: a run whose ``results.json`` exists is read, not rerun; the
table goes to ``OUT/sweep.json`` after every run.

    python tools/crosstok_sweep.py --teacher=/tmp/jd/bpe --out=/tmp/jd/xsweep \
        [--seeds=0,1,2] [--only=byte_kl_w05,...] [--steps=200]

The teacher is a BPE-512 ``lm_text`` teacher, trained as ``configs/lm_cross.py``'s
docstring says. Each run is started as ``nice -n 10 python -m jaxdistill.main`` from the
repository this file is in (copied first to ``OUT/code`` so edits during the sweep do not
leak into it).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _loss(name: str, weight: float, **kw) -> dict:
    return {'name': name, 'weight': weight, **kw}


CE1 = _loss('ce', 1.0)
VARIANTS: dict[str, list[dict]] = {
    # the first recipe: cross term 0.5, ce 0.5 (half the label gradient)
    'aligned_kl_half': [_loss('aligned_kl', 0.5), _loss('ce', 0.5)],
    'uld_half': [_loss('uld', 0.5), _loss('ce', 0.5)],
    # ce kept at 1.0, a smaller cross term
    'aligned_kl_w025': [_loss('aligned_kl', 0.25), CE1],
    'aligned_kl_w1': [_loss('aligned_kl', 1.0), CE1],
    'aligned_kl_span_only': [_loss('aligned_kl', 0.25, token_weight=0.0), CE1],
    'aligned_kl_token_only': [_loss('aligned_kl', 0.25, span_weight=0.0), CE1],
    'aligned_kl_t2': [_loss('aligned_kl', 0.25, temperature=2.0), CE1],
    'uld_w025': [_loss('uld', 0.25), CE1],
    'uld_w01': [_loss('uld', 0.1), CE1],
    # next-byte KL (the teacher projected onto bytes by string prefix)
    'byte_kl_w05': [_loss('byte_kl', 0.5), CE1],
    'byte_kl_w1': [_loss('byte_kl', 1.0), CE1],
    'byte_kl_w2': [_loss('byte_kl', 2.0), CE1],
    'byte_kl_only': [_loss('byte_kl', 1.0)],
    'byte_kl_half': [_loss('byte_kl', 0.5), _loss('ce', 0.5)],
    'byte_kl_t2': [_loss('byte_kl', 1.0, temperature=2.0), CE1],
}


def _run(code: str, teacher: str, workdir: str, losses: list[dict], seed: int, steps: int,
         baseline: bool) -> None:
    cmd = ['nice', '-n', '10', sys.executable, '-m', 'jaxdistill.main',
           '--config=jaxdistill/configs/lm_cross.py', f'--workdir={workdir}',
           f'--config.teacher.checkpoint={teacher}', f'--config.train.steps={steps}',
           f'--config.train.checkpoint_every={steps}', f'--config.train.eval_every={steps}',
           f'--config.seed={seed}', f'--config.train.baseline={baseline}',
           f'--config.distill.losses={tuple(losses)!r}']
    os.makedirs(workdir, exist_ok=True)
    with open(os.path.join(workdir, 'sweep.log'), 'a') as log:
        subprocess.run(cmd, cwd=code, env={**os.environ, 'PYTHONPATH': code}, stdout=log,
                       stderr=subprocess.STDOUT, check=True)


def _scores(results: dict, stage: str) -> dict:
    keys = ('bits_per_byte', 'perplexity', 'accuracy', 'agreement', 'kl_to_teacher',
            'steps_per_second')
    return {k: results[stage][k] for k in keys if k in results[stage]}


def summary(table: dict) -> dict[str, dict]:
    """Per variant: bits per byte by seed, its mean, and the mean difference from the
    labels-only baseline of the same seeds (negative: better than the baseline)."""
    runs = table['runs']
    base = {r['seed']: r['student']['bits_per_byte'] for r in runs.values()
            if r['variant'] == 'baseline'}
    out: dict[str, dict] = {}
    for r in sorted(runs.values(), key=lambda r: (r['variant'], r['seed'])):
        row = out.setdefault(r['variant'], {'losses': r['losses'], 'bits_per_byte': {}})
        row['bits_per_byte'][str(r['seed'])] = r['student']['bits_per_byte']
    for row in out.values():
        bpb = row['bits_per_byte']
        row['mean'] = sum(bpb.values()) / len(bpb)
        diffs = [v - base[int(s)] for s, v in bpb.items() if int(s) in base]
        row['vs_baseline'] = sum(diffs) / len(diffs) if diffs else None
    return out


def markdown(rows: dict[str, dict]) -> str:
    lines = ['| variant | losses | seeds | bits per byte (mean) | vs labels-only |',
             '|---|---|---|---|---|']
    for name, row in sorted(rows.items(), key=lambda kv: kv[1]['mean']):
        losses = ' + '.join(f"{e['weight']:g} {e['name']}" + ''.join(
            f' {k}={v:g}' for k, v in e.items() if k not in ('name', 'weight'))
            for e in row['losses'])
        vs = '–' if row['vs_baseline'] is None or name == 'baseline' \
            else f"{row['vs_baseline']:+.3f}"
        lines.append(f"| {name} | {losses} | {len(row['bits_per_byte'])} | {row['mean']:.3f} "
                     f'| {vs} |')
    return '\n'.join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument('--teacher', required=True)
    p.add_argument('--out', required=True)
    p.add_argument('--seeds', default='0')
    p.add_argument('--only', default='', help='comma-separated variant names (default: all)')
    p.add_argument('--steps', type=int, default=200)
    p.add_argument('--table', action='store_true',
                   help='print the markdown table of OUT/sweep.json (by variant) and exit')
    p.add_argument('--write', default='',
                   help='with --table: also write the summary and every run to this JSON '
                        '(benchmarks/crosstok_bpb.json)')
    a = p.parse_args(argv)
    if a.table:
        table = json.load(open(os.path.join(a.out, 'sweep.json')))
        print(markdown(summary(table)))
        if a.write:
            # the same-tokenizer ceiling and the teacher (measured once, not by this sweep)
            keep = json.load(open(a.write)).get('reference') if os.path.exists(a.write) else None
            with open(a.write, 'w') as f:
                json.dump({'command': 'python tools/crosstok_sweep.py --teacher=TEACHER '
                           '--out=OUT --seeds=S --only=VARIANTS (per run), then --table '
                           f'--write={a.write}', 'steps': table['steps'],
                    'machine': table['machine'], 'summary': summary(table),
                    'runs': table['runs'], 'reference': keep}, f, indent=1, sort_keys=True)
        return
    names = [n for n in a.only.split(',') if n] or list(VARIANTS)
    unknown = sorted(set(names) - set(VARIANTS))
    if unknown:
        p.error(f'unknown variants {unknown}; known: {", ".join(VARIANTS)}')
    code = os.path.join(a.out, 'code')
    if not os.path.isdir(code):
        shutil.copytree(os.path.join(ROOT, 'jaxdistill'), os.path.join(code, 'jaxdistill'))
    table_path = os.path.join(a.out, 'sweep.json')
    for seed in (int(s) for s in a.seeds.split(',')):
        for name in names:
            workdir = os.path.join(a.out, f'seed{seed}', name)
            done = os.path.join(workdir, 'results.json')
            has_base = any(os.path.exists(os.path.join(a.out, f'seed{seed}', n, 'results.json'))
                           and 'baseline' in json.load(open(os.path.join(
                               a.out, f'seed{seed}', n, 'results.json')))
                           for n in VARIANTS)
            if not os.path.exists(done):
                t0 = time.time()
                _run(code, a.teacher, workdir, VARIANTS[name], seed, a.steps, not has_base)
                print(f'seed {seed} {name}: {time.time() - t0:.0f} s', flush=True)
            results = json.load(open(done))
            # read again: sweeps of other seeds may run beside this one
            table = json.load(open(table_path)) if os.path.exists(table_path) else {'runs': {}}
            table['runs'][f'seed{seed}/{name}'] = {'seed': seed, 'variant': name,
                                                   'losses': VARIANTS[name],
                                                   'student': _scores(results, 'student')}
            if 'baseline' in results:
                table['runs'][f'seed{seed}/baseline'] = {
                    'seed': seed, 'variant': 'baseline', 'losses': [CE1],
                    'student': _scores(results, 'baseline')}
            table['steps'] = a.steps
            table['teacher'] = a.teacher
            table['machine'] = {'platform': platform.platform(), 'cpus': os.cpu_count(),
                                'load_average': os.getloadavg()}
            with open(table_path, 'w') as f:
                json.dump(table, f, indent=1, sort_keys=True)


if __name__ == '__main__':
    main()
