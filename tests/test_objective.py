"""jaxdistill/objective.py: composition from config, schedules, checks at config time."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import objective
from jaxdistill.errors import ConfigError


def np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def reference(zs, zt, y, alpha, t):
    """alpha * T^2 KL(p_t || p_s) at T + (1 - alpha) * CE, in float64 (LOSSES.md)."""
    ls, lt = np_log_softmax(zs / t), np_log_softmax(zt / t)
    kd = t**2 * np.sum(np.exp(lt) * (lt - ls), -1)
    ce = -np_log_softmax(zs)[np.arange(len(y)), y]
    return np.mean(alpha * kd + (1 - alpha) * ce), np.mean(kd), np.mean(ce)


def test_default_objective_matches_float64_reference():
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=(2, 16, 10)) * 3
    y = rng.integers(0, 10, 16)
    obj = objective.build([{'name': 'kd', 'weight': 0.9, 'temperature': 4.0},
                           {'name': 'ce', 'weight': 0.1}], total_steps=10)
    loss, metrics = jax.jit(obj)(jnp.int32(0), jnp.asarray(zs, jnp.float32),
                                 jnp.asarray(zt, jnp.float32), jax.nn.one_hot(y, 10))
    want, kd, ce = reference(zs, zt, y, 0.9, 4.0)
    np.testing.assert_allclose(loss, want, rtol=1e-5)
    np.testing.assert_allclose(metrics['distill/kd'], kd, rtol=1e-5)
    np.testing.assert_allclose(metrics['distill/ce'], ce, rtol=1e-5)
    assert float(metrics['loss']) == float(loss)
    assert obj.needs_teacher and not objective.label_only().needs_teacher


def test_mask_excludes_rows():
    rng = np.random.default_rng(1)
    zs, zt = rng.normal(size=(2, 8, 5)).astype(np.float32)
    targets = jax.nn.one_hot(rng.integers(0, 5, 8), 5)
    obj = objective.build([{'name': 'kd', 'temperature': 2.0}, {'name': 'ce'}], 1)
    mask = np.array([1, 1, 1, 0, 1, 0, 1, 1], bool)
    masked, _ = obj(0, zs, zt, targets, mask)
    sliced, _ = obj(0, zs[mask], zt[mask], targets[mask])
    np.testing.assert_allclose(masked, sliced, rtol=1e-6)


@pytest.mark.parametrize('kind,start,end,step,want', [
    ('linear', 1.0, 0.0, 25, 0.75), ('cosine', 1.0, 0.0, 50, 0.5), ('cosine', 1.0, 0.0, 100, 0.0),
    ('linear', 0.0, 1.0, 200, 1.0), ('constant', 0.3, 0.3, 70, 0.3),
])
def test_weight_schedules(kind, start, end, step, want):
    obj = objective.build([{'name': 'ce', 'weight': {'schedule': kind, 'start': start,
                                                     'end': end}}], total_steps=100)
    z = jnp.zeros((2, 3))
    loss, _ = obj(jnp.int32(step), z, None, jax.nn.one_hot(jnp.array([0, 1]), 3))
    np.testing.assert_allclose(loss, want * np.log(3), rtol=1e-5)


def test_scheduled_temperature_is_traced():
    obj = objective.build([{'name': 'kd', 'temperature': {'schedule': 'linear', 'start': 4.0,
                                                           'end': 1.0}}], total_steps=10)
    zs, zt = jnp.array([[1.0, 0.0, -1.0]]), jnp.array([[0.0, 2.0, 0.5]])
    at = jax.jit(lambda s: obj(s, zs, zt, jnp.ones((1, 3)) / 3)[0])
    t0 = reference(np.asarray(zs), np.asarray(zt), [0], 1.0, 4.0)[1]
    t10 = reference(np.asarray(zs), np.asarray(zt), [0], 1.0, 1.0)[1]
    np.testing.assert_allclose([at(0), at(10)], [t0, t10], rtol=1e-5)


@pytest.mark.parametrize('entries,match', [
    ([{'name': 'kdd'}], "did you mean 'kd'"),
    ([{'weight': 1.0}], "has no 'name'"),
    ([{'name': 'kd', 'temperature': 0.0}], 'temperature'),
    ([{'name': 'kd', 'temperature': {'schedule': 'linear', 'start': 2.0, 'end': -1.0}}],
     'temperature'),
    ([{'name': 'jsd', 'beta': 1.5}], 'beta'),
    ([{'name': 'ce', 'temperature': 2.0}], "'ce'.*only a weight"),
    ([{'name': 'kd', 'weight': 'lots'}], 'weight'),
    ([{'name': 'kd', 'weight': {'schedule': 'step'}}], 'schedule'),
])
def test_bad_entries(entries, match):
    with pytest.raises(ConfigError, match=match):
        objective.build(entries, total_steps=10)
