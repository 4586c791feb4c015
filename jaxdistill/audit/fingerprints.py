"""Fidelity fingerprints: how a suspect's outputs copy the teacher's *idiosyncrasies*.

Two models trained for the same task agree wherever the task is easy, and a better model
is closer to *every* good model; neither says where it came from. What a distilled student
copies from its teacher, and an independent model does not, is where the teacher departs
from what models of the task generally do: which mistakes it makes and how it spreads
probability over the classes (or tokens) it does *not* predict ("dark knowledge", Hinton
et al. 2015). So every fingerprint here is measured against a **consensus** ``c``: the mean
log-probabilities of the other models of the test (the references; for a reference, the
others and the suspect), which stands for "what a model of this task does". Each function
takes the teacher's logits ``t [N, C]`` on a probe set (N examples, or N tokens of a
language model flattened), the consensus, and one view of the suspect, and returns one
number, oriented so that **larger means closer to the teacher**:

=========================  ========  ===================================================
fingerprint                access    what it measures
=========================  ========  ===================================================
``error_agreement``        top-1     on labelled probes the teacher gets wrong, the share
                                     where the suspect makes the teacher's mistake
``idiosyncratic_agreement`` top-1    on probes where the teacher's top-1 differs from the
                                     consensus's, the share where the suspect follows the
                                     teacher
``dark_residual_loglik``   samples   over the suspect's samples that are not the teacher's
                                     top-1: mean of ``log t_dark - log c_dark`` (do its
                                     samples favour what the teacher, rather than the
                                     consensus, favours among the non-top classes?)
``dark_kl_gain``           logits    ``KL(t_dark || c_dark) - KL(t_dark || s_dark)``: how
                                     much closer the suspect's non-top distribution is to
                                     the teacher's than the consensus's is (nats)
``dark_residual_rank``     logits    Spearman correlation, over the teacher's non-top
                                     classes, of ``s - c`` with ``t - c`` (log-probabilities):
                                     does the suspect depart from the consensus where the
                                     teacher does, and in its order?
=========================  ========  ===================================================

``x_dark`` is a distribution renormalised over every class but the teacher's top-1.
Everything is float64 numpy; ``weights [N]`` (0/1) marks the probes that count.
"""

from __future__ import annotations

import numpy as np

ACCESS = ('logits', 'top1', 'samples')
# which fingerprints each access mode can compute (a stronger access includes the weaker)
BY_ACCESS = {'top1': ('error_agreement', 'idiosyncratic_agreement'),
             'samples': ('error_agreement', 'idiosyncratic_agreement', 'dark_residual_loglik'),
             'logits': ('error_agreement', 'idiosyncratic_agreement', 'dark_kl_gain',
                        'dark_residual_rank')}


def log_softmax(z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def weighted_mean(values: np.ndarray, weights: np.ndarray | None) -> float:
    """The mean of ``values`` weighted by ``weights`` per probe (None: unweighted)."""
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


def idiosyncratic_agreement(t: np.ndarray, s_top1: np.ndarray, c: np.ndarray,
                            weights: np.ndarray | None = None) -> float:
    """Share of probes where the teacher's top-1 differs from the consensus's on which the
    suspect's top-1 is the teacher's; nan when there is no such probe."""
    t_top = np.argmax(t, -1)
    odd = (t_top != np.argmax(c, -1)) & (True if weights is None else np.asarray(weights) > 0)
    if not odd.any():
        return float('nan')
    return float(np.mean(s_top1[odd] == t_top[odd]))


def _kl(lp: np.ndarray, lq: np.ndarray) -> np.ndarray:
    """Row-wise KL(p || q) of dark log-probabilities (the -inf top class contributes 0)."""
    off = np.isfinite(lp)
    return np.sum(np.exp(lp) * (np.where(off, lp, 0.0) - np.where(off, lq, 0.0)), -1)


def dark_kl_gain(t: np.ndarray, s: np.ndarray, c: np.ndarray,
                 weights: np.ndarray | None = None) -> float:
    """Mean over probes of KL(t_dark || c_dark) - KL(t_dark || s_dark), in nats."""
    top = np.argmax(t, -1)
    lt, ls, lc = (dark_log_probs(x, top) for x in (t, s, c))
    return weighted_mean(_kl(lt, lc) - _kl(lt, ls), weights)


def _ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 0..C-1 along the last axis (ties broken by position: logits are continuous)."""
    order = np.argsort(x, axis=-1, kind='stable')
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(x.shape[-1])[None, :], axis=-1)
    return ranks.astype(np.float64)


def _non_top(x: np.ndarray, top: np.ndarray) -> np.ndarray:
    keep = np.ones(x.shape, bool)
    np.put_along_axis(keep, top[:, None], False, axis=-1)
    return x[keep].reshape(x.shape[0], x.shape[1] - 1)


def dark_residual_rank(t: np.ndarray, s: np.ndarray, c: np.ndarray,
                       weights: np.ndarray | None = None) -> float:
    """Mean over probes of Spearman's correlation, over the teacher's non-top classes, of
    the suspect's and the teacher's log-probabilities minus the consensus's (needs >= 3
    classes)."""
    top = np.argmax(t, -1)
    lt, ls, lc = (log_softmax(x) for x in (t, s, c))
    rt = _ranks(_non_top(lt - lc, top))
    rs = _ranks(_non_top(ls - lc, top))
    rt -= rt.mean(-1, keepdims=True)
    rs -= rs.mean(-1, keepdims=True)
    rho = np.sum(rt * rs, -1) / np.maximum(np.sqrt(np.sum(rt ** 2, -1) * np.sum(rs ** 2, -1)),
                                           1e-12)
    return weighted_mean(rho, weights)


def dark_residual_loglik(t: np.ndarray, samples: np.ndarray, c: np.ndarray,
                         weights: np.ndarray | None = None) -> float:
    """Mean of ``log t_dark(x) - log c_dark(x)`` over the suspect's samples ``x`` (``[N,
    m]``) that differ from the teacher's top-1; nan when every sample is the top-1."""
    top = np.argmax(t, -1)
    lt, lc = dark_log_probs(t, top), dark_log_probs(c, top)
    diff = np.where(np.isfinite(lt), lt, 0.0) - np.where(np.isfinite(lc), lc, 0.0)
    off = samples != top[:, None]
    if weights is not None:
        off &= np.asarray(weights)[:, None] > 0
    if not off.any():
        return float('nan')
    rows = np.broadcast_to(np.arange(len(t))[:, None], samples.shape)
    return float(np.mean(diff[rows[off], samples[off]]))


def consensus(outputs: list[np.ndarray]) -> list[np.ndarray]:
    """For each model, the mean log-probabilities of all the *other* models (so that each
    model's fingerprints are the same function of itself and the multiset of the others,
    which the permutation test needs)."""
    logps = [log_softmax(o).astype(np.float32) for o in outputs]
    total = np.sum(logps, axis=0, dtype=np.float64)
    return [((total - lp) / (len(logps) - 1)).astype(np.float32) for lp in logps]


def sample(logits: np.ndarray, m: int, rng: np.random.Generator) -> np.ndarray:
    """``[N, m]`` classes drawn from softmax(logits) (what a sampling API would return)."""
    p = np.exp(log_softmax(logits))
    cdf = np.cumsum(p, -1)
    u = rng.random((len(p), m)) * cdf[:, -1:]
    return np.minimum((u[:, :, None] > cdf[:, None, :]).sum(-1), p.shape[-1] - 1)
