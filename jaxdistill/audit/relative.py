"""Teacher-relative fingerprints: is the suspect closer to the teacher than to its anchors?

A student distilled from teacher A copies A's outputs; a model that never saw them (a
labels-only model, a student of an independent teacher B) is, on every probe, no closer to
A than to any other teacher of A's recipe. So the auditor, who owns A, trains **anchors**
(A's recipe at other seeds, ``--anchors``) and asks, probe by probe, whether the suspect
sits closer to A than to each anchor. Everything the task makes every model do (be right
on easy inputs, be better or worse overall) cancels in the comparison: it is the same for A
and for its anchors. What is left is what is particular to A, which only a copy shares.

For a probe ``i`` and an anchor ``a`` the paired comparison is a log-likelihood ratio under
the suspect's view ``x`` of the probe (its distribution, its top-1, or its samples):

    d_ia = E_x [log t_i(x) - log a_i(x)]

(white-box, ``x ~ s_i``: ``d_ia = KL(s_i || a_i) - KL(s_i || t_i)``). Two fingerprints
summarise the ``[N, m]`` table, both oriented so that larger means closer to the teacher:

=====================  ==========================================================
``teacher_rank``        mean over probes and anchors of ``1[d_ia > 0]`` (ties 1/2):
                        the share of paired comparisons A wins; 1/2 in expectation
                        for a model that treats A like its anchors
``teacher_llr``         mean of ``d_ia`` clipped to ``[-CLIP, CLIP]`` nats (a few
                        probes where one teacher gives a class ~0 probability would
                        otherwise dominate the mean)
``teacher_coef``        the teacher's least-squares weight minus the anchors' mean
                        weight when the suspect's view is regressed, over every
                        probe and class at once, on the teacher's and the anchors'
                        probabilities (all centred at ``1/C``): how much of the
                        suspect's function is explained by the teacher *beyond* what
                        it shares with its anchors (the score, `teacher_coef`)
=====================  ==========================================================

Why the regression: the teacher and its anchors share most of their function (the task),
so their probabilities are nearly collinear; a joint fit gives each teacher only what it
explains alone, and a student that copies a little of its teacher gets a little more
weight on it, whatever its sharpness (a sharp labels-only model and a smooth student of
another teacher both put equal weight on A and its anchors). On the digits tuning zoo it
was ahead of ``teacher_llr`` in every access mode on mixes at a uniform weight; the
held-out figures are in docs/audit.md.

The paired, per-probe form is what gives the test its power: independent teachers of one
recipe disagree mostly on ambiguous inputs (mixes of two digits, the inputs function
matching trains the student on), and there a copy follows A while everyone else scatters.
Everything is float64 numpy; ``weights [N]`` (0/1) marks the probes that count.
"""

from __future__ import annotations

import numpy as np

from jaxdistill.audit.fingerprints import log_softmax, weighted_mean

CLIP = 5.0  # nats: bound on one paired log-likelihood ratio in teacher_llr
NAMES = ('teacher_rank', 'teacher_llr', 'teacher_coef')


def paired_llr(teacher: np.ndarray, anchors: np.ndarray, view: np.ndarray) -> np.ndarray:
    """``d [N, m]``: for each probe and anchor, ``E_x[log t(x) - log a(x)]`` with ``x``
    distributed as ``view [N, C]`` (rows of probabilities: the suspect's softmax, a one-hot
    top-1, or the empirical distribution of its samples). ``teacher [N, C]`` and
    ``anchors [m, N, C]`` are logits."""
    lt = log_softmax(teacher)
    la = log_softmax(anchors)
    view = np.asarray(view, np.float64)
    return np.einsum('nc,mnc->nm', view, lt[None] - la)


def teacher_rank(d: np.ndarray, weights: np.ndarray | None = None) -> float:
    """Share of the paired comparisons ``d [N, m]`` the teacher wins (ties count 1/2)."""
    wins = (d > 0) + 0.5 * (d == 0)
    return weighted_mean(wins.mean(-1), weights)


def teacher_llr(d: np.ndarray, weights: np.ndarray | None = None, clip: float = CLIP) -> float:
    """Mean paired log-likelihood ratio, each clipped to ``[-clip, clip]`` nats."""
    return weighted_mean(np.clip(d, -clip, clip).mean(-1), weights)


def coefficients(teachers: np.ndarray, view_probs: np.ndarray,
                 weights: np.ndarray | None = None) -> np.ndarray:
    """``beta [k]``: least squares of ``view - 1/C`` on ``softmax(teachers[k]) - 1/C`` (``[k,
    N, C]`` logits) over the weighted probes and every class, no intercept (the normal
    equations, solved by pseudo-inverse: teachers that coincide share their weight)."""
    view_probs = np.asarray(view_probs, np.float64)
    c = view_probs.shape[-1]
    x = np.exp(log_softmax(teachers)) - 1.0 / c
    y = view_probs - 1.0 / c
    w = np.ones(len(y)) if weights is None else np.asarray(weights, np.float64)
    gram = np.einsum('knc,jnc,n->kj', x, x, w)
    return np.linalg.pinv(gram) @ np.einsum('knc,nc,n->k', x, y, w)


def teacher_coef(teacher: np.ndarray, anchors: np.ndarray, view_probs: np.ndarray,
                 weights: np.ndarray | None = None) -> float:
    """The teacher's weight minus the anchors' mean weight in `coefficients`."""
    beta = coefficients(np.concatenate([np.asarray(teacher)[None], np.asarray(anchors)]),
                        view_probs, weights)
    return float(beta[0] - beta[1:].mean())


def view(access: str, logits: np.ndarray, samples: np.ndarray | None = None) -> np.ndarray:
    """What the auditor sees of the suspect as rows of probabilities ``[N, C]``: its
    softmax (``logits``), its top-1 one-hot (``top1``), or the share of its ``samples
    [N, k]`` on each class (``samples``)."""
    n, c = logits.shape
    if access == 'logits':
        return np.exp(log_softmax(logits))
    if access == 'top1':
        return np.eye(c)[np.argmax(logits, -1)]
    counts = np.zeros((n, c))
    np.add.at(counts, (np.repeat(np.arange(n), samples.shape[1]), samples.ravel()), 1.0)
    return counts / samples.shape[1]


def fingerprints(teacher: np.ndarray, anchors: np.ndarray, view_probs: np.ndarray,
                 weights: np.ndarray | None = None) -> dict[str, float]:
    """The teacher-relative fingerprints (`NAMES`) of one suspect view."""
    d = paired_llr(teacher, anchors, view_probs)
    return {'teacher_rank': teacher_rank(d, weights), 'teacher_llr': teacher_llr(d, weights),
            'teacher_coef': teacher_coef(teacher, anchors, view_probs, weights)}


def teacher_scores(teachers: np.ndarray, view_probs: np.ndarray,
                   weights: np.ndarray | None = None) -> np.ndarray:
    """``teacher_rank`` of every teacher of ``teachers [m + 1, N, C]`` (logits) against the
    others: the suspect's view treats each the same way, so under the null that it
    descends from none of them, and the teachers are alike (one recipe, other seeds), the
    audited teacher's rank among these scores is uniform (`teacher_p_value`)."""
    e = np.einsum('nc,knc->kn', np.asarray(view_probs, np.float64), log_softmax(teachers))
    diff = e[:, None, :] - e[None, :, :]  # [k, j, N]: E_s log T_k - E_s log T_j
    wins = (diff > 0) + 0.5 * (diff == 0)
    m = len(teachers)
    wins = (wins.sum(1) - 0.5) / (m - 1)  # drop j == k (a tie with itself: 1/2)
    return np.array([weighted_mean(w, weights) for w in wins])


def teacher_p_value(scores: np.ndarray) -> float:
    """Rank p-value of teacher 0 among ``scores`` (ties count against it): exact under
    exchangeable teachers, smallest ``1 / len(scores)``."""
    return float(np.sum(scores >= scores[0] - 1e-12) / len(scores))
