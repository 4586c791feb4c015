"""jaxdistill/audit/relative.py: teacher-relative fingerprints against direct references
(KL loops with scipy), the teachers' rank test's calibration under the null, and the
lineage test's score with anchors (power, determinism)."""

import math

import numpy as np
import pytest
from scipy import stats as sps

from jaxdistill.audit import fingerprints as fp
from jaxdistill.audit import lineage, relative
from jaxdistill.audit import models as audit_models


def _p(z):
    return np.exp(fp.log_softmax(z))


def test_paired_llr_is_a_difference_of_kls():
    rng = np.random.default_rng(0)
    t, s = rng.normal(size=(12, 6)), rng.normal(size=(12, 6))
    anchors = rng.normal(size=(3, 12, 6))
    d = relative.paired_llr(t, anchors, _p(s))
    for i in range(12):
        for a in range(3):
            expected = sps.entropy(_p(s[i]), _p(anchors[a, i])) - sps.entropy(_p(s[i]), _p(t[i]))
            assert d[i, a] == pytest.approx(expected, abs=1e-10)
    # a suspect that is the teacher wins every comparison (KL(t||t) = 0 < KL(t||a))
    assert relative.teacher_rank(relative.paired_llr(t, anchors, _p(t))) == 1.0


def test_rank_and_clipped_llr_against_loops():
    d = np.array([[1.0, -2.0, 0.0], [7.0, 0.5, -9.0]])
    assert relative.teacher_rank(d) == pytest.approx(np.mean([1, 0, 0.5, 1, 1, 0]))
    assert relative.teacher_llr(d, clip=5.0) == pytest.approx(np.mean([1, -2, 0, 5, 0.5, -5]))
    w = np.array([0.0, 1.0])
    assert relative.teacher_rank(d, w) == pytest.approx(2 / 3)


def test_views_are_what_the_access_shows():
    logits = np.log(np.array([[0.1, 0.7, 0.2], [0.5, 0.2, 0.3]]))
    np.testing.assert_allclose(relative.view('logits', logits), np.exp(logits))
    np.testing.assert_array_equal(relative.view('top1', logits), [[0, 1, 0], [1, 0, 0]])
    samples = np.array([[1, 1, 2, 0], [0, 0, 0, 2]])
    np.testing.assert_allclose(relative.view('samples', logits, samples),
                               [[0.25, 0.5, 0.25], [0.75, 0, 0.25]])
    # the top-1 view's llr is log t(y) - log a(y) at the suspect's top-1 y
    rng = np.random.default_rng(1)
    t, a = rng.normal(size=(2, 3)), rng.normal(size=(1, 2, 3))
    d = relative.paired_llr(t, a, relative.view('top1', logits))
    lt, la = fp.log_softmax(t), fp.log_softmax(a[0])
    np.testing.assert_allclose(d[:, 0], [lt[0, 1] - la[0, 1], lt[1, 0] - la[1, 0]])


def test_teacher_scores_against_a_loop():
    rng = np.random.default_rng(2)
    teachers = rng.normal(size=(4, 30, 5))
    s = rng.normal(size=(30, 5))
    scores = relative.teacher_scores(teachers, _p(s))
    for k in range(4):
        wins = []
        for j in range(4):
            if j != k:
                d = relative.paired_llr(teachers[k], teachers[j][None], _p(s))[:, 0]
                wins.append(np.mean((d > 0) + 0.5 * (d == 0)))
        assert scores[k] == pytest.approx(np.mean(wins))
    d0 = relative.paired_llr(teachers[0], teachers[1:], _p(s))
    assert scores[0] == pytest.approx(relative.teacher_rank(d0))


def _teachers_and_suspect(rng, m, copy):
    task = rng.normal(size=(200, 10)) * 2  # what every model of the task does
    teachers = task + rng.normal(size=(m + 1, 200, 10))  # each its own idiosyncrasies
    suspect = task + copy * (teachers[0] - task) + rng.normal(size=(200, 10))
    return teachers, suspect


def test_teacher_p_value_is_calibrated_under_the_null_and_powerful_for_a_copy():
    rng = np.random.default_rng(3)
    m, draws = 4, 1000
    p = np.array([relative.teacher_p_value(relative.teacher_scores(
        *(lambda ts: (ts[0], _p(ts[1])))(_teachers_and_suspect(rng, m, 0.0))))
        for _ in range(draws)])
    grid = np.arange(1, m + 2) / (m + 1)
    cdf = np.array([np.mean(p <= a + 1e-12) for a in grid])
    se = math.sqrt(0.25 / draws)
    assert np.all(cdf <= grid + 4 * se) and np.max(np.abs(cdf - grid)) < 4 * se, cdf
    copies = [relative.teacher_p_value(relative.teacher_scores(
        *(lambda ts: (ts[0], _p(ts[1])))(_teachers_and_suspect(rng, m, 0.5))))
        for _ in range(50)]
    assert np.mean(np.array(copies) == 1 / (m + 1)) > 0.9


def _pool(seed):
    rng = np.random.default_rng(seed)
    teachers, student = _teachers_and_suspect(rng, 3, 0.3)
    task = teachers.mean(0)
    refs = [task + rng.normal(size=task.shape) for _ in range(6)]  # independent models
    probe = audit_models.Probe('classification', np.zeros((200, 1)), -np.ones(200, int),
                               np.ones(200), np.ones(200, bool), 'synthetic')
    return teachers, student, refs, probe


@pytest.mark.parametrize('access', ['logits', 'top1', 'samples'])
def test_lineage_with_anchors_scores_the_teacher_relative_fingerprints(access):
    teachers, student, refs, probe = _pool(4)
    r = lineage.test(access, teachers[0], student, refs, probe, seed=5,
                     anchor_outs=list(teachers[1:]))
    assert r['fingerprints']['scored'] == list(lineage.SCORED[access])
    assert r['p_value'] == pytest.approx(r['min_p_value'])  # the copy ranks first
    assert r['p_value_teachers'] == pytest.approx(1 / 4)
    assert r['fingerprints']['suspect']['teacher_rank'] > 0.55
    # the score is the permutation statistic of the scored fingerprints alone
    assert r['score'] > max(r['reference_scores'])
    again = lineage.test(access, teachers[0], student, refs, probe, seed=5,
                         anchor_outs=list(teachers[1:]))
    assert again == r
    # independent models in the suspect's place are not singled out (the copy, now among
    # the references, outranks each of them: p >= 2/7, 0.57 on average under the null)
    innocent = [lineage.test(access, teachers[0], refs[i], [student, *refs[:i], *refs[i + 1:]],
                             probe, seed=5, anchor_outs=list(teachers[1:]))['p_value']
                for i in range(len(refs))]
    assert min(innocent) >= 2 / 7 - 1e-9 and np.mean(innocent) > 0.45, innocent


def test_samples_change_with_the_seed():
    teachers, student, refs, probe = _pool(6)
    a, b = (lineage.test('samples', teachers[0], student, refs, probe, seed=s,
                         anchor_outs=list(teachers[1:])) for s in (1, 2))
    assert a['fingerprints']['suspect']['teacher_llr'] != \
        b['fingerprints']['suspect']['teacher_llr']


def test_relative_fingerprints_count_the_ambiguous_probes_only():
    teachers, student, refs, probe = _pool(7)
    probe.ambiguous = np.arange(200) % 2 == 0  # half the probes are mixes
    r = lineage.test('logits', teachers[0], student, refs, probe, seed=0,
                     anchor_outs=list(teachers[1:]))
    keep = probe.ambiguous
    expected = relative.fingerprints(teachers[0][keep], teachers[1:, keep],
                                     relative.view('logits', student[keep]))
    for name, value in expected.items():
        assert r['fingerprints']['suspect'][name] == pytest.approx(value, rel=1e-12)


def test_coefficients_are_least_squares_on_the_stacked_design():
    rng = np.random.default_rng(8)
    teachers, view = rng.normal(size=(4, 40, 6)), _p(rng.normal(size=(40, 6)))
    w = (np.arange(40) % 3 != 0).astype(float)
    keep = w > 0
    design = np.stack([(_p(t)[keep] - 1 / 6).ravel() for t in teachers], 1)
    expected = np.linalg.lstsq(design, (view[keep] - 1 / 6).ravel(), rcond=None)[0]
    np.testing.assert_allclose(relative.coefficients(teachers, view, w), expected, atol=1e-10)
    assert relative.teacher_coef(teachers[0], teachers[1:], view, w) == pytest.approx(
        expected[0] - expected[1:].mean(), abs=1e-10)
    # the teacher's own distribution: weight 1 on the teacher, 0 on every anchor
    np.testing.assert_allclose(relative.coefficients(teachers, _p(teachers[0])),
                               [1, 0, 0, 0], atol=1e-9)
    # a mixture of the teacher and an anchor is split between them
    mix = 0.3 * _p(teachers[0]) + 0.7 * _p(teachers[2])
    np.testing.assert_allclose(relative.coefficients(teachers, mix), [0.3, 0, 0.7, 0], atol=1e-9)


def test_teacher_coef_p_values_are_calibrated_under_the_null():
    # independent models of the task in the suspect's and the references' places: the exact
    # permutation p-value of the teacher_coef score is uniform on {1/(k+1), ..., 1}
    rng = np.random.default_rng(9)
    k, draws = 5, 300
    p = []
    for _ in range(draws):
        task = rng.normal(size=(150, 10)) * 2
        teachers = task + rng.normal(size=(4, 150, 10))
        models = [task + rng.normal(size=task.shape) * rng.uniform(0.5, 2) for _ in range(k + 1)]
        probe = audit_models.Probe('classification', np.zeros((150, 1)), -np.ones(150, int),
                                   np.ones(150), np.ones(150, bool), 'synthetic')
        r = lineage.test('logits', teachers[0], models[0], models[1:], probe, seed=0,
                         anchor_outs=list(teachers[1:]))
        assert r['fingerprints']['scored'] == ['teacher_coef']
        p.append(r['p_value'])
    p = np.array(p)
    grid = np.arange(1, k + 2) / (k + 1)
    cdf = np.array([np.mean(p <= a + 1e-12) for a in grid])
    se = math.sqrt(0.25 / draws)
    assert np.all(cdf <= grid + 4 * se) and np.max(np.abs(cdf - grid)) < 4 * se, cdf


def test_image_probe_mixes():
    # one-hot images: a mix w x_i + (1 - w) x_j shows i, j and w directly
    images, labels = np.eye(120)[:, :, None], np.arange(120) % 10
    u = audit_models.image_probe(images, labels, seed=3, ambiguous=400, source='x')
    h = audit_models.image_probe(images, labels, seed=3, ambiguous=400, source='x', mix='half')
    again = audit_models.image_probe(images, labels, seed=3, ambiguous=400, source='x')
    np.testing.assert_array_equal(u.inputs, again.inputs)
    assert u.ambiguous.sum() == h.ambiguous.sum() == 400 and not u.ambiguous[:120].any()
    assert np.all(u.labels[120:] == -1)
    for probe in (u, h):
        mixes = probe.inputs[120:, :, 0]
        np.testing.assert_allclose(mixes.sum(1), 1, atol=1e-6)
        i, j = np.argsort(mixes, 1)[:, -1], np.argsort(mixes, 1)[:, -2]
        assert np.all(labels[i] != labels[j])
        small = np.sort(mixes, 1)[:, -2]  # min(w, 1 - w)
        if probe is h:
            np.testing.assert_allclose(small, 0.5)
        else:  # w ~ U(0, 1): min(w, 1 - w) ~ U(0, 1/2)
            assert sps.kstest(2 * small, 'uniform').pvalue > 1e-3
    with pytest.raises(audit_models.AuditError, match="--mix='third'"):
        audit_models.image_probe(images, labels, seed=3, ambiguous=50, source='x', mix='third')
