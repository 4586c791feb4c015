"""Distillation audit: was this model distilled from that one, and what do protections buy?

* `lineage` (CLI ``python -m jaxdistill.audit``): fidelity fingerprints of a suspect against a
  teacher (`fingerprints`), turned into a score and an exact permutation p-value against
  reference models known not to descend from it (`stats`); white-box (logits) and black-box
  (top-1, samples) access. With anchors (the teacher's recipe at other seeds) the score is
  the teacher-relative `relative.teacher_coef` on ambiguous probes, and `p_value_teachers`
  ranks the teacher among its anchors.
* `watermark`: a keyed green-list watermark in the teacher's sampling
  (``distill.sampling.watermark``, Kirchenbauer et al. 2023) and its detector in a suspect's
  text or next-token distribution (radioactivity, Sander et al. 2024).
* `protect`: output protections a model owner can put on served or cached teacher outputs
  (``distill.protection``: top-k truncation, probability rounding, temperature perturbation,
  antidistillation sampling after Savani et al. 2025).

docs/audit.md explains the statistics and gives the measured figures.
"""

from __future__ import annotations

import os
from typing import Any

import numpy as np

from jaxdistill.audit.lineage import AMBIGUOUS, MIXES, PROBES
from jaxdistill.audit.stats import AuditError

__all__ = ['AuditError', 'audit', 'watermark_test', 'METHOD']

METHOD = ('exact permutation (rank) test: each of the suspect and the k references is scored '
          'by the mean over the scored fingerprints (teacher_coef with anchors, else the '
          'consensus fingerprints) of its z-score against the other k models; p = (number '
          'of the k+1 models scoring >= the suspect) / (k+1), valid (P(p <= a) <= a) when the '
          'suspect is exchangeable with the references, i.e. not distilled from the teacher; '
          'the smallest attainable p is 1/(k+1)')


def _probe(data: str, suspect, teacher, *, seed: int, ambiguous: int, max_tokens: int,
           mix: str = 'uniform'):
    """The probe set as drawn (test split + mixes); `audit` crafts from it (``--probes``)."""
    from jaxdistill.audit import models

    kw = dict(seed=seed, ambiguous=ambiguous, max_tokens=max_tokens, mix=mix)
    if data.endswith('.npz'):
        if not os.path.exists(data):
            raise AuditError(f'--data={data} does not exist: give a .npz or a run directory')
        return models.load_npz_probe(data, **kw)
    if data:
        path = os.path.abspath(data.rstrip('/'))
        for workdir in (path, os.path.dirname(path)):
            if os.path.exists(os.path.join(workdir, 'config.json')):
                return models.probe_from_run(models.read_config(workdir), source=data, **kw)
        raise AuditError(f'--data={data} is neither a .npz nor a jaxdistill run (no config.json '
                         'in it or its parent)')
    for m in (suspect, teacher):
        if m.config is not None:
            return models.probe_from_run(m.config, source=f'{m.spec} (its run\'s test split)',
                                         **kw)
    raise AuditError('no probe set: neither the suspect nor the teacher names its run; give '
                     '--data=WORKDIR (a run of the task) or --data=FILE.npz')


def audit(teacher: str, suspect: str, references: list[str], out: str, *, data: str = '',
          access: tuple[str, ...] = ('logits', 'top1', 'samples'), alpha: float | None = None,
          seed: int = 0, ambiguous: int = AMBIGUOUS, max_tokens: int = 20000,
          anchors: tuple[str, ...] = (), mix: str = 'uniform',
          probes: str = PROBES[0]) -> dict[str, Any]:
    """Runs the lineage test and writes ``out/audit.json``, ``audit.md``, ``audit.png``.

    ``anchors``: independent models of the teacher's own recipe (other seeds); the
    fingerprints then measure how the suspect follows what is particular to this teacher
    among them (recommended); without, against the consensus of the other models. ``probes``:
    the ambiguous mixes as drawn, or crafted from the teacher (and anchors) by
    `jaxdistill.audit.craft` (``boundary``, ``conferrable``).

    Every check (references, access, models, output spaces, probe size) runs before
    anything is written.
    """
    from jaxdistill.audit import craft, fingerprints, lineage, models, report

    references = [r for r in references if r]
    if mix not in MIXES:
        raise AuditError(f'--mix={mix!r} is not one of {list(MIXES)}')
    craft.check_request(probes, len([a for a in anchors if a]))
    stats_check(len(references), alpha)
    bad = [a for a in access if a not in fingerprints.ACCESS]
    if bad or not access:
        raise AuditError(f'--access={",".join(access)}: each must be one of '
                         f'{list(fingerprints.ACCESS)}')
    if not out:
        raise AuditError('--out is empty: give a directory for audit.json')
    t = models.load(teacher, '--teacher')
    s = models.load(suspect, '--suspect')
    refs = [models.load(r, f'--references[{i}]') for i, r in enumerate(references)]
    anchor_models = [models.load(a, f'--anchors[{i}]') for i, a in enumerate(anchors) if a]
    _distinct([t, s, *refs, *anchor_models])
    probe = _probe(data, s, t, seed=seed, ambiguous=craft.drawn(probes, ambiguous),
                   max_tokens=max_tokens, mix=mix)
    # crafted from the teacher and the anchors only: never the suspect or the references
    # (each of sampled_probe and craft_probe checks that its kind fits the task first)
    if probes == 'sampled':
        probe = craft.sampled_probe(t, probe, seed=seed)
    else:
        probe = craft.craft_probe(probes, probe, craft.logit_fn(t),
                                  [craft.logit_fn(a) for a in anchor_models])
    t_out = models.outputs(t, probe)
    s_out = models.outputs(s, probe)
    lineage.check_output_space(t_out, s_out, suspect, '--suspect')
    r_outs = []
    for i, r in enumerate(refs):
        r_outs.append(models.outputs(r, probe))
        lineage.check_output_space(t_out, r_outs[-1], r.spec, f'--references[{i}]')
    a_outs = []
    for i, a in enumerate(anchor_models):
        a_outs.append(models.outputs(a, probe))
        lineage.check_output_space(t_out, a_outs[-1], a.spec, f'--anchors[{i}]')
    anchor = lineage.anchor_consensus(a_outs) if a_outs else None
    tests = {a: lineage.test(a, t_out, s_out, r_outs, probe, seed, anchor, a_outs or None)
             for a in access}
    verdict = tests[access[0]]
    result = {
        'score': verdict['score'], 'p_value': verdict['p_value'], 'method': METHOD,
        'fingerprints': verdict['fingerprints'], 'access': access[0],
        'min_p_value': verdict['min_p_value'], 'alpha': alpha, 'seed': seed, 'tests': tests,
        'teacher': {'spec': teacher, 'params_sha256': t.params_sha256},
        'suspect': {'spec': suspect, 'params_sha256': s.params_sha256},
        'references': [{'spec': r.spec, 'params_sha256': r.params_sha256} for r in refs],
        'anchors': [{'spec': a.spec, 'params_sha256': a.params_sha256} for a in anchor_models],
        'probe': {'source': probe.source, 'size': probe.size,
                  'unit': 'tokens' if probe.task == 'lm' else 'examples',
                  'ambiguous': int(probe.ambiguous.sum()), 'task': probe.task,
                  'mix': mix if probe.ambiguous.any() else None,
                  'probes': probe.crafted or PROBES[0]},
        'out': os.path.abspath(out),
    }
    report.write(out, result)
    return result


def watermark_test(suspect: str, key: int, out: str, *, gamma: float = 0.25, data: str = '',
                   seed: int = 0, max_tokens: int = 20000) -> dict[str, Any]:
    """Tests a language model for the watermark ``key`` (`jaxdistill.audit.watermark`):
    its next-token distributions on the probe text (white-box) and its own samples
    continuing the probe rows' first quarter (black-box); writes ``out/watermark.json``."""
    import jax

    from jaxdistill import report as report_lib
    from jaxdistill.audit import fingerprints, models
    from jaxdistill.audit import watermark as wm
    from jaxdistill.models import sampling

    if not key > 0:
        raise AuditError(f'--watermark_key={key} must be the watermark\'s key (an int > 0)')
    if not out:
        raise AuditError('--out is empty: give a directory for watermark.json')
    s = models.load(suspect, '--suspect')
    probe = _probe(data, s, s, seed=seed, ambiguous=0, max_tokens=max_tokens)
    if probe.task != 'lm':
        raise AuditError(f'--suspect={suspect}: the watermark lives in sampled text; give a '
                         'language model and a text probe set')
    logits = models.outputs(s, probe)
    prev = probe.inputs[probe.token_mask]
    prompt = probe.inputs.shape[1] // 4
    tokens, mask = sampling.generate(
        s.model.module, s.variables['params'], probe.inputs[:, :prompt],
        [prompt] * len(probe.inputs), probe.inputs.shape[1] - prompt, jax.random.key(seed))
    result = {'suspect': {'spec': suspect, 'params_sha256': s.params_sha256}, 'key': key,
              'gamma': gamma, 'seed': seed, 'probe': {'source': probe.source,
                                                      'tokens': probe.size},
              'distribution': wm.detect_distribution(
                  prev, np.exp(fingerprints.log_softmax(logits)), key, gamma),
              'text': wm.detect_text(jax.device_get(tokens), jax.device_get(mask), key, gamma,
                                     logits.shape[-1])}
    os.makedirs(out, exist_ok=True)
    report_lib.write_json(os.path.join(out, 'watermark.json'), result)
    return result


def _distinct(loaded) -> None:
    seen = {}
    for i, m in enumerate(loaded):
        flag = ['--teacher', '--suspect'][i] if i < 2 else 'a reference or anchor'
        if m.params_sha256 in seen:
            raise AuditError(f'{flag}={m.spec} has the same parameters as {seen[m.params_sha256]}: '
                             'every model of the test must be a different one')
        seen[m.params_sha256] = f'{flag}={m.spec}'


def stats_check(k: int, alpha: float | None) -> None:
    from jaxdistill.audit import stats
    stats.check_references(k, alpha)
