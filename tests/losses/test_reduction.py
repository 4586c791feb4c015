"""jaxdistill/losses/reduction.py: token_mean, global normalisation, accumulation."""


import jax
import numpy as np
from absl.testing import parameterized

from jaxdistill import losses
from tests.losses.reference import (
    RNG,
    TOKEN_MASK,
    ZS,
    ZT,
    jit,
)


class TokenMeanTest(parameterized.TestCase):

    def test_padding_excluded(self):
        per_token = RNG.random((3, 4)).astype(np.float32)
        np.testing.assert_allclose(losses.token_mean(per_token, TOKEN_MASK),
                                   per_token[TOKEN_MASK].mean(), rtol=1e-6)
        np.testing.assert_allclose(losses.token_mean(per_token), per_token.mean(), rtol=1e-6)
        self.assertEqual(float(losses.token_mean(per_token, np.zeros((3, 4), bool))), 0.0)

    def test_micro_batches_with_global_normalizer_equal_full_batch(self):
        """Summing micro-batch means over the window's token count == the full-batch mean."""
        # its own generator: the module's shared RNG depends on which tests ran before
        rng = np.random.default_rng(11)
        per_token = rng.random((8, 5)).astype(np.float32)
        mask = rng.random((8, 5)) < 0.5
        mask[0, :] = False  # a micro-batch row with no valid token at all
        mask[4:6, :] = True  # the two halves hold different token counts
        assert mask[:4].sum() != mask[4:].sum()
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
