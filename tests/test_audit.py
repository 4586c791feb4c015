"""jaxdistill/audit: fingerprints against direct references, the permutation test's
calibration under the null, determinism per seed, the watermark and its detectors, bad input."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats as sps

from jaxdistill.audit import fingerprints as fp
from jaxdistill.audit import lineage, stats
from jaxdistill.audit import models as audit_models
from jaxdistill.audit import watermark as wm
from jaxdistill.audit.stats import AuditError


def _softmax(z):
    return np.exp(fp.log_softmax(z))


# ----------------------------------------------------------------- fingerprints
def test_dark_residual_rank_is_spearman_of_departures_from_the_consensus():
    rng = np.random.default_rng(0)
    t, s, c = (rng.normal(size=(20, 7)) for _ in range(3))
    lt, ls, lc = fp.log_softmax(t), fp.log_softmax(s), fp.log_softmax(c)
    expected = []
    for i in range(20):
        keep = np.arange(7) != np.argmax(t[i])
        expected.append(sps.spearmanr((lt - lc)[i, keep], (ls - lc)[i, keep]).statistic)
    assert fp.dark_residual_rank(t, s, c) == pytest.approx(np.mean(expected), abs=1e-12)
    assert fp.dark_residual_rank(t, t, c) == pytest.approx(1.0)


def test_dark_kl_gain_against_a_loop():
    rng = np.random.default_rng(1)
    t, s, c = (rng.normal(size=(15, 6)) for _ in range(3))

    def dark(x, top):
        keep = np.arange(6) != top
        return _softmax(x[keep][None])[0]

    gains = []
    for i in range(15):
        top = np.argmax(t[i])
        p, q, r = dark(t[i], top), dark(s[i], top), dark(c[i], top)
        gains.append(np.sum(p * np.log(p / r)) - np.sum(p * np.log(p / q)))
    assert fp.dark_kl_gain(t, s, c) == pytest.approx(np.mean(gains), rel=1e-10)
    # the top class does not matter: only the non-top ordering and spread do
    s2 = s.copy()
    s2[np.arange(15), np.argmax(t, -1)] += 5.0
    assert fp.dark_kl_gain(t, s2, c) == pytest.approx(fp.dark_kl_gain(t, s, c), rel=1e-10)


def test_agreements_and_dark_residual_loglik():
    t = np.array([[3., 1, 0], [0, 3, 1], [1, 0, 3], [3, 0, 1]])
    labels = np.array([0, 0, 1, 1])  # the teacher is wrong on rows 1, 2, 3
    s_top1 = np.array([2, 1, 2, 1])  # copies the mistake on rows 1 and 2
    assert fp.error_agreement(t, s_top1, labels) == pytest.approx(2 / 3)
    c = np.array([[3., 1, 0], [3, 0, 1], [1, 0, 3], [0, 3, 1]])  # departs on rows 1 and 3
    assert fp.idiosyncratic_agreement(t, s_top1, c) == pytest.approx(1 / 2)
    samples = np.array([[1, 0], [2, 2], [2, 0], [0, 2]])
    top = np.argmax(t, -1)
    with np.errstate(invalid='ignore'):  # -inf - -inf at the top class, never sampled
        d = fp.dark_log_probs(t, top) - fp.dark_log_probs(c, top)
    expected = np.mean([d[0, 1], d[1, 2], d[1, 2], d[2, 0], d[3, 2]])
    assert fp.dark_residual_loglik(t, samples, c) == pytest.approx(expected)


def test_consensus_leaves_each_model_out():
    outs = [np.random.default_rng(i).normal(size=(4, 5)) for i in range(3)]
    c = fp.consensus(outs)
    np.testing.assert_allclose(c[0], (fp.log_softmax(outs[1]) + fp.log_softmax(outs[2])) / 2,
                               rtol=1e-5)


def test_sample_follows_the_distribution():
    logits = np.log(np.array([[0.7, 0.2, 0.1]]))
    draws = fp.sample(np.repeat(logits, 4000, 0), 1, np.random.default_rng(0))[:, 0]
    np.testing.assert_allclose(np.bincount(draws, minlength=3) / 4000, [0.7, 0.2, 0.1],
                               atol=0.03)


# ------------------------------------------------------------ the permutation test
def _null_p_values(k: int, draws: int, fingerprints: int = 3, seed: int = 0):
    """p-values of a suspect drawn from the references' own distribution (correlated,
    skewed fingerprints: the test must not assume normality)."""
    rng = np.random.default_rng(seed)
    mix = rng.normal(size=(fingerprints, fingerprints))
    exact, parametric = [], []
    for _ in range(draws):
        table = rng.gamma(2.0, size=(k + 1, fingerprints)) @ mix
        r = stats.permutation_test(table[0], table[1:])
        exact.append(r['p_value'])
        parametric.append(r['p_value_parametric'])
    return np.array(exact), np.array(parametric)


def test_calibration_under_the_null():
    k, draws = 9, 2000
    exact, parametric = _null_p_values(k, draws)
    # exact: uniform on {1/(k+1), ..., 1}; P(p <= a) <= a at every attainable a
    grid = np.arange(1, k + 2) / (k + 1)
    cdf = np.array([np.mean(exact <= a + 1e-12) for a in grid])
    se = math.sqrt(0.25 / draws)
    assert np.all(cdf <= grid + 4 * se), cdf
    assert np.max(np.abs(cdf - grid)) < 4 * se  # KS distance to the discrete uniform
    assert exact.min() == pytest.approx(1 / (k + 1))
    # the normal fit is only roughly calibrated (a KS statistic, not a guarantee)
    assert sps.kstest(parametric, 'uniform').statistic < 0.12


def test_power_when_the_suspect_stands_out():
    rng = np.random.default_rng(2)
    refs = rng.normal(size=(19, 3))
    r = stats.permutation_test(np.array([5.0, 5.0, 5.0]), refs)
    assert r['p_value'] == pytest.approx(1 / 20) == r['min_p_value']
    assert r['score'] > 3


def test_roc_auc_and_tpr_against_definitions():
    from sklearn.metrics import roc_auc_score, roc_curve

    rng = np.random.default_rng(3)
    pos, neg = rng.normal(1, 1, 40), rng.normal(0, 1, 300)
    y = np.r_[np.ones(40), np.zeros(300)]
    assert stats.roc_auc(pos, neg) == pytest.approx(roc_auc_score(y, np.r_[pos, neg]))
    fpr, tpr, _ = roc_curve(y, np.r_[pos, neg])
    assert stats.tpr_at_fpr(pos, neg, 0.01) == pytest.approx(tpr[fpr <= 0.01].max())


def test_determinism_per_seed():
    rng = np.random.default_rng(4)
    task = rng.normal(size=(300, 10)) * 2  # what every model of the task learns
    own = rng.normal(size=(300, 10))  # what is particular to the teacher
    t = task + own
    outs = [task + 0.8 * own + rng.normal(size=t.shape)]  # a student copies some of it
    outs += [task + rng.normal(size=t.shape) for _ in range(5)]  # independent models
    probe = audit_models.Probe('classification', np.zeros((300, 1)), rng.integers(0, 10, 300),
                               np.ones(300), np.r_[np.zeros(150, bool), np.ones(150, bool)],
                               'synthetic')
    a = lineage.test('samples', t, outs[0], outs[1:], probe, seed=7)
    b = lineage.test('samples', t, outs[0], outs[1:], probe, seed=7)
    c = lineage.test('samples', t, outs[0], outs[1:], probe, seed=8)
    assert a == b
    assert a['fingerprints']['suspect']['dark_residual_loglik'] != \
        c['fingerprints']['suspect']['dark_residual_loglik']
    assert a['score'] > max(a['reference_scores'])  # the closest copy stands out


# ---------------------------------------------------------------------- bad input
def test_too_few_references_and_unreachable_alpha():
    with pytest.raises(AuditError, match='at least 2'):
        stats.check_references(1)
    with pytest.raises(AuditError, match=r'1/\(k\+1\) = 0.1667.*at least 99 references'):
        stats.check_references(5, alpha=0.01)
    stats.check_references(19, alpha=0.05)


def test_output_space_and_probe_size():
    with pytest.raises(AuditError, match='12 outputs but the teacher has 10'):
        lineage.check_output_space(np.zeros((5, 10)), np.zeros((5, 12)), 'S', '--suspect')
    with pytest.raises(AuditError, match='50 probe examples.*at least 100'):
        audit_models.image_probe(np.zeros((50, 8, 8, 1)), np.zeros(50, int), seed=0,
                                 ambiguous=10, source='x')
    with pytest.raises(AuditError, match='probe tokens.*at least 1000'):
        audit_models.lm_probe(np.zeros((4, 16), int), np.zeros((4, 16), int),
                              np.ones((4, 16), bool), seed=0, max_tokens=0, source='x')


def test_cli_bad_input_is_one_line(tmp_path):
    import subprocess
    import sys

    out = subprocess.run([sys.executable, '-m', 'jaxdistill.audit', f'--teacher={tmp_path}/t',
                          f'--suspect={tmp_path}/s', '--references=a', f'--out={tmp_path}/o'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert lines == ['error: --references: 1 given, the test needs at least 2 models known not '
                     'to descend from the teacher (train them with jaxdistill on the same task, '
                     'e.g. the labels-only baseline of a run)'], out.stderr
    assert not (tmp_path / 'o').exists()


# ---------------------------------------------------------------------- watermark
def test_green_list_numpy_equals_jax_and_has_gamma_share():
    prev = np.arange(0, 300, 7)
    g_np = wm.green(prev, 259, 1234, 0.25)
    g_jx = np.asarray(wm.green(jnp.asarray(prev), 259, 1234, 0.25, xp=jnp))
    np.testing.assert_array_equal(g_np, g_jx)
    assert abs(g_np.mean() - 0.25) < 0.02
    assert (wm.green(prev, 259, 99, 0.25) != g_np).mean() > 0.3  # another key, another list


def test_detect_text_calibrated_without_the_key_and_powerful_with_it():
    rng = np.random.default_rng(5)
    tokens = rng.integers(0, 259, (8, 64))
    scored = np.ones_like(tokens, bool)
    p = np.array([wm.detect_text(tokens, scored, key, 0.25, 259)['p_value']
                  for key in range(1, 301)])
    assert np.mean(p <= 0.05) < 0.05 + 3 * math.sqrt(0.05 * 0.95 / 300)
    assert np.mean(p <= 0.5) == pytest.approx(0.5, abs=0.1)
    # text drawn with the watermark of key 7
    logits = jnp.asarray(rng.normal(size=(1, 259)), jnp.float32)
    toks = [3]
    for i in range(400):
        z = wm.bias(logits, jnp.asarray([toks[-1]]), (7, 0.25, 2.0))
        toks.append(int(jax.random.categorical(jax.random.key(i), z)[0]))
    row = np.asarray(toks)[None]
    hit = wm.detect_text(row, np.ones_like(row, bool), 7, 0.25, 259)
    assert hit['z'] > 4 and hit['p_value'] < 1e-4
    assert wm.detect_text(row, np.ones_like(row, bool), 8, 0.25, 259)['p_value'] > 1e-3


def test_detect_distribution_null_and_alternative():
    rng = np.random.default_rng(6)
    prev = rng.integers(0, 259, 2000)
    probs = _softmax(rng.normal(size=(2000, 259)) * 2)
    z = np.array([wm.detect_distribution(prev, probs, key, 0.25)['z'] for key in range(1, 201)])
    assert abs(z.mean()) < 0.25 and 0.75 < z.std() < 1.25
    biased = _softmax(np.log(probs) + 0.5 * wm.green(prev, 259, 11, 0.25))
    assert wm.detect_distribution(prev, biased, 11, 0.25)['p_value'] < 1e-6


def test_generate_with_a_watermark():
    from jaxdistill.models.decoder import Decoder
    from jaxdistill.models.sampling import generate
    from tests.test_decoder import CFG, random_params

    model = Decoder(**CFG)
    params = random_params(model, seed=3)
    prompts = jnp.full((4, 2), 5, jnp.int32)
    lengths = jnp.array([2, 2, 2, 2])
    plain, mask = generate(model, params, prompts, lengths, 40, jax.random.key(0))
    same, _ = generate(model, params, prompts, lengths, 40, jax.random.key(0), watermark=None)
    np.testing.assert_array_equal(plain, same)
    marked, _ = generate(model, params, prompts, lengths, 40, jax.random.key(0),
                         watermark=(42, 0.25, 4.0))
    v = CFG['vocab_size']
    hit = wm.detect_text(np.asarray(marked), np.asarray(mask), 42, 0.25, v)
    miss = wm.detect_text(np.asarray(plain), np.asarray(mask), 42, 0.25, v)
    assert hit['green_fraction'] > miss['green_fraction'] + 0.2


# -------------------------------------------------------------------- protections
def test_protections_serve_distributions():
    from jaxdistill.audit import protect

    rng = np.random.default_rng(8)
    z = jnp.asarray(rng.normal(size=(6, 10)) * 3, jnp.float32)
    p = np.asarray(jax.nn.softmax(z, -1))
    top2 = np.exp(np.asarray(protect.topk(z, 2)))
    np.testing.assert_allclose(top2.sum(-1), 1, atol=1e-5)
    kept = np.argsort(-p, -1)[:, :2]
    expected = np.take_along_axis(p, kept, -1) / np.take_along_axis(p, kept, -1).sum(-1,
                                                                                     keepdims=True)
    np.testing.assert_allclose(np.take_along_axis(top2, kept, -1), expected, rtol=1e-5)
    rounded = np.exp(np.asarray(protect.round_probs(z, 1)))
    q = np.round(p * 10) / 10
    np.testing.assert_allclose(rounded, q / q.sum(-1, keepdims=True), atol=1e-6)
    x = jnp.asarray(rng.random((6, 8, 8, 1)), jnp.float32)
    t1 = np.asarray(protect.temperature(z, x, 1.0))
    np.testing.assert_array_equal(t1, np.asarray(protect.temperature(z, x, 1.0)))  # per query
    assert (np.argmax(t1, -1) == np.argmax(p, -1)).all()  # a temperature keeps the top-1
    u = np.asarray(protect.query_uniform(jnp.asarray(rng.random((4000, 5)), jnp.float32)))
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.02


def test_protection_config_errors():
    from jaxdistill.audit import protect
    from tests.helpers import load_config

    c = load_config('digits.py')
    c.distill.protection.name = 'topkk'
    with pytest.raises(Exception, match=r"distill.protection.name='topkk' is not one of"):
        protect.check(c.distill.protection)
    c.distill.protection.name, c.distill.protection.k = 'topk', 0
    with pytest.raises(Exception, match='distill.protection.k=0 must be >= 1'):
        protect.check(c.distill.protection)


def test_antidistill_direction_is_savanis_finite_difference():
    """d(c) = <g, grad log p(c)>: Savani et al. estimate it as (log p at theta + eps g minus
    at theta - eps g) / 2 eps; the jvp is its exact limit."""
    from jaxdistill.audit import protect
    from jaxdistill.models import modules
    from jaxdistill.models.adapter import Model

    proxy = Model(modules.resolve('mlp', {'hidden': (16,), 'num_classes': 5}, key='m'), '',
                  'proxy')
    x = jnp.asarray(np.random.default_rng(9).random((4, 8)), jnp.float32)
    params, state = proxy.init(jax.random.key(0), x)
    g = jax.tree.map(lambda p: jax.random.normal(jax.random.key(1), p.shape), params)
    d = np.asarray(protect.antidistill_direction(proxy, {'params': params, 'state': state}, g, x))

    def logp(p):
        return jax.nn.log_softmax(proxy.apply(p, state, x, train=False)[0], -1)

    eps = 1e-3
    fd = (logp(jax.tree.map(lambda p, v: p + eps * v, params, g))
          - logp(jax.tree.map(lambda p, v: p - eps * v, params, g))) / (2 * eps)
    fd = np.asarray(fd, np.float64)
    fd = (fd - fd.mean(-1, keepdims=True)) / fd.std(-1, keepdims=True)
    np.testing.assert_allclose(d, fd, atol=2e-2)


def test_hf_models_are_audited_on_token_probes():
    """hf:DIR suspects load through jaxdistill.hf; three tiny families on one vocabulary."""
    import pathlib

    fixtures = pathlib.Path(__file__).parent / 'fixtures' / 'hf'
    rng = np.random.default_rng(10)
    tokens = rng.integers(0, 192, (24, 49))
    probe = audit_models.lm_probe(tokens[:, :-1], tokens[:, 1:], np.ones((24, 48), bool),
                                  seed=0, max_tokens=0, source='random tokens')
    outs = [audit_models.outputs(audit_models.load(f'hf:{fixtures / f}', f), probe)
            for f in ('llama', 'mistral', 'qwen2', 'gemma')]
    assert outs[0].shape == (24 * 48, 192)
    r = lineage.test('logits', outs[0], outs[1], outs[2:], probe, seed=0)
    assert r['p_value'] >= 1 / 3 and set(r['fingerprints']['used']) >= {'dark_kl_gain'}
    with pytest.raises(AuditError, match='no such directory'):
        audit_models.load('hf:/nonexistent', '--suspect')
