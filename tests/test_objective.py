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


@pytest.mark.parametrize('weight,ok', [
    (-1.0, False), (-1e-9, False), (float('nan'), False), (float('inf'), False), (0.0, True),
    ({'schedule': 'linear', 'start': 1.0, 'end': -0.5}, False),
    ({'schedule': 'cosine', 'start': -0.1, 'end': 1.0}, False),
    ({'schedule': 'constant', 'start': -2.0}, False),
    ({'schedule': 'linear', 'start': 1.0, 'end': 0.0, 'steps': 5}, True),
    ({'schedule': 'cosine', 'start': 0.0, 'end': 2.0}, True),
])
def test_weights_must_stay_non_negative(weight, ok):
    """A negative weight maximises its term; a schedule may not pass below 0 anywhere."""
    entries = [{'name': 'ce', 'weight': 1.0}, {'name': 'kd', 'weight': weight}]
    if ok:
        obj = objective.build(entries, total_steps=10)
        for step in range(11):
            assert float(objective._at(obj.terms[1].weight, jnp.asarray(step))) >= 0
        return
    with pytest.raises(ConfigError, match=r'^distill\.losses\[1\]\.weight=.* must be finite '
                                          r'and >= 0 throughout training'):
        objective.build(entries, total_steps=10)


def test_feature_terms_need_layers_and_project_widths():
    with pytest.raises(ConfigError, match=r"\[0\] \('feature_mse'\) needs the layers"):
        objective.build([{'name': 'feature_mse', 'student': 'conv0'}], 1)
    obj = objective.build([{'name': 'feature_mse', 'student': 'a', 'teacher': 'b'},
                           {'name': 'attention_transfer', 'student': 'a', 'teacher': 'c'},
                           {'name': 'rkd', 'student': 'e', 'teacher': 'f'}], 1)
    assert obj.student_taps == ('a', 'e') and obj.teacher_taps == ('b', 'c', 'f')
    proj = obj.projections({'a': (1, 4, 4, 8), 'e': (1, 16)},
                           {'b': (1, 4, 4, 32), 'c': (1, 4, 4, 3), 'f': (1, 64)})
    assert proj == {'distill.losses[0]': (8, 32)}
    with pytest.raises(ConfigError, match=r"layer 'a' \[1, 4, 4, 8\] and teacher layer 'b' "
                                          r'\[1, 2, 2, 8\] differ'):
        obj.projections({'a': (1, 4, 4, 8), 'e': (1, 16)},
                        {'b': (1, 2, 2, 8), 'c': (1, 4, 4, 3), 'f': (1, 64)})


def test_feature_mse_term_uses_projection_and_freezes_teacher():
    rng = np.random.default_rng(0)
    hs, ht = rng.normal(size=(3, 4, 2)), rng.normal(size=(3, 4, 5))
    proj = rng.normal(size=(2, 5))
    obj = objective.build([{'name': 'feature_mse', 'student': 's', 'teacher': 't'}], 1)

    def loss(hs, ht, proj):
        return obj(0, None, None, None, student_features={'s': hs},
                   teacher_features={'t': ht}, projections={'distill.losses[0]': proj})[0]

    args = [jnp.asarray(a, jnp.float32) for a in (hs, ht, proj)]
    np.testing.assert_allclose(loss(*args), np.mean((hs @ proj - ht) ** 2), rtol=1e-5)
    g_hs, g_ht, g_proj = jax.grad(loss, argnums=(0, 1, 2))(*args)
    assert float(jnp.abs(g_ht).sum()) == 0.0, 'no gradient may reach the teacher'
    assert float(jnp.abs(g_hs).sum()) > 0 and float(jnp.abs(g_proj).sum()) > 0


def test_repeated_terms_get_distinct_metric_names():
    obj = objective.build([{'name': 'kd'}, {'name': 'ce'}, {'name': 'kd', 'temperature': 2.0}],
                          1)
    assert obj.metric_names == ('distill/kd_0', 'distill/ce', 'distill/kd_2')


def test_label_mask_limits_label_terms_only():
    """ce (and dkd) average over labelled rows; teacher terms over every valid row."""
    rng = np.random.default_rng(2)
    zs, zt = rng.normal(size=(2, 8, 5)).astype(np.float32)
    targets = jax.nn.one_hot(rng.integers(0, 5, 8), 5)
    labelled = np.array([1, 0, 0, 1, 1, 0, 0, 1], bool)
    obj = objective.build([{'name': 'kd', 'temperature': 2.0}, {'name': 'ce'},
                           {'name': 'dkd', 'temperature': 2.0}], 1)
    _, m = obj(0, zs, zt, targets, label_mask=labelled)
    _, whole = obj(0, zs, zt, targets)
    _, sliced = obj(0, zs[labelled], zt[labelled], targets[labelled])
    np.testing.assert_allclose(m['distill/kd'], whole['distill/kd'], rtol=1e-6)
    np.testing.assert_allclose(m['distill/ce'], sliced['distill/ce'], rtol=1e-6)
    np.testing.assert_allclose(m['distill/dkd'], sliced['distill/dkd'], rtol=1e-6)
    _, none = obj(0, zs, zt, targets, label_mask=np.zeros(8, bool))
    assert float(none['distill/ce']) == 0.0  # no labelled row: no label signal, not NaN
