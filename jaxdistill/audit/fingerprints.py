"""Fidelity fingerprints: how a suspect's outputs copy the teacher's *idiosyncrasies*.

Two models trained on the same task agree wherever the task is easy; what a distilled
student copies from its teacher, and an independent model does not, is what the labels do
not say: which mistakes the teacher makes and how it spreads probability over the classes
(or tokens) it does *not* predict ("dark knowledge", Hinton et al. 2015). Every function
here takes the teacher's logits ``t [N, C]`` on a probe set (N examples, or N tokens of a
language model flattened) and one view of the suspect, and returns one number, oriented so
that **larger means closer to the teacher**:

=====================  ============  =====================================================
fingerprint            access        what it measures
=====================  ============  =====================================================
``error_agreement``    top-1         on probes the teacher gets wrong, the share where the
                                     suspect makes the teacher's mistake
``ambiguous_agreement`` top-1        top-1 agreement on ambiguous probes (pairs of inputs
                                     mixed half and half), where the decision is the
                                     teacher's own, not the label's
``dark_loglik``        samples       mean teacher log-probability, renormalised over its
                                     non-top classes, of the suspect's sampled outputs that
                                     are not the teacher's top-1
``neg_dark_kl``        logits        minus KL(teacher || suspect) over the teacher's
                                     non-top classes, both renormalised there
``dark_rank``          logits        Spearman correlation of the two models' logits over
                                     the teacher's non-top classes
=====================  ============  =====================================================

Everything is float64 numpy; ``weights [N]`` (0/1) marks the probes that count (real tokens).
"""

from __future__ import annotations

import numpy as np

ACCESS = ('logits', 'top1', 'samples')
# which fingerprints each access mode can compute (a stronger access includes the weaker)
BY_ACCESS = {'top1': ('error_agreement', 'ambiguous_agreement'),
             'samples': ('error_agreement', 'ambiguous_agreement', 'dark_loglik'),
             'logits': ('error_agreement', 'ambiguous_agreement', 'neg_dark_kl', 'dark_rank')}


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def _mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    if weights is None:
        return float(np.mean(values))
    w = np.asarray(weights, np.float64)
    return float(np.sum(values * w) / max(w.sum(), 1e-12))


def dark_log_probs(logits: np.ndarray, top: np.ndarray) -> np.ndarray:
    """Log-probabilities renormalised over every class but ``top[n]`` (which gets -inf)."""
    z = np.array(logits, np.float64)
    np.put_along_axis(z, top[:, None], -np.inf, axis=-1)
    return log_softmax(z)


def error_agreement(t: np.ndarray, s_top1: np.ndarray, labels: np.ndarray,
                    weights: np.ndarray | None = None) -> float:
    """Share of the teacher's errors (top-1 != label) where the suspect's top-1 is the
    teacher's; nan when the teacher makes no error on the weighted probes."""
    t_top = np.argmax(t, -1)
    wrong = (t_top != labels) & (True if weights is None else np.asarray(weights) > 0)
    if not wrong.any():
        return float('nan')
    return float(np.mean(s_top1[wrong] == t_top[wrong]))


def top1_agreement(t: np.ndarray, s_top1: np.ndarray,
                   weights: np.ndarray | None = None) -> float:
    """Share of probes where the suspect's top-1 is the teacher's."""
    return _mean((np.argmax(t, -1) == s_top1).astype(np.float64), weights)


def neg_dark_kl(t: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Minus the mean KL(teacher || suspect) over the teacher's non-top classes, in nats."""
    top = np.argmax(t, -1)
    lt, ls = dark_log_probs(t, top), dark_log_probs(s, top)
    pt = np.exp(lt)
    off = np.isfinite(lt)  # every class but the teacher's top-1
    kl = np.sum(pt * (np.where(off, lt, 0.0) - np.where(off, ls, 0.0)), -1)
    return -_mean(kl, weights)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..C-1 along the last axis (ties broken by position: logits are continuous)."""
    order = np.argsort(x, axis=-1, kind='stable')
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(x.shape[-1])[None, :], axis=-1)
    return ranks.astype(np.float64)


def dark_rank(t: np.ndarray, s: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean over probes of Spearman's correlation between teacher and suspect logits over
    the teacher's non-top classes (needs >= 3 classes)."""
    t = np.asarray(t, np.float64)
    top = np.argmax(t, -1)
    keep = np.ones(t.shape, bool)
    np.put_along_axis(keep, top[:, None], False, axis=-1)
    n, c = t.shape
    rt = _ranks(t[keep].reshape(n, c - 1))
    rs = _ranks(np.asarray(s, np.float64)[keep].reshape(n, c - 1))
    rt -= rt.mean(-1, keepdims=True)
    rs -= rs.mean(-1, keepdims=True)
    rho = np.sum(rt * rs, -1) / np.maximum(np.sqrt(np.sum(rt ** 2, -1) * np.sum(rs ** 2, -1)),
                                           1e-12)
    return _mean(rho, weights)


def dark_loglik(t: np.ndarray, samples: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Mean teacher dark log-probability of the suspect's samples ``[N, m]`` that differ
    from the teacher's top-1 (an unbiased estimate of minus the cross-entropy between the
    suspect's and the teacher's non-top distributions); nan when every sample is the top-1."""
    top = np.argmax(t, -1)
    lt = dark_log_probs(t, top)
    off = samples != top[:, None]
    if weights is not None:
        off &= np.asarray(weights)[:, None] > 0
    if not off.any():
        return float('nan')
    rows = np.broadcast_to(np.arange(len(t))[:, None], samples.shape)
    return float(np.mean(lt[rows[off], samples[off]]))


def sample(logits: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, m]`` classes drawn from softmax(logits) (what a sampling API would return)."""
    p = np.exp(log_softmax(logits))
    cdf = np.cumsum(p, -1)
    u = rng.random((len(p), m)) * cdf[:, -1:]
    return np.minimum((u[:, :, None] > cdf[:, None, :]).sum(-1), p.shape[-1] - 1)
