"""jaxdistill/losses/divergences.py: kd, forward_kl, reverse_kl, jsd, skew_kl, skew_rkl, tvd,
logit_mse against LOSSES.md and a float64 numpy reference; the per-token loss contract (every
per-token logit loss, dkd included: masks, axis, dtypes, extremes, gradients)."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized
from jax.test_util import check_grads

from jaxdistill import losses
from jaxdistill.errors import ConfigError
from tests.losses.reference import (
    EXTREME_S,
    EXTREME_T,
    INDEXED,
    LABEL_KEPT,
    LABELS,
    NP_REFERENCE,
    PER_TOKEN,
    REF_ZS,
    REF_ZT,
    RNG,
    SHAPE,
    SLICED_LABELS,
    TOKEN_MASK,
    VOCAB_KEEP,
    VOCAB_MASK,
    ZS,
    ZT,
    assert_reference,
    call,
    check_grads32,
    jit,
    np_call,
    np_jsd,
)


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


# ------------------------------------------------------------- per-token logit-loss properties
# Compiling is what costs time on 2 CPU cores (~0.1-0.4 s per XLA program), so the per-token
# properties are computed for all PER_TOKEN losses at once, stacked on a leading axis, by one
# jitted program per property set; XLA shares the log-softmaxes between the losses. The tests
# stay one per (property, loss) and read their row.


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
