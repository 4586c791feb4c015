"""From fingerprints to a score and a p-value against reference models; ROC summaries.

**The null hypothesis** is that the suspect is one more model like the references: models
trained for the same task *without* the teacher's outputs (independently trained models,
students of other teachers). Under it the suspect and the k references are exchangeable:
nothing distinguishes their joint distribution under a relabelling.

**The score** of a model is the mean, over fingerprints, of its z-score against the
*other* models of the pool, ``(f - mean_others) / std_others`` (every fingerprint is
oriented so that larger is closer to the teacher). For the suspect the others are exactly
the references, so its score says how many reference standard deviations it sits above
them, averaged over fingerprints.

**The p-value is an exact permutation (rank) test**: ``p = #{models m in the pool of
k + 1 with score_m >= score_suspect} / (k + 1)``. Every model's score is the same function
of its own fingerprints and the multiset of the others', so under exchangeability the
suspect's rank among the k + 1 scores is uniform, and ``P(p <= a) <= a`` for every a,
whatever the distribution of the fingerprints (ties count against the suspect, which
keeps it conservative). The price of that guarantee: with k references the smallest
attainable p-value is ``1 / (k + 1)`` (19 references for 0.05, 99 for 0.01).

A bootstrap over probe examples would *not* be valid here: it measures the noise of the
probe set, not how much independently trained models differ from each other, which is
what the null is about. ``p_value_parametric`` (a normal fit to the references' own
scores) reaches below ``1 / (k + 1)`` but assumes normality; it is reported beside the
exact one, never instead of it.
"""

from __future__ import annotations

import math

import numpy as np

from jaxdistill.errors import ConfigError

MIN_REFERENCES = 2  # a standard deviation over the others needs two of them


class AuditError(ConfigError):
    """Bad input to the lineage test: the message names the flag and the fix."""


def min_p_value(k: int) -> float:
    """The smallest p-value the permutation test can give with ``k`` references."""
    return 1.0 / (k + 1)


def check_references(k: int, alpha: float | None = None) -> None:
    if k < MIN_REFERENCES:
        raise AuditError(f'--references: {k} given, the test needs at least {MIN_REFERENCES} '
                         'models known not to descend from the teacher (train them with '
                         'jaxdistill on the same task, e.g. the labels-only baseline of a run)')
    if alpha is not None and alpha > 0 and min_p_value(k) > alpha:
        need = math.ceil(1.0 / alpha - 1 - 1e-9)
        raise AuditError(f'--alpha={alpha}: with {k} references the smallest attainable p-value '
                         f'is 1/(k+1) = {min_p_value(k):.4g}; give at least {need} references '
                         f'or raise --alpha to >= {min_p_value(k):.4g}')


def pool_scores(table: np.ndarray) -> np.ndarray:
    """``table [models, fingerprints]`` -> each model's mean z-score against the others
    (leave-one-out mean and standard deviation per fingerprint; nan fingerprints of a
    column are ignored)."""
    table = np.asarray(table, np.float64)
    n = table.shape[0]
    scores = np.empty(n)
    for m in range(n):
        others = np.delete(table, m, axis=0)
        mu = others.mean(0)
        sd = others.std(0, ddof=1)
        z = (table[m] - mu) / np.maximum(sd, 1e-12 * np.maximum(1.0, np.abs(mu)))
        scores[m] = np.mean(z)
    return scores


def usable_columns(table: np.ndarray) -> np.ndarray:
    """Fingerprints defined (finite) for every model of the pool."""
    return np.all(np.isfinite(table), axis=0)


def permutation_test(suspect: np.ndarray, references: np.ndarray) -> dict[str, float]:
    """``suspect [F]`` and ``references [k, F]`` fingerprints -> score and p-values."""
    table = np.vstack([suspect[None], references])
    keep = usable_columns(table)
    if not keep.any():
        raise AuditError('no fingerprint is defined for every model (see fingerprints.skipped): '
                         'use a larger probe set (--data) or more access (--access=logits)')
    scores = pool_scores(table[:, keep])
    k = len(references)
    p = float(np.sum(scores >= scores[0] - 1e-12) / (k + 1))
    ref = scores[1:]
    sd = float(np.std(ref, ddof=1)) if k > 1 else float('nan')
    z = (scores[0] - float(np.mean(ref))) / sd if sd > 0 else float('inf')
    return {'score': float(scores[0]), 'p_value': p, 'min_p_value': min_p_value(k),
            'p_value_parametric': float(0.5 * math.erfc(z / math.sqrt(2))),
            'reference_scores': [float(x) for x in ref]}


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(score of a random positive > a random negative), ties counting one half
    (the Mann-Whitney form of the area under the ROC curve)."""
    pos = np.asarray(positive, np.float64)[:, None]
    neg = np.asarray(negative, np.float64)[None, :]
    return float(np.mean((pos > neg) + 0.5 * (pos == neg)))


def tpr_at_fpr(positive: np.ndarray, negative: np.ndarray, fpr: float = 0.01) -> float:
    """True-positive rate at the strictest threshold whose false-positive rate is <= fpr
    (a positive counts when its score is above the threshold; with n negatives, 1 % FPR
    means no negative above it while n < 100)."""
    neg = np.sort(np.asarray(negative, np.float64))[::-1]
    allowed = int(math.floor(fpr * len(neg) + 1e-9))
    threshold = neg[allowed] if allowed < len(neg) else -np.inf
    return float(np.mean(np.asarray(positive, np.float64) > threshold))
