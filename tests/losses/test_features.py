"""jaxdistill/losses/features.py: feature_mse, feature_cosine, attention_transfer."""


import jax
import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdistill import losses
from jaxdistill.errors import ConfigError
from tests.losses.reference import (
    H_S,
    H_T,
    MAPS_S,
    MAPS_T,
    PROJ,
    TOKEN_MASK,
    check_grads32,
    jit,
    np_attention_transfer,
    np_feature_cosine,
    np_feature_mse,
)


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
