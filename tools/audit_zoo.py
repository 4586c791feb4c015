"""Build a zoo of teachers and students, then measure the lineage test on it (issue 21).

    python tools/audit_zoo.py build --domain=digits --root=workdir/zoo_digits
    python tools/audit_zoo.py build --domain=digits_wide --root=workdir/zoo_digits_wide
    python tools/audit_zoo.py audit --domain=digits --root=workdir/zoo_digits
    python tools/audit_summary.py workdir/zoo_digits workdir/zoo_digits_wide

``build`` trains, with `jaxdistill.main` in subprocesses (skipping finished runs, so it
resumes), for every teacher seed ``a``: a run ``A{a}`` that trains teacher A_a, a
labels-only baseline and a student distilled from A_a online; runs ``X{x}`` that train
**anchor teachers** (A's recipe at other seeds, the owner's own; no student of theirs is a
suspect); then runs ``A{a}_{signal}_s{j}`` that reuse A_a (``teacher.checkpoint``) for more
students of every signal (digits: online; lm: cached top-32, sequence-level,
sequence-level from a watermarked teacher, online), each with a labels-only baseline at
its seed where asked. ``digits_wide`` trains 34k-parameter students (and baselines) of the
digits zoo beside it (ROOT without ``_wide``), whose teachers and anchors it shares. Every
teacher is "A" for its own students and an independent "teacher B" for the others'.
Digits runs use the recipe's own length (teacher 1,500, students 3,000 steps); lm_text
runs 64-token rows, batch 16, 250 teacher and 150 student steps. ``--seed_base`` shifts
every seed: the statistic was chosen on ``--seed_base=100`` zoos and is reported on
``--seed_base=0`` ones.

``audit`` treats each teacher as the audited one: suspects are every student and baseline
of the zoo (positives: the students distilled from it), the references of each suspect are
the zoo's negatives other than itself (leave-one-out), the anchors are the zoo's anchor
teachers (a zoo without them: its other teachers, consensus fingerprints only). It writes
``ROOT/audit_zoo.json`` (every score and p-value, ROC AUC and TPR at 1 % FPR per access
mode and signal, each fingerprint's AUC alone) after each teacher, so a partial audit gives
numbers.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np

from jaxdistill.audit.craft import PROBES
from jaxdistill.audit.lineage import AMBIGUOUS, MIXES

PY = sys.executable
DIGITS = dict(config='configs/digits.py', teachers=(0, 1, 2, 3), students=(1, 2),
              anchors=(0, 1, 2, 3), signals=('online',),
              common=['--config.train.eval_every=0', '--config.train.checkpoint_every=3000',
                      '--config.train.log_every=1000', '--config.data.labelled_fraction=1.0'])
LM = dict(config='configs/lm_text.py', teachers=(0, 1), students=(1, 2), anchors=(0, 1),
          signals=('cached', 'sequence', 'sequence_wm', 'online'),
          common=['--config.data.seq_len=64', '--config.data.batch_size=16',
                  '--config.teacher.kwargs.max_len=64', '--config.student.kwargs.max_len=64',
                  '--config.distill.sampling.prompt_len=16', '--config.teacher.steps=250',
                  '--config.train.steps=150', '--config.optimizer.warmup_steps=20',
                  '--config.train.eval_every=0', '--config.train.checkpoint_every=150',
                  '--config.train.log_every=50'])
# Protections: students at 10 % labels (where distillation helps, README) from the digits
# zoo's teachers, one run per protection; 'none' also trains the labels-only baseline.
PROTECT = dict(config='configs/digits.py', teachers=(0, 1), zoo='digits',
               protections={'none': [], 'antidistill': ['name=antidistill', 'lam=2.0'],
                            'topk1': ['name=topk', 'k=1'], 'round1': ['name=round', 'decimals=1'],
                            'temperature': ['name=temperature', 'spread=1.0'],
                            'topk2': ['name=topk', 'k=2']},
               common=['--config.train.steps=800', '--config.train.eval_every=0',
                       '--config.train.checkpoint_every=800', '--config.train.log_every=400'])
# The same zoo with a 34k-parameter student (one conv of 16 channels, dense 32; the teacher has
# 150k, the default student 4.3k): students distilled from digits zoo's teachers (same root
# suffix: zoo_digits -> zoo_digits_wide, zoo_digits_tune -> zoo_digits_tune_wide), which are
# also this zoo's teachers and anchors.
DIGITS_WIDE = dict(config='configs/digits.py', teachers=(0, 1, 2, 3), students=(0, 1, 2),
                   anchors=(0, 1, 2, 3), signals=('online',), zoo='digits',
                   common=DIGITS['common'] + ['--config.student.kwargs.channels=(16,)',
                                              '--config.student.kwargs.dense=32'])
DOMAINS = {'digits': DIGITS, 'lm': LM, 'protect': PROTECT, 'digits_wide': DIGITS_WIDE}
WATERMARK = ['--config.distill.sampling.watermark.key=1234',
             '--config.distill.sampling.watermark.gamma=0.25',
             '--config.distill.sampling.watermark.delta=2.0']


def plan_protect(root: str) -> list[dict]:
    d, runs = PROTECT, []
    zoo = os.path.join(os.path.dirname(root.rstrip('/')), 'zoo_digits')
    for a in d['teachers']:
        for name, keys in d['protections'].items():
            argv = [f'--config={d["config"]}', f'--config.seed={a}',
                    f'--config.teacher.checkpoint={os.path.join(zoo, f"A{a}")}',
                    *(f'--config.distill.protection.{k}' for k in keys)]
            if name != 'none':
                argv.append('--config.train.baseline=False')
            runs.append(dict(name=f'P{a}_{name}', teacher=f'A{a}', signal=name, seed=a,
                             baseline=name == 'none', argv=argv))
    return runs


def teacher_root(root: str) -> str:
    """The digits zoo whose teachers a digits_wide zoo reuses (ROOT without '_wide')."""
    root = root.rstrip('/')
    if not root.endswith('_wide'):
        raise SystemExit(f'--root={root}: a digits_wide zoo is named after its digits zoo + '
                         '"_wide" (e.g. workdir/zoo_digits_wide beside workdir/zoo_digits)')
    return root[:-len('_wide')]


def plan_wide(root: str, seed_base: int) -> list[dict]:
    """Wide students (and their labels-only baselines) of the digits zoo's teachers; the
    teachers and anchors are listed as finished runs of that zoo."""
    d, b, zoo = DIGITS_WIDE, seed_base, teacher_root(root)
    runs = [dict(r, borrowed=True) for r in plan('digits', zoo, seed_base)
            if r['signal'] == 'anchor' or r['name'] == r['teacher']]
    for j in d['students']:
        for a in d['teachers']:
            seed = b + 10 * (a + 1) + 5 + j
            argv = [PY, '-m', 'jaxdistill.main', f'--config={d["config"]}',
                    f'--config.seed={seed}',
                    f'--config.teacher.checkpoint={os.path.join(zoo, f"A{a}")}', *d['common'],
                    f'--workdir={os.path.join(root, f"A{a}_wide_s{j}")}']
            runs.append(dict(name=f'A{a}_wide_s{j}', teacher=f'A{a}', signal='online', seed=seed,
                             baseline=True, argv=argv, workdir=os.path.join(root,
                                                                            f'A{a}_wide_s{j}')))
    return runs


def plan(domain: str, root: str, seed_base: int = 0) -> list[dict]:
    """Every run of the zoo, in build order: ``{name, workdir, argv, teacher, signal, seed}``.
    ``seed_base`` shifts every seed, so that one zoo can tune the statistic and another,
    disjoint in seeds, report it."""
    d = DOMAINS[domain]
    b = seed_base
    if domain == 'digits_wide':
        return plan_wide(root, seed_base)
    runs = [] if domain != 'protect' else plan_protect(root)
    for a in d['teachers'] if domain != 'protect' else ():
        runs.append(dict(name=f'A{a}', teacher=f'A{a}', signal='online', seed=b + a,
                         baseline=True, argv=[f'--config={d["config"]}', f'--config.seed={b + a}']))
    for x in d.get('anchors', ()):
        # anchor teachers: the owner's own recipe at other seeds, with no student in the zoo
        # (the student stage is one step, never audited)
        runs.append(dict(name=f'X{x}', teacher=f'X{x}', signal='anchor', seed=b + 50 + x,
                         baseline=False, argv=[f'--config={d["config"]}',
                                               f'--config.seed={b + 50 + x}'],
                         last=['--config.train.steps=1', '--config.train.baseline=False',
                               '--config.optimizer.warmup_steps=0']))
    for j in d.get('students', ()):
        for signal in d['signals']:
            for a in d['teachers']:
                preset = {'online': '', 'cached': ':cached', 'sequence': ':sequence',
                          'sequence_wm': ':sequence'}[signal]
                seed = b + 10 * (a + 1) + j
                argv = [f'--config={d["config"]}{preset}', f'--config.seed={seed}',
                        f'--config.teacher.checkpoint={os.path.join(root, f"A{a}")}']
                if signal == 'sequence_wm':
                    argv += WATERMARK
                baseline = signal == 'online'
                if not baseline:
                    argv.append('--config.train.baseline=False')
                runs.append(dict(name=f'A{a}_{signal}_s{j}', teacher=f'A{a}', signal=signal,
                                 seed=seed, baseline=baseline, argv=argv))
    for r in runs:
        r['workdir'] = os.path.join(root, r['name'])
        r['argv'] = [PY, '-m', 'jaxdistill.main', *r['argv'], *d['common'],
                     *r.pop('last', ()), f'--workdir={r["workdir"]}']
    return runs


def models(domain: str, root: str, seed_base: int = 0) -> list[dict]:
    """The zoo's finished models: ``{path, teacher, role, signal, seed}`` (role: 'teacher',
    'anchor' (a teacher with no student in the zoo), 'student' (distilled from
    ``teacher``) or 'baseline' (labels only))."""
    out = []
    for r in plan(domain, root, seed_base):
        if not os.path.exists(os.path.join(r['workdir'], 'results.json')):
            continue
        if r['signal'] == 'anchor':
            out.append(dict(path=os.path.join(r['workdir'], 'teacher'), teacher=r['teacher'],
                            role='anchor', signal='', seed=r['seed']))
            continue
        if r['name'] == r['teacher']:
            out.append(dict(path=os.path.join(r['workdir'], 'teacher'), teacher=r['teacher'],
                            role='teacher', signal='', seed=r['seed']))
        if r.get('borrowed'):
            continue  # a teacher of another zoo: its students are that zoo's
        out.append(dict(path=os.path.join(r['workdir'], 'student'), teacher=r['teacher'],
                        role='student', signal=r['signal'], seed=r['seed']))
        if r['baseline']:
            out.append(dict(path=os.path.join(r['workdir'], 'baseline'), teacher='',
                            role='baseline', signal='labels', seed=r['seed']))
    return out


def build(domain: str, root: str, only: tuple[str, ...] = (), seed_base: int = 0) -> None:
    os.makedirs(root, exist_ok=True)
    log = open(os.path.join(root, 'build.log'), 'a')
    env = {**os.environ, 'PYTHONPATH': os.getcwd()}
    for r in plan(domain, root, seed_base):
        if (only and r['name'] not in only) or r.get('borrowed'):
            continue
        if os.path.exists(os.path.join(r['workdir'], 'results.json')):
            continue
        start = time.time()
        print(f'[{time.strftime("%H:%M:%S")}] {r["name"]}', flush=True)
        log.write(f'\n==== {r["name"]}: {" ".join(r["argv"])}\n')
        log.flush()
        rc = subprocess.call(['nice', *r['argv']], stdout=log, stderr=subprocess.STDOUT, env=env)
        print(f'    rc {rc} in {time.time() - start:.0f} s (load {os.getloadavg()[0]:.1f})',
              flush=True)


def _cache(root: str, probe) -> str:
    """ROOT/outputs/DIGEST: what is computed once per probe set (a digest of its inputs)."""
    import hashlib

    digest = hashlib.sha256(np.ascontiguousarray(probe.inputs).tobytes()).hexdigest()[:12]
    cache = os.path.join(root, 'outputs', digest)
    os.makedirs(cache, exist_ok=True)
    return cache


def _name(root: str, path: str) -> str:
    return os.path.relpath(path, root).replace('/', '__')


def _outputs(root: str, zoo: list[dict], probe) -> dict[str, np.ndarray]:
    """Every model's logits on the probe set, computed once (cached in ROOT/outputs/, per
    probe set)."""
    return _outputs_many(root, zoo, [probe])[0]


def _outputs_many(root: str, zoo: list[dict], probes: list) -> list[dict[str, np.ndarray]]:
    """`_outputs` for several probe sets, each model loaded once."""
    from jaxdistill.audit import models as audit_models

    caches = [_cache(root, p) for p in probes]
    outs = [{} for _ in probes]
    for m in zoo:
        files = [os.path.join(c, f'{_name(root, m["path"])}.npy') for c in caches]
        loaded = None
        for probe, f, out in zip(probes, files, outs):
            if not os.path.exists(f):
                loaded = loaded or audit_models.load(m['path'], m['path'])
                np.save(f, audit_models.outputs(loaded, probe))
            out[m['path']] = np.load(f)
    return outs


def _crafted(zoo: list[dict], probe, probes: str, crafting: dict) -> dict[str, object]:
    """Each teacher's own probe set: ``probe``'s mixes crafted from that teacher (and, for
    conferrable probes, the zoo's anchor teachers; never a suspect), keyed by its path."""
    from jaxdistill.audit import craft
    from jaxdistill.audit import models as audit_models

    if probes == 'sampled':
        return {m['path']: craft.sampled_probe(audit_models.load(m['path'], m['path']), probe,
                                               **crafting)
                for m in zoo if m['role'] == 'teacher'}
    fns = {m['path']: craft.logit_fn(audit_models.load(m['path'], m['path']))
           for m in zoo if m['role'] in ('teacher', 'anchor')}
    anchors = [fns[m['path']] for m in zoo if m['role'] == 'anchor']
    return {m['path']: craft.craft_probe(probes, probe, fns[m['path']], anchors, **crafting)
            for m in zoo if m['role'] == 'teacher'}


def _summary(rows: list[dict], access: str, signal: str | None = None) -> dict:
    from jaxdistill.audit import stats

    mine = [r for r in rows if r['access'] == access]
    pos = [r['score'] for r in mine if r['positive'] and (signal is None or r['signal'] == signal)]
    neg = [r['score'] for r in mine if not r['positive']]
    if not pos or not neg:
        return {}
    p_pos = [r['p_value'] for r in mine if r['positive'] and (signal is None or
                                                            r['signal'] == signal)]
    pt = [r.get('p_value_teachers') for r in mine if r['positive'] and (signal is None or
                                                                       r['signal'] == signal)]
    extra = {} if None in pt else {'median_p_teachers_positive': float(np.median(pt))}
    return {**extra, 'auc': stats.roc_auc(pos, neg),
            'tpr_at_1pct_fpr': stats.tpr_at_fpr(pos, neg, 0.01),
            'positives': len(pos), 'negatives': len(neg),
            'median_p_positive': float(np.median(p_pos)),
            'p_negative_below_0.05': float(np.mean([r['p_value'] <= 0.05 for r in mine
                                                    if not r['positive']]))}


def out_file(root: str, probes: str = PROBES[0], tag: str = '') -> str:
    """ROOT/audit_zoo.json for the default probes, else ROOT/audit_zoo_PROBES[_TAG].json."""
    name = 'audit_zoo' if probes == PROBES[0] and not tag else f'audit_zoo_{probes}'
    return os.path.join(root, f'{name}{"_" + tag if tag else ""}.json')


def audit(domain: str, root: str, seed: int = 0, seed_base: int = 0,
          ambiguous: int = AMBIGUOUS, watermark: bool = True, mix: str = 'uniform',
          probes: str = PROBES[0], crafting: dict | None = None, tag: str = '') -> dict:
    """The lineage test with every teacher of the zoo as the audited one (see the module
    docstring); writes `out_file` after each teacher. ``probes`` other than mixes are
    crafted per teacher (`jaxdistill.audit.craft`; ``crafting``: its keyword arguments)."""
    from jaxdistill.audit import craft, lineage, stats
    from jaxdistill.audit import fingerprints as fp
    from jaxdistill.audit import models as audit_models

    zoo = models(domain, root, seed_base)
    teachers = [m for m in zoo if m['role'] == 'teacher']
    anchor_models = [m for m in zoo if m['role'] == 'anchor']
    suspects = [m for m in zoo if m['role'] in ('student', 'baseline')]
    first = os.path.dirname(teachers[0]['path'])
    base = audit_models.probe_from_run(audit_models.read_config(first), seed=seed,
                                       ambiguous=craft.drawn(probes, ambiguous, (
                                           crafting or {}).get('pool', craft.POOL)),
                                       max_tokens=10000, source=first,
                                       mix=mix)
    craft.check(probes, task=base.task, anchors=len(anchor_models), ambiguous=ambiguous)
    if probes == PROBES[0]:
        per_teacher = {t['path']: base for t in teachers}
    else:
        extra = {'seed': seed} if probes == 'sampled' else {}
        per_teacher = _crafted(zoo, base, probes, {**extra, **(crafting or {})})
    sets = list(per_teacher.values())
    every_outs = dict(zip(per_teacher, _outputs_many(root, zoo, sets)))
    rows, result = [], {'domain': domain, 'root': root, 'seed': seed, 'seed_base': seed_base,
                        'mix': mix, 'ambiguous': ambiguous, 'probes': probes,
                        'crafting': {**craft.defaults(probes), **(crafting or {})},
                        'probe_size': base.size, 'load_average': os.getloadavg()[0],
                        'anchors': [a['path'] for a in anchor_models],
                        'scored': {a: list(lineage.SCORED[a]) for a in fp.ACCESS},
                        'method': 'leave-one-out: each suspect against every other negative '
                                  'of the zoo as references'}
    for t in teachers:
        outs, probe = every_outs[t['path']], per_teacher[t['path']]
        t_out = outs[t['path']]
        negatives = [i for i, m in enumerate(suspects) if m['teacher'] != t['teacher']]
        # anchors: the zoo's anchor teachers (no student of theirs is a suspect); a zoo
        # without them falls back to its other teachers (consensus fingerprints only)
        a_outs = [outs[a['path']] for a in anchor_models]
        others = a_outs or [outs[a['path']] for a in teachers if a is not t]
        anchor = lineage.anchor_consensus(others) if others else None
        for access in fp.ACCESS:
            names, skipped = lineage.usable(fp.BY_ACCESS[access], t_out, probe)
            # every model's fingerprints once (each model has its own generator)
            vectors = lineage.pool_fingerprints(
                names, t_out, [outs[m['path']] for m in suspects], probe,
                [np.random.default_rng([seed, j]) for j in range(len(suspects))], anchor,
                access, a_outs or None)
            every = list(vectors[0])
            score_names = lineage.scored(access, names, bool(a_outs))
            cols = [every.index(n) for n in score_names]
            full = np.array([[v[n] for n in every] for v in vectors])
            p_teachers = [_teachers_p(access, t_out, a_outs, outs[m['path']], probe, seed, j)
                          for j, m in enumerate(suspects)] if a_outs and not probe.crafted \
                else None  # crafted from the teacher: it is not exchangeable with its anchors
            for i, m in enumerate(suspects):
                pool = [i] + [j for j in negatives if j != i]
                if len(pool) - 1 < stats.MIN_REFERENCES:
                    continue  # too few references yet (a partial zoo)
                table = full[pool][:, cols]
                r = stats.permutation_test(table[0], table[1:])
                rows.append({'teacher': t['teacher'], 'suspect': m['path'], 'access': access,
                             'signal': m['signal'], 'role': m['role'],
                             'positive': m['teacher'] == t['teacher'], 'score': r['score'],
                             'p_value': r['p_value'], 'p_value_parametric':
                             r['p_value_parametric'], 'references': len(pool) - 1,
                             'p_value_teachers': p_teachers[i] if p_teachers else None,
                             'fingerprints': dict(zip(every, full[i].tolist())),
                             'scored': score_names, 'skipped': skipped})
        result['rows'] = rows
        result['summary'] = {
            access: {'all': _summary(rows, access),
                     **{s: _summary(rows, access, s) for s in DOMAINS[domain]['signals']}}
            for access in fp.ACCESS}
        result['per_fingerprint'] = _per_fingerprint(rows)
        with open(out_file(root, probes, tag), 'w') as f:
            json.dump(result, f, indent=1)
        print(f'{t["teacher"]}: ' + json.dumps({a: v['all'] for a, v in
                                                 result['summary'].items()}), flush=True)
    if domain == 'lm' and watermark and probes == PROBES[0]:  # on the test text
        result['watermark'] = audit_watermark(root, zoo, probe, outs, seed)
        with open(os.path.join(root, 'audit_zoo.json'), 'w') as f:
            json.dump(result, f, indent=1)
    return result


def _teachers_p(access, t_out, a_outs, s_out, probe, seed, j) -> float:
    """The teacher's rank among its anchors for this suspect (`relative.teacher_p_value`),
    on the same black-box draws as its fingerprints."""
    from jaxdistill.audit import fingerprints as fp
    from jaxdistill.audit import lineage, relative

    samples = (fp.sample(s_out, lineage.SAMPLES, np.random.default_rng([seed, j]))
               if access == 'samples' else None)
    return relative.teacher_p_value(relative.teacher_scores(
        np.stack([t_out, *a_outs]), relative.view(access, s_out, samples),
        lineage.relative_weights(probe)))


def _per_fingerprint(rows: list[dict]) -> dict:
    """ROC AUC of each fingerprint alone (raw values, pooled over teachers), per access."""
    from jaxdistill.audit import stats

    out = {}
    for access in dict.fromkeys(r['access'] for r in rows):
        mine = [r for r in rows if r['access'] == access]
        for name in mine[0]['fingerprints']:
            pos = [r['fingerprints'][name] for r in mine if r['positive']]
            neg = [r['fingerprints'][name] for r in mine if not r['positive']]
            if pos and neg and np.all(np.isfinite(pos + neg)):
                out.setdefault(access, {})[name] = {
                    'auc': stats.roc_auc(pos, neg), 'tpr_at_1pct_fpr': stats.tpr_at_fpr(pos, neg)}
    return out


def _lm_generations(loaded, probe, seed: int, watermark=None):
    """Sampled continuations (T = 1) of the probe rows' first quarter, to the row length."""
    import jax

    from jaxdistill.models import sampling

    prompt_len = probe.inputs.shape[1] // 4
    prompts = probe.inputs[:, :prompt_len]
    lengths = np.full(len(prompts), prompt_len, np.int32)
    tokens, mask = sampling.generate(loaded.model.module, loaded.variables['params'], prompts,
                                     lengths, probe.inputs.shape[1] - prompt_len,
                                     jax.random.key(seed), watermark=watermark)
    return np.asarray(tokens), np.asarray(mask)


def audit_watermark(root: str, zoo: list[dict], probe, outs: dict, seed: int = 0) -> dict:
    """Watermark radioactivity on every lm model, and the watermark's cost to each teacher;
    each model's row is cached in ROOT/outputs/DIGEST/NAME.watermark-SEED.json (the
    generations are the slow part), so a grown zoo is audited for its new models only."""

    from jaxdistill.audit import fingerprints as fp
    from jaxdistill.audit import models as audit_models
    from jaxdistill.audit import watermark as wm

    key, gamma, delta = (float(a.split('=')[1]) for a in WATERMARK)
    key = int(key)
    prev = probe.inputs[probe.token_mask]
    rows = []
    cache = _cache(root, probe)
    for m in zoo:
        done = os.path.join(cache, f'{_name(root, m["path"])}.watermark-{seed}.json')
        if os.path.exists(done):
            with open(done) as f:
                rows.append(json.load(f))
            continue
        logits = outs[m['path']]
        loaded = audit_models.load(m['path'], m['path'])
        tokens, mask = _lm_generations(loaded, probe, seed)
        row = {'path': m['path'], 'role': m['role'], 'signal': m['signal'],
               'teacher': m['teacher'], 'seed': m['seed'],
               'distribution': wm.detect_distribution(prev, np.exp(fp.log_softmax(logits)),
                                                      key, gamma),
               'text': wm.detect_text(tokens, mask, key, gamma, logits.shape[-1])}
        if m['role'] == 'teacher':  # its cost: the watermarked distribution on real text
            biased = fp.log_softmax(logits + delta * wm.green(prev, logits.shape[-1], key, gamma))
            labels = probe.labels
            clean = fp.log_softmax(logits)
            row['perplexity'] = float(np.exp(-clean[np.arange(len(labels)), labels].mean()))
            row['perplexity_watermarked'] = float(
                np.exp(-biased[np.arange(len(labels)), labels].mean()))
            marked, mmask = _lm_generations(loaded, probe, seed, (key, gamma, delta))
            row['text_watermarked'] = wm.detect_text(marked, mmask, key, gamma,
                                                     logits.shape[-1])
        rows.append(row)
        with open(done, 'w') as f:
            json.dump(row, f)
        print(f"  watermark {m['path']}: z text {row['text']['z']:.2f} "
              f"distribution {row['distribution']['z']:.2f}", flush=True)
    return {'key': key, 'gamma': gamma, 'delta': delta, 'rows': rows}


def audit_protect(root: str, seed: int = 0) -> dict:
    """The protections table: each protection's cost to the teacher (its served outputs'
    test accuracy and NLL) and, where its student is trained, the student's gain over the
    labels-only baseline of the same seed."""
    import jax
    import jax.numpy as jnp

    from jaxdistill import tasks
    from jaxdistill.audit import fingerprints as fp
    from jaxdistill.audit import models as audit_models
    from jaxdistill.audit import protect
    from jaxdistill.models import modules
    from jaxdistill.models.adapter import Model

    rows = []
    for r in plan('protect', root):
        base = os.path.join(root, f'P{r["seed"]}_none')
        if not os.path.exists(os.path.join(base, 'results.json')):
            continue
        with open(os.path.join(base, 'results.json')) as f:
            none = json.load(f)
        config = audit_models.read_config(base)
        for key in PROTECT['protections'][r['signal']]:
            k, v = key.split('=')
            config.distill.protection[k] = type(config.distill.protection[k])(v)
        task = tasks.build(config)
        teacher = audit_models.load(none['provenance']['teacher_checkpoint'], 'teacher')
        probe = audit_models.probe_from_run(config, seed=seed, ambiguous=0, max_tokens=0,
                                            source=base)
        student = Model(modules.resolve(config.student.module, config.student.kwargs,
                                        key='student.module'), '', 'student')
        served = protect.wrap(teacher.model, config, task, student)
        serve = jax.jit(lambda v, x, s=served: s.apply(v['params'], v['state'], x,
                                                       train=False)[0])
        z = np.asarray(serve(teacher.variables, jnp.asarray(probe.inputs)))
        logp = fp.log_softmax(z)
        labels = probe.labels
        row = {'protection': r['signal'], 'seed': r['seed'],
               'teacher_accuracy': float(np.mean(np.argmax(z, -1) == labels)),
               'teacher_nll': float(-logp[np.arange(len(labels)), labels].mean()),
               'baseline_accuracy': none['baseline']['accuracy']}
        results = os.path.join(r['workdir'], 'results.json')
        if os.path.exists(results):
            with open(results) as f:
                res = json.load(f)
            row.update(student_accuracy=res['student']['accuracy'],
                       student_agreement=res['student']['agreement'],
                       gain=res['student']['accuracy'] - none['baseline']['accuracy'])
        rows.append(row)
        print(f"  {r['name']}: {row}", flush=True)
    out = {'rows': rows, 'load_average': os.getloadavg()[0]}
    with open(os.path.join(root, 'audit_zoo.json'), 'w') as f:
        json.dump(out, f, indent=1)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    ap.add_argument('phase', choices=('build', 'audit'))
    ap.add_argument('--domain', choices=tuple(DOMAINS), required=True)
    ap.add_argument('--ambiguous', type=int, default=AMBIGUOUS, help='audit: mixed image probes')
    ap.add_argument('--mix', choices=MIXES, default=MIXES[0],
                    help='audit: weight of the first image of a mixed probe')
    ap.add_argument('--probes', choices=PROBES, default=PROBES[0],
                    help='audit: the mixes as drawn, or crafted per teacher from them '
                         '(jaxdistill.audit.craft); crafted: writes ROOT/audit_zoo_PROBES.json')
    ap.add_argument('--craft', default='', help='audit: crafting settings, e.g. radius=0.5,steps=5 '
                    '(boundary) or eps=0.05 (conferrable); default: the module\'s')
    ap.add_argument('--tag', default='', help='audit: suffix of the output file')
    ap.add_argument('--skip_watermark', action='store_true',
                    help='audit, lm: the lineage test only (no generations for the watermark)')
    ap.add_argument('--root', required=True)
    ap.add_argument('--seed', type=int, default=0, help='probe / black-box sampling seed')
    ap.add_argument('--only', default='', help='build: these runs only (comma-separated)')
    ap.add_argument('--seed_base', type=int, default=0,
                    help='added to every training seed (a disjoint zoo to tune the statistic on)')
    args = ap.parse_args()
    if args.phase == 'build':
        build(args.domain, args.root, tuple(n for n in args.only.split(',') if n),
              seed_base=args.seed_base)
    elif args.domain == 'protect':
        audit_protect(args.root, seed=args.seed)
    else:
        audit(args.domain, args.root, seed=args.seed, seed_base=args.seed_base,
              ambiguous=args.ambiguous, watermark=not args.skip_watermark, mix=args.mix,
              probes=args.probes, crafting=_settings(args.craft), tag=args.tag)


def _settings(text: str) -> dict:
    """``radius=0.5,steps=5`` -> ``{'radius': 0.5, 'steps': 5}``."""
    out = {}
    for item in filter(None, text.split(',')):
        k, v = item.split('=')
        out[k] = int(v) if k in ('steps', 'pool') else float(v)
    return out


if __name__ == '__main__':
    main()
