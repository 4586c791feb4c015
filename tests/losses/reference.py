"""Shared by the tests of `jaxdistill.losses`: a float64 numpy reference, inputs, helpers.

The reference is written from the LOSSES.md definitions, in probability space where the library
works in log space (mixtures as p, not logaddexp), with loops where the library vectorises.
"""

import functools

import jax
import numpy as np
from jax.test_util import check_grads

from jaxdistill import losses


def np_log_softmax(z):
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def np_kl(p, q):
    """KL(p || q) over the last axis with 0 log 0 = 0."""
    safe_p = np.where(p > 0, p, 1.0)
    return np.where(p > 0, p * (np.log(safe_p) - np.log(q)), 0.0).sum(-1)


def np_probs(z, t):
    return np.exp(np_log_softmax(np.asarray(z, np.float64) / t))


def np_kd(zs, zt, temperature=1.0):
    return temperature**2 * np_kl(np_probs(zt, temperature), np_probs(zs, temperature))


def np_forward_kl(zs, zt, temperature=1.0):
    return np_kl(np_probs(zt, temperature), np_probs(zs, temperature))


def np_reverse_kl(zs, zt, temperature=1.0):
    return np_kl(np_probs(zs, temperature), np_probs(zt, temperature))


def np_jsd(zs, zt, temperature=1.0, beta=0.5):
    ps, pt = np_probs(zs, temperature), np_probs(zt, temperature)
    if beta == 0:
        return np_kl(pt, ps)
    if beta == 1:
        return np_kl(ps, pt)
    m = beta * pt + (1 - beta) * ps
    return beta * np_kl(pt, m) + (1 - beta) * np_kl(ps, m)


def np_skew_kl(zs, zt, temperature=1.0, alpha=0.1):
    ps, pt = np_probs(zs, temperature), np_probs(zt, temperature)
    return np_kl(pt, alpha * pt + (1 - alpha) * ps)


def np_skew_rkl(zs, zt, temperature=1.0, alpha=0.1):
    ps, pt = np_probs(zs, temperature), np_probs(zt, temperature)
    return np_kl(ps, (1 - alpha) * pt + alpha * ps)


def np_tvd(zs, zt, temperature=1.0):
    return 0.5 * np.abs(np_probs(zt, temperature) - np_probs(zs, temperature)).sum(-1)


def np_logit_mse(zs, zt, temperature=1.0):
    return (((np.float64(zs) - zt) / temperature) ** 2).mean(-1)


def np_dkd_parts(zs, zt, labels, temperature=1.0, alpha=1.0, beta=8.0):
    zs, zt = np.float64(zs).reshape(-1, zs.shape[-1]), np.float64(zt).reshape(-1, zt.shape[-1])
    t = temperature
    tckd, nckd = [], []
    for s, u, y in zip(zs, zt, np.ravel(labels)):
        ps, pt = np_probs(s, t), np_probs(u, t)
        bs, bt = np.array([ps[y], 1 - ps[y]]), np.array([pt[y], 1 - pt[y]])
        tckd.append(t * t * np_kl(bt, bs))
        keep = np.arange(len(s)) != y
        nckd.append(t * t * np_kl(np_probs(u[keep], t), np_probs(s[keep], t)))
    shape = np.shape(labels)
    tckd, nckd = np.reshape(tckd, shape), np.reshape(nckd, shape)
    return {'tckd': tckd, 'nckd': nckd, 'total': alpha * tckd + beta * nckd}


def np_dist_parts(zs, zt, temperature=1.0, beta=1.0, gamma=1.0):
    ps = np_probs(zs, temperature).reshape(-1, zs.shape[-1])
    pt = np_probs(zt, temperature).reshape(-1, zt.shape[-1])

    def pearson(a, b):
        a, b = a - a.mean(), b - b.mean()
        return a @ b / (np.linalg.norm(a) * np.linalg.norm(b) + 1e-8)

    inter = np.mean([1 - pearson(a, b) for a, b in zip(ps, pt)])
    intra = np.mean([1 - pearson(a, b) for a, b in zip(ps.T, pt.T)])
    return {'inter': inter, 'intra': intra,
            'total': temperature**2 * (beta * inter + gamma * intra)}


def np_topk_kl(zs, lt, ids, mode='renormalise', temperature=1.0):
    ls = np_log_softmax(np.float64(zs) / temperature)
    out = np.zeros(lt.shape[:-1])
    for index in np.ndindex(*lt.shape[:-1]):
        logp_s = ls[index][ids[index]]
        if mode == 'renormalise':
            q = np.exp(np.float64(lt[index]) / temperature)
            q = q / q.sum()
            out[index] = (q * (np.log(q) - logp_s)).sum()
        else:
            p = np.exp(np.float64(lt[index]))
            r_t, r_s = 1 - p.sum(), 1 - np.exp(logp_s).sum()
            out[index] = (p * (np.log(p) - logp_s)).sum() + r_t * (np.log(r_t) - np.log(r_s))
    return out


def np_ce(z, labels):
    lp = np_log_softmax(np.float64(z))
    return -np.take_along_axis(lp, np.asarray(labels)[..., None], -1)[..., 0]


def np_feature_mse(hs, ht):
    return ((np.float64(hs) - ht) ** 2).mean(-1)


def np_feature_cosine(hs, ht):
    hs, ht = np.float64(hs), np.float64(ht)
    return 1 - (hs * ht).sum(-1) / (np.linalg.norm(hs, axis=-1) * np.linalg.norm(ht, axis=-1))


def np_attention_transfer(hs, ht):
    def att(h):
        a = (np.float64(h) ** 2).mean(-1).reshape(h.shape[0], -1)
        return a / np.linalg.norm(a, axis=-1, keepdims=True)

    return np.linalg.norm(att(hs) - att(ht), axis=-1)


def np_rkd(xs, xt, distance_weight=25.0, angle_weight=50.0):
    xs, xt = np.float64(xs), np.float64(xt)
    n = len(xs)

    def huber(x):
        return np.where(np.abs(x) <= 1, 0.5 * x * x, np.abs(x) - 0.5)

    def distances(x):
        d = {(i, j): np.linalg.norm(x[i] - x[j]) for i in range(n) for j in range(n) if i != j}
        mu = np.mean(list(d.values()))
        return {k: v / mu for k, v in d.items()}

    def angle(x, i, j, k):
        e1, e2 = x[j] - x[i], x[k] - x[i]
        return e1 @ e2 / (np.linalg.norm(e1) * np.linalg.norm(e2))

    ds, dt = distances(xs), distances(xt)
    loss_d = np.mean([huber(ds[k] - dt[k]) for k in ds])
    triplets = [(i, j, k) for i in range(n) for j in range(n) for k in range(n)
                if len({i, j, k}) == 3]
    loss_a = np.mean([huber(angle(xs, *t) - angle(xt, *t)) for t in triplets])
    return distance_weight * loss_d + angle_weight * loss_a


def np_similarity_mse(xs, xt):
    def cosines(x):
        x = np.float64(x)
        return [[x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
                 for j in range(len(x))] for i in range(len(x))]

    cs, ct = cosines(xs), cosines(xt)
    n = len(xs)
    return np.mean([(cs[i][j] - ct[i][j]) ** 2 for i in range(n) for j in range(n) if i != j])


NP_REFERENCE = {
    'kd': np_kd, 'forward_kl': np_forward_kl, 'reverse_kl': np_reverse_kl, 'jsd': np_jsd,
    'skew_kl': np_skew_kl, 'skew_rkl': np_skew_rkl, 'tvd': np_tvd, 'logit_mse': np_logit_mse,
}

# ------------------------------------------------------------------------------ test inputs
RNG = np.random.default_rng(0)
SHAPE = (3, 4, 7)  # [B, T, V]
ZS = (2.0 * RNG.standard_normal(SHAPE)).astype(np.float32)
ZT = (2.0 * RNG.standard_normal(SHAPE)).astype(np.float32)
# int32: the same dtype with and without x64 (jit caches key on the numpy dtype).
LABELS = RNG.integers(0, SHAPE[-1] - 1, SHAPE[:-1]).astype(np.int32)  # never the last class
TOKEN_MASK = RNG.random(SHAPE[:-1]) < 0.6
TOKEN_MASK[0, 0], TOKEN_MASK[0, 1] = True, False
VOCAB_KEEP = np.array([0, 1, 3, 4, 5])  # drops classes 2 and 6 (the last)
VOCAB_MASK = np.isin(np.arange(SHAPE[-1]), VOCAB_KEEP)[None, None, :]

# (test name, loss, hyper-parameters): every per-token logit loss, with non-default settings.
# JSD's other betas share jsd_0.1's code (0 and 1 are forward/reverse KL): see JsdTest.
PER_TOKEN = [
    ('kd', 'kd', {'temperature': 2.0}),
    ('forward_kl', 'forward_kl', {}),
    ('reverse_kl', 'reverse_kl', {'temperature': 0.7}),
    ('jsd', 'jsd', {'beta': 0.1}),
    ('skew_kl', 'skew_kl', {'alpha': 0.1}),
    ('skew_rkl', 'skew_rkl', {'alpha': 0.3}),
    ('tvd', 'tvd', {}),
    ('logit_mse', 'logit_mse', {'temperature': 2.0}),
    ('dkd', 'dkd', {'temperature': 4.0}),
]


def jit(fn, **static):
    """``fn`` under ``jax.jit`` with ``static`` keyword arguments bound (concrete)."""
    return jax.jit(functools.partial(fn, **static))


def call(loss, zs, zt, labels=LABELS, **kwargs):
    """Calls a per-token loss; DKD also gets its labels."""
    if loss == 'dkd':
        kwargs['labels'] = labels
    return losses.get(loss)(zs, zt, **kwargs)


def check_grads32(fn, *args):
    """Reverse-mode gradients of ``jax.jit(fn)`` against central differences, in float32."""
    check_grads(jax.jit(fn), args, order=1, modes=['rev'], eps=1e-3, atol=5e-3, rtol=5e-3)


def np_call(loss, zs, zt, labels=LABELS, **hyper):
    if loss == 'dkd':
        return np_dkd_parts(zs, zt, labels, **hyper)['total']
    return NP_REFERENCE[loss](zs, zt, **hyper)



# ----------------------------------------------------------------- LOSSES.md reference values
REF_ZS = [[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]]
REF_ZT = [[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]]
REF_Y = [2, 1]
DIST_ZS = [[0.5, -1.0, 2.0, 0.0, 0.3], [1.5, 0.2, -0.3, 0.9, -1.1],
           [0.0, 0.4, 0.8, -0.6, 1.2], [-0.7, 1.3, 0.2, 0.5, 0.0]]
DIST_ZT = [[1.0, -0.5, 1.5, 0.3, 0.0], [-0.2, 2.2, 0.1, 0.4, -0.8],
           [0.3, 0.1, 1.6, -1.0, 0.9], [-1.2, 0.8, 0.6, 1.1, -0.3]]


def assert_reference(got, want, reference):
    """rtol 1e-5, or half a unit of the 6th decimal printed (nckd 0.004462).

    ``reference`` is this file's numpy implementation on the same inputs: the printed values are
    re-derived here, not just copied.
    """
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=5e-7)
    np.testing.assert_allclose(reference, want, rtol=1e-5, atol=5e-7)


EXTREME_S = np.where(ZS > 0, 1e4, -1e4).astype(np.float32)
EXTREME_T = np.where(ZT > 0.5, 1e4, -1e4).astype(np.float32)
SLICED_LABELS = np.searchsorted(VOCAB_KEEP, LABELS)  # label ids in the sliced vocabulary
LABEL_KEPT = np.isin(LABELS, VOCAB_KEEP)
INDEXED = [(name, i, loss, hyper) for i, (name, loss, hyper) in enumerate(PER_TOKEN)]


def topk_inputs(k=3):
    ids = np.argsort(-ZT, axis=-1)[..., :k]
    return np.take_along_axis(np_log_softmax(np.float64(ZT)), ids, -1).astype(np.float32), ids



# Features: drawn after the logits, in this order, so their values never change.
H_S = RNG.standard_normal((3, 4, 5)).astype(np.float32)  # [B, T, d_s]
H_T = RNG.standard_normal((3, 4, 6)).astype(np.float32)  # [B, T, d_t]
PROJ = (0.5 * RNG.standard_normal((5, 6))).astype(np.float32)
MAPS_S = RNG.standard_normal((3, 4, 4, 2)).astype(np.float32)  # NHWC, 2 student channels
MAPS_T = RNG.standard_normal((3, 4, 4, 5)).astype(np.float32)  # 5 teacher channels
EMB_S = RNG.standard_normal((5, 3)).astype(np.float32)  # [N, d_s]
EMB_T = RNG.standard_normal((5, 4)).astype(np.float32)  # [N, d_t]
