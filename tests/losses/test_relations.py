"""jaxdistill/losses/relations.py: rkd and similarity_mse (batch-level, any widths)."""


import numpy as np
import pytest
from absl.testing import parameterized

from jaxdistill import losses
from jaxdistill.errors import ConfigError
from tests.losses.reference import (
    EMB_S,
    EMB_T,
    RNG,
    check_grads32,
    jit,
    np_rkd,
    np_similarity_mse,
)


class RelationalLossTest(parameterized.TestCase):

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
