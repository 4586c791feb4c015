"""jaxdistill/losses/cross_entropy.py: ce against numpy and optax; its two forms agree."""


import jax
import jax.numpy as jnp
import numpy as np
from absl.testing import parameterized

from jaxdistill import losses
from tests.losses.reference import (
    EXTREME_S,
    LABELS,
    TOKEN_MASK,
    ZS,
    check_grads32,
    jit,
    np_ce,
)


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
