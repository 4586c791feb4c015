"""The lineage test: was the suspect distilled from the teacher?

`pool_fingerprints` turns each model's outputs on the probe set into the fingerprints its
access mode allows, against the consensus of the other models (`jaxdistill.audit.
fingerprints`); `test` compares the suspect's with the references' (`jaxdistill.audit.
stats`: an exact permutation test). `audit` does both
for models named on the command line and returns what ``audit.json`` holds.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from jaxdistill.audit import fingerprints as fp
from jaxdistill.audit import relative, stats
from jaxdistill.audit.stats import AuditError

MIN_ERRORS = 20  # teacher errors needed for error_agreement
SAMPLES = 4  # draws per probe for --access=samples
AMBIGUOUS = 5000  # ambiguous image probes by default (docs/audit.md: chosen on the tuning zoo)
MIXES = ('uniform', 'half')  # how an ambiguous probe weighs its two images; the first: default
# --probes: the mixes (lm: test text) as drawn, or crafted from the teacher
# (jaxdistill.audit.craft; 'sampled': language models); the first is the default
PROBES = ('mixes', 'boundary', 'conferrable', 'divergent', 'sampled')
DARK = ('dark_kl_gain', 'dark_residual_rank', 'dark_residual_loglik')
# With anchors, the score is the teacher-relative fingerprints' (jaxdistill.audit.relative):
# chosen on the tuning zoo (docs/audit.md); the consensus fingerprints are still reported.
SCORED = {'logits': ('teacher_coef',), 'top1': ('teacher_coef',), 'samples': ('teacher_coef',)}


def relative_weights(probe) -> np.ndarray:
    """The probes the teacher-relative fingerprints count: the ambiguous (mixed) ones when
    the probe set has them (where independent teachers disagree and a copy follows its own:
    on clean images every teacher of the task agrees), else every probe."""
    if probe.ambiguous.any():
        return probe.weights * probe.ambiguous
    return probe.weights


def usable(names: tuple[str, ...], teacher_out: np.ndarray, probe) -> tuple[list[str], dict]:
    """The fingerprints this probe set supports; ``skipped`` says why others are not."""
    labelled = (probe.labels >= 0) & ~probe.ambiguous
    errors = int(np.sum(np.argmax(teacher_out[labelled], -1) != probe.labels[labelled]))
    skipped = {}
    if 'error_agreement' in names and errors < MIN_ERRORS:
        skipped['error_agreement'] = (f'the teacher makes {errors} errors on the probe set '
                                      f'(at least {MIN_ERRORS} needed)')
    if teacher_out.shape[-1] < 3:
        for name in DARK:
            skipped.setdefault(name, 'fewer than 3 classes leave no dark knowledge')
    return [n for n in names if n not in skipped], skipped


def fingerprint_vector(names: list[str], teacher_out: np.ndarray, suspect_out: np.ndarray,
                       consensus: np.ndarray, probe, rng: np.random.Generator,
                       access: str = 'logits', anchors: np.ndarray | None = None
                       ) -> dict[str, float]:
    """One model's fingerprints against the ``consensus`` of the others' log-probabilities
    and, given ``anchors [m, N, C]`` (logits of independent teachers of the teacher's
    recipe), the teacher-relative ones; ``suspect_out`` are its logits, of which black-box
    modes use only what the ``access`` allows: the top-1, or ``SAMPLES`` draws per probe."""
    labelled = (probe.labels >= 0) & ~probe.ambiguous
    top1 = np.argmax(suspect_out, -1)
    samples = fp.sample(suspect_out, SAMPLES, rng) if access == 'samples' else None
    w = probe.weights
    out = {}
    for name in names:
        if name == 'error_agreement':
            out[name] = fp.error_agreement(teacher_out[labelled], top1[labelled],
                                           probe.labels[labelled])
        elif name == 'idiosyncratic_agreement':
            out[name] = fp.idiosyncratic_agreement(teacher_out, top1, consensus, w)
        elif name == 'dark_kl_gain':
            out[name] = fp.dark_kl_gain(teacher_out, suspect_out, consensus, w)
        elif name == 'dark_residual_rank':
            out[name] = fp.dark_residual_rank(teacher_out, suspect_out, consensus, w)
        elif name == 'dark_residual_loglik':
            out[name] = fp.dark_residual_loglik(teacher_out, samples, consensus, w)
    if anchors is not None:
        view = relative.view(access, suspect_out, samples)
        out.update(relative.fingerprints(teacher_out, anchors, view, relative_weights(probe)))
    return out


def anchor_consensus(anchor_outs: list[np.ndarray]) -> np.ndarray:
    """The mean log-probabilities of the anchors: independent models of the teacher's own
    kind (its recipe, other seeds), so that ``t - c`` is what is particular to *this*
    teacher rather than to teachers of its architecture and data."""
    return np.mean([fp.log_softmax(o) for o in anchor_outs], axis=0).astype(np.float32)


def pool_fingerprints(names: list[str], teacher_out: np.ndarray, outs: list[np.ndarray],
                      probe, rngs: list[np.random.Generator],
                      anchor: np.ndarray | None = None, access: str = 'logits',
                      anchor_outs: list[np.ndarray] | None = None) -> list[dict[str, float]]:
    """Fingerprints of every model of a pool, against the ``anchor`` consensus when given
    (the same for every model), else each against the consensus of the others; with
    ``anchor_outs`` also the teacher-relative fingerprints."""
    consensus = [anchor] * len(outs) if anchor is not None else fp.consensus(outs)
    anchors = np.stack(anchor_outs) if anchor_outs else None
    return [fingerprint_vector(names, teacher_out, o, c, probe, g, access, anchors)
            for o, c, g in zip(outs, consensus, rngs)]


def scored(access: str, names: list[str], relative_too: bool) -> list[str]:
    """The fingerprints the score averages: the teacher-relative ones when there are
    anchors (`SCORED`), else every consensus fingerprint the probe set supports."""
    return list(SCORED[access]) if relative_too else list(names)


def check_output_space(teacher_out: np.ndarray, out: np.ndarray, spec: str, flag: str) -> None:
    if out.shape[-1] != teacher_out.shape[-1]:
        raise AuditError(
            f'{flag}={spec} has {out.shape[-1]} outputs but the teacher has '
            f'{teacher_out.shape[-1]}: the lineage test compares distributions over one label '
            'space (or vocabulary); audit a model of the teacher\'s task and tokenizer')


def test(access: str, teacher_out: np.ndarray, suspect_out: np.ndarray,
         reference_outs: list[np.ndarray], probe, seed: int,
         anchor: np.ndarray | None = None,
         anchor_outs: list[np.ndarray] | None = None) -> dict[str, Any]:
    """Fingerprints of the suspect and references, the score and the p-values. With
    ``anchor_outs`` (the anchors' logits) the score is the teacher-relative fingerprints'
    (`SCORED`), and ``anchor`` defaults to their consensus."""
    if access not in fp.ACCESS:
        raise AuditError(f'--access={access!r} is not one of {list(fp.ACCESS)}')
    names, skipped = usable(fp.BY_ACCESS[access], teacher_out, probe)
    if not names and not anchor_outs:
        raise AuditError(f'--access={access}: no fingerprint fits this probe set ({skipped}); '
                         'give a larger probe set with --data or use --access=logits')
    if anchor_outs and anchor is None:
        anchor = anchor_consensus(anchor_outs)
    # one generator per model, so a model's draws do not depend on the others
    rngs = [np.random.default_rng([seed, i]) for i in range(len(reference_outs) + 1)]
    suspect, *refs = pool_fingerprints(names, teacher_out, [suspect_out, *reference_outs],
                                       probe, rngs, anchor, access, anchor_outs)
    every = list(suspect)
    table = np.array([[suspect[n] for n in every]] + [[r[n] for n in every] for r in refs])
    defined = dict(zip(every, stats.usable_columns(table)))
    for n in every:
        if not defined[n]:
            skipped[n] = ('undefined for some model (no non-top sample, or no probe where the '
                          'teacher departs from the others)')
    score_names = [n for n in scored(access, names, bool(anchor_outs)) if defined.get(n)]
    if not score_names:
        raise AuditError('no fingerprint is defined for every model (see fingerprints.skipped): '
                         'use a larger probe set (--data) or more access (--access=logits)')
    cols = [every.index(n) for n in score_names]
    result = stats.permutation_test(table[0, cols], table[1:, cols])
    if anchor_outs and not probe.crafted:
        # the second test: the teacher's rank among its anchors for the suspect (not on
        # probes crafted from the teacher: there it is not exchangeable with its anchors)
        samples = (fp.sample(suspect_out, SAMPLES, np.random.default_rng([seed, 0]))
                   if access == 'samples' else None)  # the draws fingerprint_vector made
        scores = relative.teacher_scores(np.stack([teacher_out, *anchor_outs]),
                                         relative.view(access, suspect_out, samples),
                                         relative_weights(probe))
        result['p_value_teachers'] = relative.teacher_p_value(scores)
        result['teacher_scores'] = [float(x) for x in scores]
    return {**result, 'access': access,
            'fingerprints': {'suspect': suspect, 'references': refs,
                             'used': [n for n in every if defined[n]], 'scored': score_names,
                             'skipped': skipped}}
