"""jaxdistill/losses/decomposed.py: dkd and dist, their parts, against LOSSES.md and numpy."""

import functools

import jax
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdistill import losses
from jaxdistill.errors import ConfigError
from tests.losses.reference import (
    DIST_ZS,
    DIST_ZT,
    EXTREME_S,
    LABELS,
    REF_Y,
    REF_ZS,
    REF_ZT,
    TOKEN_MASK,
    VOCAB_KEEP,
    VOCAB_MASK,
    ZS,
    ZT,
    assert_reference,
    check_grads32,
    jit,
    np_dist_parts,
    np_dkd_parts,
    np_kd,
    np_probs,
)


class ReferenceValuesTest(parameterized.TestCase):
    """The specification's (LOSSES.md) float64 values, to rtol 1e-5, computed with x64 enabled."""

    def test_dkd_parts(self):
        with jax.enable_x64(True):
            got = jit(losses.dkd_parts, temperature=4.0, alpha=1.0, beta=8.0)(
                np.float64(REF_ZS), np.float64(REF_ZT), labels=np.int32(REF_Y))
        ref = np_dkd_parts(np.array(REF_ZS), np.array(REF_ZT), REF_Y, temperature=4.0)
        assert_reference(got['total'], [0.131234, 3.622279], ref['total'])
        assert_reference(got['tckd'], [0.095542, 0.755401], ref['tckd'])
        assert_reference(got['nckd'], [0.004462, 0.358360], ref['nckd'])

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
