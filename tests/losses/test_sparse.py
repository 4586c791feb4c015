"""jaxdistill/losses/sparse.py: topk_kl against LOSSES.md and numpy."""


import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from jaxdistill import losses
from tests.losses.reference import (
    EXTREME_S,
    REF_ZS,
    REF_ZT,
    SHAPE,
    TOKEN_MASK,
    ZS,
    ZT,
    assert_reference,
    check_grads32,
    jit,
    np_forward_kl,
    np_log_softmax,
    np_topk_kl,
    topk_inputs,
)


class ReferenceValuesTest(parameterized.TestCase):
    """The specification's (LOSSES.md) float64 values, to rtol 1e-5, computed with x64 enabled."""

    @parameterized.parameters(('renormalise', [0.245813, 1.478841]),
                              ('tail', [0.108064, 0.901960]))
    def test_topk_kl(self, mode, want):
        with jax.enable_x64(True):
            zt = np.float64(REF_ZT)
            ids = np.argsort(-zt, axis=-1)[:, :2]
            lt = np.take_along_axis(np_log_softmax(zt), ids, -1)
            got = jit(losses.topk_kl, mode=mode)(np.float64(REF_ZS), lt, np.int32(ids))
        assert_reference(got, want, np_topk_kl(np.array(REF_ZS), lt, ids, mode=mode))


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
