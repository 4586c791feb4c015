"""jaxdistill/teachers/ensemble.py and teachers.py: several teachers, mixed or term by term."""

import jax
import numpy as np
import pytest

from jaxdistill import objective, provenance, run
from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.teachers.ensemble import mix_probabilities
from tests.helpers import load_config


def _np_log_softmax(z):
    z = np.asarray(z, np.float64)
    z = z - z.max(-1, keepdims=True)
    return z - np.log(np.exp(z).sum(-1, keepdims=True))


def test_mix_probabilities_matches_numpy():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(2, 6, 5)).astype(np.float32) * 3
    got = np.asarray(mix_probabilities([a, b], [3.0, 1.0]))
    want = np.log(0.75 * np.exp(_np_log_softmax(a)) + 0.25 * np.exp(_np_log_softmax(b)))
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.exp(got).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(mix_probabilities([a], [2.0]), _np_log_softmax(a), atol=1e-5)


def test_terms_mode_is_the_weighted_sum_over_teachers():
    rng = np.random.default_rng(1)
    zs, t0, t1 = rng.normal(size=(3, 8, 5)).astype(np.float32)
    targets = jax.nn.one_hot(rng.integers(0, 5, 8), 5)
    entries = [{'name': 'kd', 'temperature': 2.0, 'weight': 0.7}, {'name': 'ce', 'weight': 0.3}]
    single = objective.build(entries, 1)
    several = objective.build(entries, 1, teacher_weights=[0.25, 0.75])
    _, m0 = single(0, zs, t0, targets)
    _, m1 = single(0, zs, t1, targets)
    total, m = several(0, zs, np.stack([t0, t1]), targets)
    np.testing.assert_allclose(m['distill/kd'], 0.25 * m0['distill/kd'] + 0.75 * m1['distill/kd'],
                               rtol=1e-6)
    np.testing.assert_allclose(m['distill/ce'], m0['distill/ce'], rtol=1e-6)
    np.testing.assert_allclose(total, 0.7 * m['distill/kd'] + 0.3 * m['distill/ce'], rtol=1e-6)


def two_teachers(data_dir, mode='probs'):
    c = load_config('digits.py', 'smoke')
    c.data.data_dir = data_dir
    c.teacher.weight = 1.0
    c.teachers = ({'module': 'mlp', 'kwargs': {'hidden': (16,), 'num_classes': 10},
                   'steps': 20, 'weight': 3.0},)
    c.distill.ensemble = mode
    return c


@pytest.fixture(scope='module')
def ensemble_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('ens'))
    return workdir, run.train_and_evaluate(two_teachers(data_dir), workdir,
                                           devices=jax.devices()[:1])


def test_every_teacher_and_the_ensemble_are_reported(ensemble_run, data_dir):
    workdir, r = ensemble_run
    assert {'teacher', 'teacher_1', 'ensemble', 'baseline', 'student'} <= set(r)
    prov = r['provenance']
    assert prov['ensemble'] == 'probs'
    assert [t['weight'] for t in prov['teachers']] == [0.25, 0.75]
    assert prov['teachers'][1]['params_sha256'] == r['teacher_1']['params_sha256']
    # Independent check: the ensemble's accuracy from the two teachers' own test logits.
    c = two_teachers(data_dir)
    c.teacher.checkpoint = workdir
    c.teachers = ({**c.teachers[0], 'checkpoint': f'{workdir}/teacher_1'},)
    p = run.plan(c, workdir + '_probe', devices=jax.devices()[:1])
    batches = list(p.task.test_batches())
    logps, labels = [], np.concatenate([b['label'][b['mask']] for b in batches])
    for i, t in enumerate(p.teachers):
        v = run.load_teacher(p, i)
        assert provenance.params_sha256(v['params']) == r[t.name]['params_sha256']  # frozen
        z = np.concatenate([np.asarray(t.model.apply(v['params'], v['state'], b['image'],
                                                     train=False)[0])[b['mask']]
                            for b in batches])
        logps.append(_np_log_softmax(z))
        assert abs(r[t.name]['accuracy'] - np.mean(z.argmax(-1) == labels)) < 1e-9
    mixed = np.log(0.25 * np.exp(logps[0]) + 0.75 * np.exp(logps[1]))
    assert abs(r['ensemble']['accuracy'] - np.mean(mixed.argmax(-1) == labels)) < 1e-9
    assert 'teacher_1' in open(f'{workdir}/report.md').read()


def test_terms_mode_trains(data_dir, tmp_path, ensemble_run):
    workdir, probs = ensemble_run
    c = two_teachers(data_dir, 'terms')
    c.teacher.checkpoint = workdir
    c.teachers = ({**c.teachers[0], 'checkpoint': f'{workdir}/teacher_1'},)
    r = run.train_and_evaluate(c, str(tmp_path / 'terms'), devices=jax.devices()[:1])
    assert r['provenance']['ensemble'] == 'terms'
    assert r['student']['params_sha256'] != probs['student']['params_sha256']
    assert r['baseline']['params_sha256'] == probs['baseline']['params_sha256']


@pytest.mark.parametrize('teachers,exc,match', [
    (({'modul': 'cnn'},), ConfigError, r"teachers\[0\] must be a dict with at least 'module'"),
    (({'module': 'cnn', 'wieght': 2.0},), ConfigError, r"teachers\[0\].wieght .*'weight'"),
    (({'module': 'cnn', 'weight': 0.0},), ConfigError, r'teachers\[0\].weight=0.0'),
    (({'module': 'cnn', 'checkpoint': '/nonexistent/run'},), CheckpointError,
     r'teachers\[0\].checkpoint'),
    (({'module': 'no_such_model'},), ConfigError, r'teachers\[0\].module'),
])
def test_bad_teachers(data_dir, tmp_path, teachers, exc, match):
    c = two_teachers(data_dir)
    c.teachers = teachers
    with pytest.raises(exc, match=match):
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert not (tmp_path / 'w').exists()
