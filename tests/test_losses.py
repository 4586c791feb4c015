"""jaxdistill/losses.py against the specification's values and a float64 numpy reference."""

import doctest
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxdistill import losses
from jaxdistill.errors import ConfigError

# ------------------------------------------------------------------ float64 numpy reference
# Written from the LOSSES.md definitions, in probability space where the library works in log
# space (mixtures as p, not logaddexp), with loops where the library vectorises.


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


@pytest.fixture(autouse=True, scope='module')
def fast_compile():
    """Compile with few XLA optimisations while this module runs, restored afterwards.

    The same programs, compiled about twice as fast: compiling is where this file's time
    goes (the programs run on a few dozen numbers), and 2 CPU cores are all there is.
    """
    before = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    yield
    jax.config.update('jax_disable_most_optimizations', before)


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


class ReferenceValuesTest(parameterized.TestCase):
    """The specification's (LOSSES.md) float64 values, to rtol 1e-5, computed with x64 enabled."""

    @parameterized.named_parameters(
        ('kd_t1', 'kd', {'temperature': 1.0}, [0.108954, 0.980049]),
        ('kd_t2', 'kd', {'temperature': 2.0}, [0.107630, 1.025817]),
        ('kd_t4', 'kd', {'temperature': 4.0}, [0.098622, 0.984762]),
        ('reverse_kl', 'reverse_kl', {}, [0.101419, 1.020725]),
        ('jsd_0.1', 'jsd', {'beta': 0.1}, [0.009695, 0.084474]),
        ('jsd_0.5', 'jsd', {'beta': 0.5}, [0.026003, 0.221266]),
        ('jsd_0.9', 'jsd', {'beta': 0.9}, [0.009161, 0.086546]),
        ('skew_kl', 'skew_kl', {'alpha': 0.1}, [0.086320, 0.733550]),
        ('skew_rkl', 'skew_rkl', {'alpha': 0.1}, [0.082769, 0.742415]),
        ('tvd', 'tvd', {}, [0.220638, 0.593888]),
    )
    def test_per_token(self, loss, hyper, want):
        with jax.enable_x64(True):
            got = jit(losses.get(loss), **hyper)(np.float64(REF_ZS), np.float64(REF_ZT))
        assert_reference(got, want, NP_REFERENCE[loss](np.array(REF_ZS), np.array(REF_ZT),
                                                       **hyper))

    def test_dkd_parts(self):
        with jax.enable_x64(True):
            got = jit(losses.dkd_parts, temperature=4.0, alpha=1.0, beta=8.0)(
                np.float64(REF_ZS), np.float64(REF_ZT), labels=np.int32(REF_Y))
        ref = np_dkd_parts(np.array(REF_ZS), np.array(REF_ZT), REF_Y, temperature=4.0)
        assert_reference(got['total'], [0.131234, 3.622279], ref['total'])
        assert_reference(got['tckd'], [0.095542, 0.755401], ref['tckd'])
        assert_reference(got['nckd'], [0.004462, 0.358360], ref['nckd'])

    @parameterized.parameters(('renormalise', [0.245813, 1.478841]),
                              ('tail', [0.108064, 0.901960]))
    def test_topk_kl(self, mode, want):
        with jax.enable_x64(True):
            zt = np.float64(REF_ZT)
            ids = np.argsort(-zt, axis=-1)[:, :2]
            lt = np.take_along_axis(np_log_softmax(zt), ids, -1)
            got = jit(losses.topk_kl, mode=mode)(np.float64(REF_ZS), lt, np.int32(ids))
        assert_reference(got, want, np_topk_kl(np.array(REF_ZS), lt, ids, mode=mode))

    @parameterized.parameters((1.0, 1.114008, 0.512408, 0.601600),
                              (4.0, 11.968483, 0.355403, 0.392627))
    def test_dist(self, temperature, total, inter, intra):
        with jax.enable_x64(True):
            got = jit(losses.dist_parts, temperature=temperature, beta=1.0, gamma=1.0)(
                np.float64(DIST_ZS), np.float64(DIST_ZT))
        ref = np_dist_parts(np.array(DIST_ZS), np.array(DIST_ZT), temperature=temperature)
        assert_reference(got['total'], total, ref['total'])
        assert_reference(got['inter'], inter, ref['inter'])
        assert_reference(got['intra'], intra, ref['intra'])


# ------------------------------------------------------------- per-token logit-loss properties
# Compiling is what costs time on 2 CPU cores (~0.1-0.4 s per XLA program), so the per-token
# properties are computed for all PER_TOKEN losses at once, stacked on a leading axis, by one
# jitted program per property set; XLA shares the log-softmaxes between the losses. The tests
# stay one per (property, loss) and read their row.
EXTREME_S = np.where(ZS > 0, 1e4, -1e4).astype(np.float32)
EXTREME_T = np.where(ZT > 0.5, 1e4, -1e4).astype(np.float32)
SLICED_LABELS = np.searchsorted(VOCAB_KEEP, LABELS)  # label ids in the sliced vocabulary
LABEL_KEPT = np.isin(LABELS, VOCAB_KEEP)
INDEXED = [(name, i, loss, hyper) for i, (name, loss, hyper) in enumerate(PER_TOKEN)]


def stacked(zs, zt, labels=LABELS, **kwargs):
    """Every PER_TOKEN loss on the same inputs, stacked: ``[len(PER_TOKEN), ...]``."""
    return jnp.stack([call(loss, zs, zt, labels=labels, **hyper, **kwargs)
                      for _, loss, hyper in PER_TOKEN])


@functools.cache
def properties():
    """What the property tests look at, for every loss, from a few compiled programs.

    One program (values and the gradient of their sum, with a full-shape ``where``) serves
    every input of the logits' shape; a few more cover the other call paths. Masked results
    are compared with the float64 reference on sliced inputs.
    """
    @jit
    def value_and_grad(zs, zt, where):
        value, vjp = jax.vjp(lambda a: stacked(a, zt, where=where), zs)
        return value, vjp(jnp.ones_like(value))[0]

    everywhere = np.ones(SHAPE, bool)
    vocab_mask = np.broadcast_to(VOCAB_MASK, SHAPE)
    token_as_vocab_mask = np.broadcast_to(TOKEN_MASK[..., None], SHAPE)
    out = {}
    out['value'], out['grad'] = value_and_grad(ZS, ZT, everywhere)
    out['identical'], _ = value_and_grad(ZS, ZS, everywhere)
    out['vocab'], out['vocab_grad'] = value_and_grad(ZS, ZT, vocab_mask)
    out['token'], out['token_grad'] = value_and_grad(ZS, ZT, token_as_vocab_mask)
    out['extreme'], out['extreme_grad'] = value_and_grad(EXTREME_S, EXTREME_T, everywhere)
    out['extreme_identical'], _ = value_and_grad(EXTREME_S, EXTREME_S, everywhere)
    bf_s, bf_t = jnp.asarray(ZS, jnp.bfloat16), jnp.asarray(ZT, jnp.bfloat16)
    out['bf16_as_f32'], _ = value_and_grad(np.float32(bf_s), np.float32(bf_t), everywhere)
    # The other call paths: no mask, a [B, T] token mask, bf16 inputs, another axis.
    m = TOKEN_MASK
    out['unmasked_grad'] = jit(jax.grad(lambda a: jnp.sum(stacked(a, ZT))))(ZS)
    out['token_api'] = jit(stacked)(ZS, ZT, where=m)
    out['bf16'] = jit(stacked)(bf_s, bf_t)
    out['axis0'] = jit(stacked, axis=0)(np.moveaxis(ZS, -1, 0), np.moveaxis(ZT, -1, 0))
    return jax.device_get(out)


@functools.cache
def float64_values():
    with jax.enable_x64(True):
        return jax.device_get(jit(stacked)(np.float64(ZS), np.float64(ZT)))


class PerTokenLossTest(parameterized.TestCase):
    """Every per-token logit loss: reference, masks, axis, jit, gradients, dtypes, extremes."""

    @parameterized.named_parameters(*INDEXED)
    def test_float64_matches_numpy(self, i, loss, hyper):
        got = float64_values()[i]
        self.assertEqual(got.dtype, np.float64)
        np.testing.assert_allclose(got, np_call(loss, ZS, ZT, **hyper), rtol=1e-10, atol=1e-12)

    @parameterized.named_parameters(*INDEXED)
    def test_float32_jit_matches_numpy(self, i, loss, hyper):
        got = properties()['value'][i]
        self.assertEqual(got.shape, SHAPE[:-1])
        self.assertEqual(got.dtype, np.float32)
        np.testing.assert_allclose(got, np_call(loss, ZS, ZT, **hyper), rtol=2e-5, atol=2e-6)

    @parameterized.named_parameters(*INDEXED)
    def test_identical_inputs_give_zero(self, i, loss, hyper):
        np.testing.assert_allclose(properties()['identical'][i], 0.0, atol=1e-6)

    @parameterized.named_parameters(*INDEXED)
    def test_token_mask_equals_slicing(self, i, loss, hyper):
        props, m = properties(), TOKEN_MASK
        sliced = np_call(loss, ZS[m], ZT[m], labels=LABELS[m], **hyper)
        np.testing.assert_allclose(props['token'][i][m], sliced, rtol=2e-5, atol=2e-6)
        np.testing.assert_array_equal(props['token'][i][~m], 0.0)
        np.testing.assert_allclose(props['token_api'][i], props['token'][i], rtol=1e-6)
        grad = props['token_grad']  # of the sum over losses: zero iff zero for each
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(grad[~m], 0.0)
        self.assertGreater(np.abs(grad[m]).max(), 0.0)

    @parameterized.named_parameters(*INDEXED)
    def test_vocab_mask_equals_slicing(self, i, loss, hyper):
        props, keep = properties(), LABEL_KEPT
        # DKD: compare the rows whose label survives the vocabulary mask.
        sliced = np_call(loss, ZS[..., VOCAB_KEEP], ZT[..., VOCAB_KEEP], labels=SLICED_LABELS,
                         **hyper)
        np.testing.assert_allclose(props['vocab'][i][keep], sliced[keep], rtol=2e-5, atol=2e-6)
        grad = props['vocab_grad']
        self.assertTrue(np.all(np.isfinite(grad)))
        np.testing.assert_array_equal(grad[..., ~VOCAB_MASK[0, 0]], 0.0)

    @parameterized.named_parameters(*INDEXED)
    def test_axis(self, i, loss, hyper):
        np.testing.assert_allclose(properties()['axis0'][i], properties()['value'][i],
                                   rtol=1e-6, atol=1e-7)

    @parameterized.named_parameters(*INDEXED)
    def test_extreme_logits_finite(self, i, loss, hyper):
        props = properties()
        self.assertTrue(np.all(np.isfinite(props['extreme'][i])))
        self.assertTrue(np.all(np.isfinite(props['extreme_grad'])))
        np.testing.assert_array_equal(props['extreme_identical'][i], 0.0)

    @parameterized.named_parameters(*INDEXED)
    def test_bfloat16_inputs_computed_in_float32(self, i, loss, hyper):
        props = properties()
        self.assertEqual(props['bf16'].dtype, np.float32)
        # Exactly the float32 computation on the (exactly upcast) bf16 values ...
        np.testing.assert_allclose(props['bf16'][i], props['bf16_as_f32'][i], rtol=1e-6,
                                   atol=1e-7)
        # ... hence close to the float32 inputs', up to the bf16 rounding of the logits.
        np.testing.assert_allclose(props['bf16'][i], props['value'][i], rtol=0.05, atol=0.02)
        self.assertTrue(np.all(props['bf16'][i] >= 0))

    @parameterized.named_parameters(*INDEXED)
    def test_vocab_mismatch(self, i, loss, hyper):
        with pytest.raises(ConfigError, match='student vocab 7 != teacher vocab 8.*tokenizer'):
            call(loss, ZS, np.zeros(SHAPE[:-1] + (8,), np.float32), **hyper)

    def test_gradients(self):
        """check_grads on every loss at once (vocabulary-masked code path).

        Each loss is divided by its own magnitude so that a wrong gradient in any one of them
        moves check_grads' random projection by O(1/len(PER_TOKEN)), far above tolerance.
        """
        zs, zt, labels, where = ZS[0], ZT[0], LABELS[0], VOCAB_MASK[0]
        scale = np.abs(properties()['vocab'][:, 0]) + 1e-3  # the same values, computed
        check_grads32(lambda a: stacked(a, zt, labels=labels, where=where) / scale, zs)

    def test_unmasked_gradient_equals_all_true_mask(self):
        """The ``where=None`` path (jax.nn.log_softmax) has the gradients check_grads checked."""
        np.testing.assert_allclose(properties()['unmasked_grad'], properties()['grad'],
                                   rtol=1e-5, atol=1e-7)


class DenseForwardKlTest(parameterized.TestCase):
    """kd / forward_kl without a mask take a hand-written derivative (`_dense_forward_kl`);
    the masked code path (an all-True vocabulary mask) is plain autodiff of the per-entry
    form: the two must agree in value, both gradients, and forward mode."""

    @parameterized.parameters(('kd', 1.0), ('kd', 3.0), ('forward_kl', 1.0), ('forward_kl', 0.5))
    def test_equals_the_autodiff_path(self, loss, temperature):
        fn = losses.get(loss)
        every = np.ones(SHAPE, bool)

        def total(zs, zt, where=None):
            weights = np.arange(SHAPE[0])[:, None]  # a non-uniform cotangent
            return jnp.sum(fn(zs, zt, temperature=temperature, where=where) * weights)

        fast = jit(jax.value_and_grad(total, argnums=(0, 1)))(ZS, ZT)
        slow = jit(jax.value_and_grad(lambda a, b: total(a, b, every), argnums=(0, 1)))(ZS, ZT)
        np.testing.assert_allclose(fast[0], slow[0], rtol=1e-6)
        # Two equivalent formulas in float32: they differ by a few ulps of the log-probabilities
        # (|log p| reaches ~20 at T = 0.5 here, an ulp of 2e-6), scaled by the cotangent.
        for a, b in zip(fast[1], slow[1]):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5 * np.abs(b).max())
        tangents = (RNG.standard_normal(SHAPE).astype(np.float32),) * 2
        jvp_fast = jax.jvp(total, (ZS, ZT), tangents)[1]
        jvp_slow = jax.jvp(lambda a, b: total(a, b, every), (ZS, ZT), tangents)[1]
        np.testing.assert_allclose(jvp_fast, jvp_slow, rtol=1e-5)

    def test_second_order_and_float64_numerics(self):
        zs, zt = ZS[0].astype(np.float64), ZT[0].astype(np.float64)
        with jax.enable_x64(True):
            check_grads(functools.partial(losses.kd, temperature=2.0), (zs, zt), order=2,
                        modes=['fwd', 'rev'])


class JsdTest(parameterized.TestCase):

    def test_symmetric_at_half_only(self):
        half, tenth, nine = (jit(losses.jsd, beta=b) for b in (0.5, 0.1, 0.9))
        np.testing.assert_allclose(half(ZS, ZT), half(ZT, ZS), rtol=1e-6)
        a, b = tenth(ZS, ZT), tenth(ZT, ZS)
        self.assertGreater(np.max(np.abs(a - b)), 1e-3)
        # Swapping the arguments swaps beta: JSD_beta(s, t) = JSD_{1-beta}(t, s).
        np.testing.assert_allclose(a, nine(ZT, ZS), rtol=1e-5)

    @parameterized.parameters((0.0, 'forward_kl'), (1.0, 'reverse_kl'))
    def test_end_points_are_the_kls(self, beta, kl):
        np.testing.assert_allclose(jit(losses.jsd, beta=beta)(ZS, ZT), NP_REFERENCE[kl](ZS, ZT),
                                   rtol=2e-5, atol=2e-6)

    def test_other_betas_match_numpy(self):
        for beta in (0.5, 0.9):
            np.testing.assert_allclose(jit(losses.jsd, beta=beta, temperature=1.5)(ZS, ZT),
                                       np_jsd(ZS, ZT, beta=beta, temperature=1.5),
                                       rtol=2e-5, atol=2e-6)

    def test_traced_beta_matches_concrete(self):
        traced = jit(lambda b: losses.jsd(ZS, ZT, beta=b))
        for beta in (0.0, 0.3, 1.0):
            np.testing.assert_allclose(traced(beta), np_jsd(ZS, ZT, beta=beta), rtol=2e-5,
                                       atol=2e-6)

    def test_bf16_teacher_fp32_student_not_negative(self):
        zt = jnp.asarray(ZS + 1e-3, jnp.bfloat16)
        self.assertTrue(np.all(jit(losses.jsd, beta=0.5)(ZS, zt) >= 0))


class DkdTest(parameterized.TestCase):

    def test_parts_match_numpy(self):
        got = jit(losses.dkd_parts, temperature=4.0, alpha=0.5, beta=2.0)(ZS, ZT, labels=LABELS)
        want = np_dkd_parts(ZS, ZT, LABELS, temperature=4.0, alpha=0.5, beta=2.0)
        for key in ('tckd', 'nckd', 'total'):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-4, atol=1e-6)

    def test_identity_at_temperature_one(self):
        """TCKD + (1 - p_t^y) NCKD == KD at T = 1 (Zhao et al., eq. 4)."""
        with jax.enable_x64(True):
            zs, zt = np.float64(ZS), np.float64(ZT)
            parts = jit(losses.dkd_parts)(zs, zt, labels=LABELS)
            p_ty = np.take_along_axis(np_probs(zt, 1.0), LABELS[..., None], -1)[..., 0]
            np.testing.assert_allclose(parts['tckd'] + (1 - p_ty) * parts['nckd'],
                                       np_kd(zs, zt), rtol=1e-10)

    def test_labels_shape_checked(self):
        with pytest.raises(ConfigError, match='labels shape'):
            losses.dkd(ZS, ZT, labels=LABELS[0])


# --------------------------------------------------------------------------- batch-level
class DistTest(parameterized.TestCase):

    def test_matches_numpy(self):
        got = jit(losses.dist_parts, temperature=2.0, beta=0.5, gamma=2.0)(ZS, ZT)
        want = np_dist_parts(ZS, ZT, temperature=2.0, beta=0.5, gamma=2.0)
        for key in ('inter', 'intra', 'total'):
            np.testing.assert_allclose(got[key], want[key], rtol=1e-5)

    def test_masks_equal_slicing(self):
        dist_parts = jit(losses.dist_parts)
        for where, zs, zt in [(TOKEN_MASK, ZS[TOKEN_MASK], ZT[TOKEN_MASK]),
                              (VOCAB_MASK, ZS[..., VOCAB_KEEP], ZT[..., VOCAB_KEEP])]:
            got, want = dist_parts(ZS, ZT, where=where), np_dist_parts(zs, zt)
            for key in ('inter', 'intra', 'total'):
                np.testing.assert_allclose(got[key], want[key], rtol=1e-5)

    def test_identical_gradients_extremes(self):
        value_and_grad = jit(jax.value_and_grad(losses.dist))
        np.testing.assert_allclose(value_and_grad(ZS, ZT)[0], np_dist_parts(ZS, ZT)['total'],
                                   rtol=1e-5)
        self.assertLess(abs(float(value_and_grad(ZS, ZS)[0])), 1e-6)
        value, grad = value_and_grad(EXTREME_S, ZT)
        self.assertTrue(np.isfinite(value) and np.all(np.isfinite(grad)))
        check_grads32(functools.partial(losses.dist, temperature=2.0), ZS[0], ZT[0])


# ---------------------------------------------------------------------------- sparse teacher
def topk_inputs(k=3):
    ids = np.argsort(-ZT, axis=-1)[..., :k]
    return np.take_along_axis(np_log_softmax(np.float64(ZT)), ids, -1).astype(np.float32), ids


class TopkKlTest(parameterized.TestCase):

    @parameterized.parameters(('renormalise', 1.0), ('renormalise', 2.0), ('tail', 1.0))
    def test_matches_numpy(self, mode, temperature):
        lt, ids = topk_inputs()
        got = jit(losses.topk_kl, mode=mode, temperature=temperature)(ZS, lt, ids)
        want = np_topk_kl(ZS, lt, ids, mode=mode, temperature=temperature)
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)

    def test_full_k_tail_is_forward_kl(self):
        lt, ids = topk_inputs(k=SHAPE[-1])
        np.testing.assert_allclose(jit(losses.topk_kl, mode='tail')(ZS, lt, ids),
                                   np_forward_kl(ZS, ZT), rtol=1e-5, atol=1e-6)

    @parameterized.parameters('renormalise', 'tail')
    def test_mask_grad_extremes(self, mode):
        lt, ids = topk_inputs()
        m = TOKEN_MASK
        got = jit(losses.topk_kl, mode=mode)(ZS, lt, ids, where=m)
        np.testing.assert_allclose(got[m], np_topk_kl(ZS[m], lt[m], ids[m], mode=mode),
                                   rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got[~m], 0.0)
        # -inf teacher entries (zero probability) after the top-1, and +-1e4 student logits.
        lt_inf = np.where((lt > -1.0) | (np.arange(3) == 0), lt, -np.inf).astype(np.float32)
        value, grad = jit(jax.value_and_grad(
            lambda a: jnp.sum(losses.topk_kl(a, lt_inf, ids, mode=mode))))(EXTREME_S)
        self.assertTrue(np.isfinite(value) and np.all(np.isfinite(grad)))
        check_grads32(lambda a: losses.topk_kl(a, lt[0], ids[0], mode=mode), ZS[0])


# ----------------------------------------------------------------------------- cross-entropy
class CrossEntropyTest(parameterized.TestCase):

    def test_matches_numpy_and_optax(self):
        import optax

        got = jit(losses.ce)(ZS, LABELS)
        self.assertIs(losses.ce, losses.softmax_cross_entropy)
        np.testing.assert_allclose(got, np_ce(ZS, LABELS), rtol=1e-6)
        np.testing.assert_allclose(
            got, optax.losses.softmax_cross_entropy_with_integer_labels(ZS, LABELS), rtol=1e-6)

    def test_mask_grad_extremes(self):
        m = TOKEN_MASK
        ce = jit(losses.ce)
        got = ce(ZS, LABELS, where=m)
        np.testing.assert_allclose(got[m], np_ce(ZS[m], LABELS[m]), rtol=1e-6)
        np.testing.assert_array_equal(got[~m], 0.0)
        labels = np.where(m, LABELS, -100)  # ignore-index padding is fine once masked
        np.testing.assert_array_equal(ce(ZS, labels, where=m), got)
        grad = jit(jax.grad(lambda z: jnp.sum(losses.ce(z, LABELS))))(EXTREME_S)
        self.assertTrue(np.all(np.isfinite(grad)))
        check_grads32(lambda z: losses.ce(z, LABELS[0]), ZS[0])

    @parameterized.parameters(-1, 0)
    def test_gathered_and_one_hot_forms_agree(self, axis):
        """No mask or a token mask takes the gathered form; an all-True vocabulary mask takes
        the one-hot form: same values and gradients, out-of-range labels included."""
        z = np.moveaxis(ZS, -1, axis)
        labels = np.where(TOKEN_MASK, LABELS, -100)
        all_vocab = np.ones((1,) * ZS.ndim, bool)
        for token_mask in (None, TOKEN_MASK):
            def gathered(z, token_mask=token_mask):
                return losses.ce(z, labels, where=token_mask, axis=axis)

            def one_hot(z, token_mask=token_mask):
                out = losses.ce(z, labels, where=all_vocab, axis=axis)
                return out if token_mask is None else jnp.where(token_mask, out, 0.0)

            got, want = jit(gathered)(z), jit(one_hot)(z)
            np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
            np.testing.assert_array_equal(got[labels == -100], 0.0)
            np.testing.assert_allclose(jit(jax.grad(lambda z: jnp.sum(gathered(z))))(z),
                                       jit(jax.grad(lambda z: jnp.sum(one_hot(z))))(z),
                                       rtol=1e-5, atol=1e-7)


# --------------------------------------------------------------------------- feature losses
H_S = RNG.standard_normal((3, 4, 5)).astype(np.float32)  # [B, T, d_s]
H_T = RNG.standard_normal((3, 4, 6)).astype(np.float32)  # [B, T, d_t]
PROJ = (0.5 * RNG.standard_normal((5, 6))).astype(np.float32)
MAPS_S = RNG.standard_normal((3, 4, 4, 2)).astype(np.float32)  # NHWC, 2 student channels
MAPS_T = RNG.standard_normal((3, 4, 4, 5)).astype(np.float32)  # 5 teacher channels
EMB_S = RNG.standard_normal((5, 3)).astype(np.float32)  # [N, d_s]
EMB_T = RNG.standard_normal((5, 4)).astype(np.float32)  # [N, d_t]


class FeatureLossTest(parameterized.TestCase):

    @parameterized.parameters(('feature_mse', np_feature_mse), ('feature_cosine',
                                                               np_feature_cosine))
    def test_projected_features(self, name, reference):
        loss = losses.get(name)

        def run(h_s, projection):
            value, vjp = jax.vjp(lambda p: loss(h_s, H_T, projection=p, where=TOKEN_MASK),
                                 projection)
            return value, vjp(jnp.ones_like(value))[0], loss(H_T, H_T)

        value, grad_projection, identical = jit(run)(H_S, PROJ)
        m = TOKEN_MASK
        np.testing.assert_allclose(value[m], reference(H_S[m] @ PROJ, H_T[m]), rtol=1e-5)
        np.testing.assert_array_equal(value[~m], 0.0)
        self.assertGreater(np.abs(grad_projection).max(), 0.0)  # the projection is learned
        np.testing.assert_allclose(identical, 0.0, atol=1e-6)
        check_grads32(lambda h: loss(h, H_T[0], projection=PROJ), H_S[0])
        with pytest.raises(ConfigError, match=r'student width 5 != teacher width 6.*projection'):
            loss(H_S, H_T)

    def test_feature_mse_dtype_and_axis(self):
        value = jit(losses.feature_mse, axis=0)(np.moveaxis(H_S @ PROJ, -1, 0),
                                                np.moveaxis(H_T, -1, 0))
        np.testing.assert_allclose(value, np_feature_mse(H_S @ PROJ, H_T), rtol=1e-5)
        bf16 = jit(losses.feature_mse)(jnp.asarray(H_T, jnp.bfloat16), H_T)
        self.assertEqual(bf16.dtype, jnp.float32)

    def test_attention_transfer(self):
        m = np.array([True, False, True])
        value = jit(losses.attention_transfer)(MAPS_S, MAPS_T, where=m)
        np.testing.assert_allclose(value[m], np_attention_transfer(MAPS_S[m], MAPS_T[m]),
                                   rtol=1e-5)
        np.testing.assert_array_equal(value[~m], 0.0)
        np.testing.assert_allclose(jit(losses.attention_transfer)(MAPS_S, 3 * MAPS_S), 0.0,
                                   atol=1e-6)
        check_grads32(lambda h: losses.attention_transfer(h, MAPS_T[:2]), MAPS_S[:2])
        with pytest.raises(ConfigError, match='student map'):
            losses.attention_transfer(MAPS_S, MAPS_T[:, :2])

    def test_rkd(self):
        rkd = jit(losses.rkd, distance_weight=25.0, angle_weight=50.0)
        np.testing.assert_allclose(rkd(EMB_S, EMB_T), np_rkd(EMB_S, EMB_T), rtol=1e-5)
        # Relations are invariant to rotation, translation and (distances normalised) scale.
        rotation, _ = np.linalg.qr(RNG.standard_normal((3, 3)))
        moved = (2.0 * EMB_S @ rotation + 1.0).astype(np.float32)
        self.assertLess(float(rkd(EMB_S, moved)), 1e-5)
        m = np.array([True, True, False, True, True])
        np.testing.assert_allclose(rkd(EMB_S, EMB_T, where=m), np_rkd(EMB_S[m], EMB_T[m]),
                                   rtol=1e-5)
        check_grads32(lambda x: losses.rkd(x, EMB_T, distance_weight=1.0, angle_weight=2.0),
                      EMB_S)
        with pytest.raises(ConfigError, match='student batch 5 != teacher batch 4'):
            losses.rkd(EMB_S, EMB_T[:4])


    def test_similarity_mse(self):
        loss = jit(losses.similarity_mse)
        np.testing.assert_allclose(loss(EMB_S, EMB_T), np_similarity_mse(EMB_S, EMB_T),
                                   rtol=1e-5)
        # Cosines ignore rotation and per-example scale; any widths may be compared.
        rotation, _ = np.linalg.qr(RNG.standard_normal((3, 3)))
        scales = np.array([[1.0], [2.0], [0.5], [3.0], [1.5]])
        moved = (scales * EMB_S @ rotation).astype(np.float32)
        self.assertLess(float(loss(EMB_S, moved)), 1e-10)
        m = np.array([True, True, False, True, True])
        np.testing.assert_allclose(loss(EMB_S, EMB_T, where=m),
                                   np_similarity_mse(EMB_S[m], EMB_T[m]), rtol=1e-5)
        zero = EMB_S.copy()
        zero[0] = 0.0
        self.assertTrue(np.isfinite(float(loss(zero, EMB_T))))
        check_grads32(lambda x: losses.similarity_mse(x, EMB_T), EMB_S)
        with pytest.raises(ConfigError, match='student batch 5 != teacher batch 4'):
            losses.similarity_mse(EMB_S, EMB_T[:4])


# -------------------------------------------------------------------------------- reduction
class TokenMeanTest(parameterized.TestCase):

    def test_padding_excluded(self):
        per_token = RNG.random((3, 4)).astype(np.float32)
        np.testing.assert_allclose(losses.token_mean(per_token, TOKEN_MASK),
                                   per_token[TOKEN_MASK].mean(), rtol=1e-6)
        np.testing.assert_allclose(losses.token_mean(per_token), per_token.mean(), rtol=1e-6)
        self.assertEqual(float(losses.token_mean(per_token, np.zeros((3, 4), bool))), 0.0)

    def test_micro_batches_with_global_normalizer_equal_full_batch(self):
        """Summing micro-batch means over the window's token count == the full-batch mean."""
        per_token = RNG.random((8, 5)).astype(np.float32)
        mask = RNG.random((8, 5)) < 0.5
        mask[0, :] = False  # a micro-batch row with no valid token at all
        full = losses.token_mean(per_token, mask)
        normalizer = mask.sum()
        for splits in ([4, 4], [2, 2, 4], [2, 2, 2, 2], [4, 2, 2]):
            bounds = np.cumsum([0] + splits)
            accumulated = sum(
                losses.token_mean(per_token[a:b], mask[a:b], normalizer=normalizer)
                for a, b in zip(bounds[:-1], bounds[1:]))
            np.testing.assert_allclose(accumulated, full, rtol=1e-6)
        # A per-micro-batch mean (the classic bug) does not equal it.
        naive = np.mean([losses.token_mean(per_token[a:a + 4], mask[a:a + 4]) for a in (0, 4)])
        self.assertGreater(abs(float(naive - full)), 1e-4)

    def test_gradients_of_accumulated_micro_batches(self):
        zs, zt, m = ZS.reshape(12, 7), ZT.reshape(12, 7), TOKEN_MASK.reshape(12)

        def full(a):
            return losses.token_mean(losses.kd(a, zt, where=m), m)

        def accumulated(a):
            return sum(losses.token_mean(losses.kd(a[i:i + 4], zt[i:i + 4], where=m[i:i + 4]),
                                         m[i:i + 4], normalizer=m.sum()) for i in (0, 4, 8))

        grads = jit(lambda a: (jax.grad(full)(a), jax.grad(accumulated)(a)))(zs)
        np.testing.assert_allclose(grads[0], grads[1], rtol=1e-5, atol=1e-8)


# ---------------------------------------------------------------------- validation and errors
class ValidationTest(parameterized.TestCase):

    def test_get_unknown_suggests(self):
        with pytest.raises(ConfigError, match=r"unknown loss 'kdd': did you mean 'kd'\?.* "
                                              r"known: .*forward_kl"):
            losses.get('kdd')
        self.assertIs(losses.get('jsd'), losses.jsd)
        self.assertEqual(set(losses.POINTWISE) - set(losses.REGISTRY), set())

    @parameterized.parameters(
        ('kd', {'temperature': 0.0}, r'temperature=0.0 .*must be > 0'),
        ('kd', {'temperature': -1}, r'temperature=-1 .*must be > 0'),
        ('jsd', {'temperature': float('nan')}, r'temperature=nan'),
        ('jsd', {'beta': 1.5}, r"beta=1.5 is invalid for loss 'jsd': beta must be in \[0, 1\]"),
        ('jsd', {'beta': -0.1}, r'beta=-0.1 .*\[0, 1\]'),
        ('skew_kl', {'alpha': 2.0}, r'alpha=2.0 .*\[0, 1\]'),
        ('skew_rkl', {'alpha': -1.0}, r'alpha=-1.0 .*\[0, 1\]'),
        ('dkd', {'beta': -8.0}, r'beta=-8.0 .*>= 0'),
        ('dist', {'gamma': -1.0}, r'gamma=-1.0 .*>= 0'),
        ('rkd', {'angle_weight': -1.0}, r'angle_weight=-1.0'),
        ('kd', {'temperature': '2'}, r"temperature='2' .*must be a number"),
        ('kd', {'temprature': 2.0}, r"no hyper-parameter 'temprature': did you mean "
                                    r"'temperature'"),
        ('jsd', {'alpha': 0.5}, r"loss 'jsd' has no hyper-parameter 'alpha'.*beta"),
        ('dkd', {'labels': [1]}, r"no hyper-parameter 'labels'"),
        ('topk_kl', {'mode': 'renormalize'}, r"mode='renormalize' .*did you mean "
                                             r"'renormalise'"),
        ('topk_kl', {'mode': 'tail', 'temperature': 2.0}, r"temperature=2.0 .*mode='tail'"),
        ('nope', {}, r"unknown loss 'nope'"),
    )
    def test_validate_hyper_names_the_key(self, name, hyper, match):
        with pytest.raises(ConfigError, match=match):
            losses.validate_hyper(name, **hyper)

    def test_validate_hyper_accepts_good_values(self):
        losses.validate_hyper('kd', temperature=2.0)
        losses.validate_hyper('jsd', beta=0.0, temperature=1)
        losses.validate_hyper('dkd', alpha=1.0, beta=8.0, temperature=4.0)
        losses.validate_hyper('topk_kl', mode='tail', temperature=1.0)
        self.assertEqual(losses.hyper_names('jsd'), ('temperature', 'axis', 'beta'))

    def test_losses_check_concrete_values_when_called(self):
        with pytest.raises(ConfigError, match='temperature=0'):
            losses.kd(ZS, ZT, temperature=0)
        with pytest.raises(ConfigError, match='beta=2'):
            losses.jsd(ZS, ZT, beta=2)

    def test_bad_shapes(self):
        with pytest.raises(ConfigError, match=r'student vocab 32000 != teacher vocab 32001'):
            losses.check_same_vocab(32000, 32001)
        with pytest.raises(ConfigError, match=r'where has shape \(3,\)'):
            losses.kd(ZS, ZT, where=np.ones(3, bool))
        with pytest.raises(ConfigError, match='student_logits shape'):
            losses.kd(ZS, ZT[:2])
        with pytest.raises(ConfigError, match='axis=3'):
            losses.kd(ZS, ZT, axis=3)
        lt, ids = topk_inputs()
        with pytest.raises(ConfigError, match='teacher_topk_logprobs'):
            losses.topk_kl(ZS, lt[..., :2], ids)


def test_docstring_examples():
    """The docstrings' examples run and print what they say."""
    result = doctest.testmod(losses, optionflags=doctest.ELLIPSIS)
    np.set_printoptions()  # the examples set jnp (= numpy) print options
    assert result.failed == 0 and result.attempted >= 5, result
