"""jaxdistill/train/softmax_terms.py: the closed-form chunk values and logit gradient of
``ce`` / ``kd`` / ``forward_kl`` against autodiff of the terms' own code (the path it
replaces, `Objective._term`) and against float64 numpy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import objective
from jaxdistill.config import loss_entry
from jaxdistill.train import softmax_terms

N, V = 24, 37
OBJECTIVES = {
    'kd_T1_ce': [loss_entry('kd', weight=0.5, temperature=1.0), loss_entry('ce', weight=0.5)],
    'kd_T2_fkl_ce': [loss_entry('kd', weight=0.4, temperature=2.0),
                     loss_entry('forward_kl', weight=0.3, temperature=1.5),
                     loss_entry('ce', weight=0.3)],
    'ce': [loss_entry('ce', weight=1.0)],
    'fkl_T1_kd_T1': [loss_entry('forward_kl', weight=0.3), loss_entry('kd', weight=0.7)],
}


def _inputs(seed=0):
    rng = np.random.default_rng(seed)
    zs = rng.normal(size=(N, V)).astype(np.float32) * 3
    zt = rng.normal(size=(N, V)).astype(np.float32) * 4 + 20  # an offset: shifts matter
    targets = rng.integers(0, V, N).astype(np.int32)
    targets[:2] = [-100, V]  # labels outside [0, V) select nothing
    return zs, zt, targets, rng


def _autodiff(obj, zs, zt, targets, masks, weights):
    """What `hidden_logits._fused` does without the closed form: each term's dense code."""
    def weighted(z):
        sums = []
        for j, term in enumerate(obj.terms):
            m = masks[:, j]
            mean = obj._term(term, jnp.zeros((), jnp.int32), z, zt, targets, m)
            sums.append(mean * jnp.sum(m, dtype=jnp.float32))
        sums = jnp.stack(sums)
        return jnp.dot(weights, sums), sums

    (_, sums), grad = jax.value_and_grad(weighted, has_aux=True)(jnp.asarray(zs))
    return sums, grad


def _numpy(terms, zs, zt, targets, masks, weights):
    """float64 reference: per-term masked sums and the gradient of ``weights @ sums``."""
    zs, zt = zs.astype(np.float64), zt.astype(np.float64)
    rows, vocab = zs.shape

    def softmax(z):
        e = np.exp(z - z.max(-1, keepdims=True))
        return e / e.sum(-1, keepdims=True)

    sums, grad = [], np.zeros_like(zs)
    for j, (name, t) in enumerate(terms):
        m = masks[:, j].copy()
        if name == 'ce':
            m &= (targets >= 0) & (targets < vocab)
            p = softmax(zs)
            y = np.where(m, targets, 0)
            value = -np.log(p[np.arange(rows), y])
            g = p.copy()
            g[np.arange(rows), y] -= 1
        else:
            ps, pt = softmax(zs / t), softmax(zt / t)
            scale = t * t if name == 'kd' else 1.0
            value = scale * np.sum(pt * (np.log(pt) - np.log(ps)), -1)
            g = scale / t * (ps - pt)
        sums.append(np.sum(np.where(m, value, 0.0)))
        grad += weights[j] * np.where(m[:, None], g, 0.0)
    return np.array(sums), grad


@pytest.mark.parametrize('name', sorted(OBJECTIVES))
def test_closed_form_equals_autodiff_and_float64(name):
    obj = objective.build(OBJECTIVES[name], 10)
    zs, zt, targets, rng = _inputs()
    masks = rng.random((N, len(obj.terms))) < 0.8
    weights = rng.uniform(0.1, 1.0, len(obj.terms)).astype(np.float32)
    terms = softmax_terms.plan(obj, range(len(obj.terms)), jnp.zeros((), jnp.int32))
    assert terms is not None
    got = jax.jit(softmax_terms.chunk, static_argnums=0)(terms, zs, zt, targets, masks,
                                                        weights)
    want = _autodiff(obj, zs, zt, targets, masks, weights)
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    ref_sums, ref_grad = _numpy(terms, zs, zt, targets, masks, weights)
    np.testing.assert_allclose(got[0], ref_sums, rtol=1e-5)
    np.testing.assert_allclose(got[1], ref_grad, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize('vocab', [12288, 4099])
def test_row_sums_over_blocks_and_by_reduction(vocab):
    """Row sums as dots over blocks of the vocabulary (12,288: three blocks of 4,096) and, for
    a vocabulary with no usable block length (the prime 4,099), by the reduction: values and
    gradient equal float64 numpy."""
    obj = objective.build(OBJECTIVES['kd_T2_fkl_ce'], 10)
    rng = np.random.default_rng(7)
    zs = rng.normal(size=(6, vocab)).astype(np.float32) * 3
    zt = rng.normal(size=(6, vocab)).astype(np.float32) * 4 + 20
    targets = rng.integers(0, vocab, 6).astype(np.int32)
    masks = rng.random((6, 3)) < 0.8
    weights = rng.uniform(0.1, 1.0, 3).astype(np.float32)
    terms = softmax_terms.plan(obj, (0, 1, 2), 0)
    sums, grad = jax.jit(softmax_terms.chunk, static_argnums=0)(terms, zs, zt, targets, masks,
                                                                weights)
    ref_sums, ref_grad = _numpy(terms, zs, zt, targets, masks, weights)
    np.testing.assert_allclose(sums, ref_sums, rtol=1e-5)
    np.testing.assert_allclose(grad, ref_grad, rtol=1e-5, atol=1e-9)


def test_row_sums_at_a_real_vocabulary_stay_accurate():
    """At V = 128,256 a single dot over the row accumulates in sequence (relative error ~2e-5
    against float64); the blocked sums stay at the reduction's accuracy."""
    x = np.exp(np.random.default_rng(8).normal(size=(4, 128256)) * 3).astype(np.float32)
    got = np.asarray(jax.jit(softmax_terms._rowsum)(x))[:, 0]
    want = x.astype(np.float64).sum(-1)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_identical_logits_give_exactly_zero():
    obj = objective.build(OBJECTIVES['fkl_T1_kd_T1'], 10)
    zs, _, targets, _ = _inputs(1)
    terms = softmax_terms.plan(obj, (0, 1), 0)
    sums, grad = softmax_terms.chunk(terms, zs, zs, targets, np.ones((N, 2), bool),
                                     np.ones(2, np.float32))
    assert float(jnp.max(jnp.abs(sums))) == 0.0 and float(jnp.max(jnp.abs(grad))) == 0.0


def test_fully_masked_chunk_gives_zero():
    obj = objective.build(OBJECTIVES['kd_T2_fkl_ce'], 10)
    zs, zt, targets, _ = _inputs(2)
    sums, grad = softmax_terms.chunk(softmax_terms.plan(obj, (0, 1, 2), 0), zs, zt, targets,
                                     np.zeros((N, 3), bool), np.ones(3, np.float32))
    assert not np.any(np.asarray(sums)) and not np.any(np.asarray(grad))


@pytest.mark.parametrize('losses', [
    [loss_entry('jsd', beta=0.3), loss_entry('ce')],  # no closed form here
    [loss_entry('kd', temperature={'schedule': 'linear', 'start': 2.0, 'end': 1.0})],
    [loss_entry('tvd')],
])
def test_plan_declines_what_it_has_no_closed_form_for(losses):
    obj = objective.build(losses, 10)
    assert softmax_terms.plan(obj, range(len(obj.terms)), 0) is None


def test_plan_reads_constant_temperatures():
    obj = objective.build(OBJECTIVES['kd_T2_fkl_ce'], 10)
    assert softmax_terms.plan(obj, (0, 1, 2), 0) == (('kd', 2.0), ('forward_kl', 1.5),
                                                      ('ce', 1.0))
