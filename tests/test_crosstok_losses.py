"""Cross-tokenizer losses against float64 numpy references; masks, gradients, identities."""

from __future__ import annotations

import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.test_util import check_grads

from jaxdistill import losses
from jaxdistill.crosstok import align
from jaxdistill.crosstok import losses as xl
from jaxdistill.data.tokenizer import BPETokenizer


def _softmax(z, t=1.0):
    z = np.asarray(z, np.float64) / t
    e = np.exp(z - z.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _uld_ref(zs, zt, t=1.0):
    ps, pt = -np.sort(-_softmax(zs, t), -1), -np.sort(-_softmax(zt, t), -1)
    v = max(ps.shape[-1], pt.shape[-1])
    pad = lambda p: np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, v - p.shape[-1])])
    return np.abs(pad(ps) - pad(pt)).sum(-1)


def _vocab_kl_ref(zs, zt, ss, st, t=1.0, fold=True):
    ps, pt = _softmax(zs, t), _softmax(zt, t)
    qs, qt = ps[..., ss], pt[..., st]
    if fold:
        qs = np.concatenate([qs, 1 - qs.sum(-1, keepdims=True)], -1)
        qt = np.concatenate([qt, 1 - qt.sum(-1, keepdims=True)], -1)
    else:
        qs, qt = qs / qs.sum(-1, keepdims=True), qt / qt.sum(-1, keepdims=True)
    with np.errstate(divide='ignore', invalid='ignore'):
        terms = np.where(qt > 0, qt * (np.log(qt) - np.log(qs)), 0.0)
    return t * t * terms.sum(-1)


def _span_kl_ref(ls, lt, t=1.0):
    ps, pt = np.exp(np.asarray(ls, np.float64) / t), np.exp(np.asarray(lt, np.float64) / t)
    return pt * np.log(pt / ps) + (1 - pt) * np.log((1 - pt) / (1 - ps))


RNG = np.random.default_rng(0)
ZS = RNG.normal(size=(2, 5, 7)).astype(np.float32) * 2
ZT = RNG.normal(size=(2, 5, 11)).astype(np.float32) * 2
SHARED_S = np.array([0, 2, 3, 5, 6])
SHARED_T = np.array([4, 1, 9, 0, 7])
MASK = np.array([[1, 1, 0, 1, 0], [0, 1, 1, 1, 1]], bool)


@pytest.mark.parametrize('t', [1.0, 2.0])
def test_uld_matches_reference_and_masks(t):
    got = jax.jit(lambda a, b: xl.uld(a, b, temperature=t))(ZS, ZT)
    np.testing.assert_allclose(got, _uld_ref(ZS, ZT, t), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xl.uld(ZT, ZS, temperature=t), _uld_ref(ZS, ZT, t), rtol=1e-5)
    masked = xl.uld(ZS, ZT, temperature=t, where=MASK)
    np.testing.assert_array_equal(np.asarray(masked)[~MASK], 0.0)
    np.testing.assert_allclose(np.asarray(masked)[MASK], _uld_ref(ZS, ZT, t)[MASK], rtol=1e-5)
    assert float(jnp.max(xl.uld(ZS, ZS))) < 1e-6  # identical distributions


@pytest.mark.parametrize('fold', [True, False])
@pytest.mark.parametrize('t', [1.0, 3.0])
def test_vocab_kl_matches_reference(fold, t):
    got = xl.vocab_kl(ZS, ZT, shared_student=SHARED_S, shared_teacher=SHARED_T, temperature=t,
                      fold=fold, where=MASK)
    ref = _vocab_kl_ref(ZS, ZT, SHARED_S, SHARED_T, t, fold)
    np.testing.assert_allclose(np.asarray(got)[MASK], ref[MASK], rtol=1e-4, atol=1e-6)
    np.testing.assert_array_equal(np.asarray(got)[~MASK], 0.0)


@pytest.mark.parametrize('t', [1.0, 2.0, 4.0])
def test_vocab_kl_with_identical_vocabularies_is_kd(t):
    ids = np.arange(ZS.shape[-1])
    zt = RNG.normal(size=ZS.shape).astype(np.float32)
    # both buckets empty: what `crosstok.objective` folds into (kd's own float32 error at
    # T = 4 is 4e-6 against float64; this equals kd itself)
    got = xl.vocab_kl(ZS, zt, shared_student=ids, shared_teacher=ids, temperature=t)
    np.testing.assert_allclose(got, losses.kd(ZS, zt, temperature=t), rtol=0, atol=1e-6)
    renormalised = xl.vocab_kl(ZS, zt, shared_student=ids, shared_teacher=ids, temperature=t,
                               fold=False)
    np.testing.assert_allclose(renormalised, losses.kd(ZS, zt, temperature=t), rtol=1e-5)


def test_vocab_kl_empty_student_bucket_is_infinite_when_folded():
    # the student's vocabulary is wholly shared, the teacher has an outside id: folded KL is
    # infinite (so the objective renormalises), renormalised KL is finite
    zs, zt = ZS[..., :3], ZT[..., :4]
    ids = np.arange(3)
    assert np.isinf(np.asarray(xl.vocab_kl(zs, zt, shared_student=ids,
                                           shared_teacher=ids))).all()
    assert np.isfinite(np.asarray(xl.vocab_kl(zs, zt, shared_student=ids, shared_teacher=ids,
                                              fold=False))).all()


def test_span_kl_matches_reference_and_is_finite_at_extremes():
    ls = -np.abs(RNG.normal(size=(3, 4))).astype(np.float32) * 3
    lt = -np.abs(RNG.normal(size=(3, 4))).astype(np.float32) * 3
    for t in (1.0, 2.0):
        np.testing.assert_allclose(xl.span_kl(ls, lt, temperature=t), _span_kl_ref(ls, lt, t),
                                   rtol=1e-4, atol=1e-6)
    extreme = xl.span_kl(jnp.array([0.0, -1e4, -1e-9, -50.0]), jnp.array([-1e4, 0.0, -30., -1e-9]))
    assert np.isfinite(np.asarray(extreme)).all()
    grads = jax.grad(lambda a: xl.span_kl(a, jnp.array([-1e4, 0.0, -30., -1e-9])).sum())(
        jnp.array([0.0, -1e4, -1e-9, -50.0]))
    assert np.isfinite(np.asarray(grads)).all()
    mask = np.array([[1, 0, 1, 1]] * 3, bool)
    np.testing.assert_array_equal(np.asarray(xl.span_kl(ls, lt, where=mask))[~mask], 0.0)


def test_span_logprobs_sums_by_span():
    lp = RNG.normal(size=(2, 6)).astype(np.float32)
    spans = np.array([[0, 0, 1, 6, 2, 2], [1, 1, 1, 0, 6, 6]])
    got = np.asarray(xl.span_logprobs(lp, spans, 6))
    ref = np.zeros((2, 6))
    for b in range(2):
        for j in range(6):
            if spans[b, j] < 6:
                ref[b, spans[b, j]] += lp[b, j]
    np.testing.assert_allclose(got, ref, rtol=1e-6, atol=1e-6)


def test_gradients():
    kw = dict(rtol=2e-2, atol=2e-2, eps=1e-3)
    zs, zt = jnp.asarray(ZS[:1, :2].astype(np.float64)), jnp.asarray(ZT[:1, :2].astype(np.float64))
    with jax.enable_x64(True):
        check_grads(lambda a: xl.uld(a, zt, temperature=2.0), (zs,), order=1, modes=['rev'], **kw)
        for fold in (True, False):
            check_grads(lambda a, fold=fold: xl.vocab_kl(a, zt, shared_student=SHARED_S,
                                              shared_teacher=SHARED_T, fold=fold),
                        (zs,), order=1, modes=['rev'], **kw)
        ls = jnp.array([-0.3, -2.0, -7.0], jnp.float64)
        check_grads(lambda a: xl.span_kl(a, jnp.array([-1.0, -0.1, -5.0], jnp.float64),
                                         temperature=2.0), (ls,), order=1, modes=['rev'], **kw)
    # masked positions get zero gradient
    g = jax.grad(lambda a: xl.uld(a, ZT, where=MASK).sum())(jnp.asarray(ZS))
    assert float(jnp.abs(g[~MASK]).max()) == 0.0


def test_aligned_kl_with_identical_tokenizers_is_kd():
    docs = ['Hello, wörld! def f(x):\n    return x ** 2  # 日本語\n' * 4, 'Another one.', 'x']
    bpe = BPETokenizer.train(docs, 300)
    vm = align.vocab_map(bpe, bpe)
    s = align.encode_stream(bpe, docs, 'data.tokenizer')
    al = align.Aligner(s, s, 16, 16, vm)
    rows = np.arange(al.num_rows)
    r, sr = al.rows(rows), al.student_rows(rows)
    v = bpe.vocab_size
    zs = RNG.normal(size=(len(rows), 16, v)).astype(np.float32)
    zt = RNG.normal(size=(len(rows), 16, v)).astype(np.float32)
    alignment = xl.Alignment(r['xt_pos'], r['xt_aligned'], r['xt_same'], r['xt_span'],
                             r['xt_teacher_span'], r['xt_span_mask'])
    lt = jax.nn.log_softmax(zt, -1)
    vocab = types.SimpleNamespace(shared_student=vm.shared_student,
                                  shared_teacher=vm.shared_teacher, fold=True)
    out = jax.jit(lambda a, b: xl.aligned_kl(
        a, sr['targets'], b, xl.target_logprobs(b, r['teacher_targets']), alignment, vocab,
        temperature=2.0))(zs, lt)
    kd = losses.token_mean(losses.kd(zs, zt, temperature=2.0), sr['mask'])
    np.testing.assert_allclose(out['token'], kd, rtol=1e-6, atol=1e-6)
    # one token per span: the span term is the mean binary KL of the target probabilities
    ref = _span_kl_ref(np.asarray(xl.target_logprobs(zs, sr['targets'])),
                       np.asarray(xl.target_logprobs(zt, sr['targets'])), 2.0)
    np.testing.assert_allclose(out['span'], ref[r['xt_span_mask'][:, :16] & sr['mask']].mean(),
                               rtol=1e-4)
    uld = xl.uld_term(zs, lt, alignment)['total']
    np.testing.assert_allclose(uld, _uld_ref(zs, zt)[sr['mask']].mean(), rtol=1e-4)
