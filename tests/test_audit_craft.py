"""jaxdistill/audit/craft.py: probes crafted from the teacher move it to its boundary (or
away from its anchors, or are the mixes where it departs from them, or its own sampled
text), deterministically, and the permutation p-value stays calibrated under the null on
them (crafting never sees the suspect or the references)."""

import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.audit import craft, lineage
from jaxdistill.audit import models as audit_models
from jaxdistill.audit.stats import AuditError

D, C = 64, 10  # 8x8x1 images, 10 classes


def _mlp(w1, w2):
    """A small nonlinear classifier of 8x8x1 images (the searches must work beyond linear)."""
    w1, w2 = jnp.asarray(w1, jnp.float32), jnp.asarray(w2, jnp.float32)
    return lambda x: jnp.tanh(x.reshape(len(x), -1) @ w1) @ w2


def _zoo(seed=0, k=8):
    """A task (``w1``, ``w2``); a teacher, 3 anchors and ``k`` independent models, each the
    task plus its own noise (one recipe, other seeds)."""
    rng = np.random.default_rng(seed)
    w1, w2 = rng.normal(size=(D, 32)) * 0.4, rng.normal(size=(32, C)) * 1.5

    def model():
        return _mlp(w1 + 0.15 * rng.normal(size=w1.shape), w2 + 0.6 * rng.normal(size=w2.shape))

    task = _mlp(w1, w2)
    return task, model(), [model() for _ in range(3)], [model() for _ in range(k)]


def _probe(task, seed=0, n=120, ambiguous=200):
    rng = np.random.default_rng(seed + 100)
    images = rng.uniform(0, 1, (n, 8, 8, 1)).astype(np.float32)
    labels = np.argmax(np.asarray(task(jnp.asarray(images))), -1)
    return audit_models.image_probe(images, labels, seed=seed, ambiguous=ambiguous, source='syn')


def _logp(f, x):
    return np.asarray(jax.nn.log_softmax(f(jnp.asarray(x))), np.float64)


def test_boundary_brings_the_teacher_to_its_top2_boundary_with_a_small_step():
    task, teacher, _, _ = _zoo()
    probe = _probe(task)
    crafted = craft.craft_probe('boundary', probe, teacher)
    amb = probe.ambiguous
    before, after = _logp(teacher, probe.inputs[amb]), _logp(teacher, crafted.inputs[amb])
    top2 = np.argsort(before, -1)[:, -2:]
    rows = np.arange(len(top2))
    gap_before = before[rows, top2[:, 1]] - before[rows, top2[:, 0]]
    gap_after = after[rows, top2[:, 1]] - after[rows, top2[:, 0]]
    assert np.median(gap_before) > 0.3
    assert np.mean(np.abs(gap_after) < 0.05) > 0.9, np.quantile(np.abs(gap_after), [.5, .9])
    # the two classes stay the teacher's top-2 where it reached the boundary
    near = np.abs(gap_after) < 0.05
    assert np.mean(set_equal(np.argsort(after, -1)[:, -2:], top2)[near]) > 0.9
    step = (crafted.inputs[amb] - probe.inputs[amb]).reshape(amb.sum(), -1)
    assert np.all(np.linalg.norm(step, axis=1) <= craft.RADIUS + 1e-4)
    clean = probe.inputs[~amb]
    assert crafted.inputs.min() >= clean.min() and crafted.inputs.max() <= clean.max()
    np.testing.assert_array_equal(crafted.inputs[~amb], clean)  # test images untouched
    assert crafted.crafted == 'boundary' and probe.crafted == ''


def test_boundary_margin_puts_the_teacher_on_either_side():
    task, teacher, _, _ = _zoo()
    probe = _probe(task)
    amb = probe.ambiguous
    x0 = probe.inputs[amb]
    x = craft.boundary(teacher, x0, margin=0.85, radius=3.0)
    before, after = _logp(teacher, x0), _logp(teacher, x)
    top2 = np.argsort(before, -1)[:, -2:]
    rows = np.arange(len(x))
    gap = after[rows, top2[:, 1]] - after[rows, top2[:, 0]]
    want = np.where(rows % 2 == 0, 0.85, -0.85)
    assert np.mean(np.abs(gap - want) < 0.05) > 0.9, np.quantile(np.abs(gap - want), [.5, .9])


def test_divergent_keeps_the_mixes_where_the_teacher_departs_from_its_anchors():
    task, teacher, anchors, _ = _zoo()
    probe = _probe(task, ambiguous=craft.drawn('divergent', 50))
    kept = craft.craft_probe('divergent', probe, teacher, anchors)
    assert kept.ambiguous.sum() == 50 and (~kept.ambiguous).sum() == (~probe.ambiguous).sum()
    d_all = craft.divergence(teacher, anchors, probe.inputs[probe.ambiguous])
    d_kept = craft.divergence(teacher, anchors, kept.inputs[kept.ambiguous])
    np.testing.assert_allclose(np.sort(d_kept), np.sort(d_all)[-50:], rtol=1e-5)
    # against a direct loop: mean over anchors of KL(t || a)
    x = probe.inputs[probe.ambiguous][:5]
    lt = _logp(teacher, x)
    loop = [np.mean([np.sum(np.exp(lt[i]) * (lt[i] - _logp(a, x)[i])) for a in anchors])
            for i in range(5)]
    np.testing.assert_allclose(d_all[:5], loop, rtol=1e-4)
    np.testing.assert_array_equal(kept.inputs[~kept.ambiguous], probe.inputs[~probe.ambiguous])
    assert np.all(kept.labels[kept.ambiguous] == -1)


def set_equal(a, b):
    return np.all(np.sort(a, -1) == np.sort(b, -1), -1)


def test_conferrable_moves_the_teacher_to_its_runner_up_and_not_the_anchors():
    task, teacher, anchors, others = _zoo()
    probe = _probe(task)
    crafted = craft.craft_probe('conferrable', probe, teacher, anchors)
    amb = probe.ambiguous
    x0, x = probe.inputs[amb], crafted.inputs[amb]
    y = np.argsort(_logp(teacher, x0), -1)[:, -2]
    rows = np.arange(len(y))

    def p_y(f, x):
        return np.exp(_logp(f, x)[rows, y])

    assert np.mean(p_y(teacher, x)) > np.mean(p_y(teacher, x0)) + 0.2
    # the anchors, which the search saw, follow less than independent models, which it did
    # not: the probes are particular to the teacher among models of its recipe
    anchors_after = np.mean([p_y(a, x) for a in anchors])
    others_after = np.mean([p_y(o, x) for o in others])
    assert anchors_after < others_after < np.mean(p_y(teacher, x))
    assert np.max(np.abs(x - x0)) <= craft.EPS + 1e-6


def test_crafting_is_deterministic_per_seed_and_mixes_are_left_alone():
    task, teacher, anchors, _ = _zoo()
    probe = _probe(task, seed=0)
    for kind in ('boundary', 'conferrable', 'divergent'):
        a = craft.craft_probe(kind, probe, teacher, anchors)
        b = craft.craft_probe(kind, probe, teacher, anchors)
        np.testing.assert_array_equal(a.inputs, b.inputs)
        other = craft.craft_probe(kind, _probe(task, seed=1), teacher, anchors)
        assert not np.array_equal(a.inputs, other.inputs)
    assert craft.craft_probe('mixes', probe, teacher) is probe


def test_p_values_stay_calibrated_under_the_null_on_crafted_probes():
    # probes crafted from the teacher and its anchors; suspect and references independent
    # models of the recipe: the exact p-value is uniform on {1/(k+1), ..., 1}; a copy of the
    # teacher (its function plus small noise) gets the smallest p
    task, teacher, anchors, _ = _zoo(seed=3)
    k, draws = 5, 150
    rng = np.random.default_rng(5)
    for kind in ('boundary', 'conferrable', 'divergent'):
        probe = craft.craft_probe(kind, _probe(task, seed=3, ambiguous=craft.drawn(kind, 150)),
                                  teacher, anchors)
        x = jnp.asarray(probe.inputs)
        t_out = np.asarray(teacher(x))
        a_outs = [np.asarray(a(x)) for a in anchors]
        # independent models as logits: the task's plus each model's own noise (fresh draws
        # of the recipe are slow to trace; perturbed logits are exchangeable all the same)
        base = np.asarray(task(x))
        p = []
        for _ in range(draws):
            outs = [base + rng.normal(size=base.shape) * rng.uniform(0.8, 1.5)
                    for _ in range(k + 1)]
            r = lineage.test('logits', t_out, outs[0], outs[1:], probe, seed=0,
                             anchor_outs=a_outs)
            assert 'p_value_teachers' not in r  # the teacher is not exchangeable here
            p.append(r['p_value'])
        p = np.array(p)
        grid = np.arange(1, k + 2) / (k + 1)
        cdf = np.array([np.mean(p <= a + 1e-12) for a in grid])
        se = math.sqrt(0.25 / draws)
        assert np.max(np.abs(cdf - grid)) < 4 * se, (kind, cdf)
        copy = t_out + rng.normal(size=t_out.shape) * 0.3
        outs = [base + rng.normal(size=base.shape) for _ in range(k)]
        r = lineage.test('logits', t_out, copy, outs, probe, seed=0, anchor_outs=a_outs)
        assert r['p_value'] == pytest.approx(1 / (k + 1))


def test_bad_probe_kinds_are_one_line_errors():
    with pytest.raises(AuditError, match=r"--probes='edges' is not one of"):
        craft.check('edges', task='classification', anchors=2, ambiguous=10)
    with pytest.raises(AuditError, match='--probes=boundary: crafted probes are for image'):
        craft.check('boundary', task='lm', anchors=2, ambiguous=10)
    with pytest.raises(AuditError, match='--ambiguous > 0'):
        craft.check('boundary', task='classification', anchors=2, ambiguous=0)
    for kind in ('conferrable', 'divergent'):
        with pytest.raises(AuditError, match=f'--probes={kind} needs --anchors'):
            craft.check(kind, task='classification', anchors=0, ambiguous=10)
    craft.check('boundary', task='classification', anchors=0, ambiguous=10)  # no anchors needed
    from jaxdistill.audit import audit
    with pytest.raises(AuditError, match='--probes=conferrable needs --anchors'):
        audit('t', 's', ['r1', 'r2'], 'out', probes='conferrable')  # before any model loads


def test_cli_rejects_a_bad_probes_value_in_one_line(tmp_path):
    out = subprocess.run([sys.executable, '-m', 'jaxdistill.audit', '--teacher=t', '--suspect=s',
                          '--references=a,b', '--probes=edges', f'--out={tmp_path}/o'],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and '--probes' in lines[0] and 'boundary' in lines[0], out.stderr
    assert not (tmp_path / 'o').exists()


def test_sampled_probe_is_the_teachers_own_text_deterministic_per_seed():
    from types import SimpleNamespace

    from jaxdistill.models.decoder import Decoder
    from tests.test_decoder import CFG, random_params

    model = Decoder(**CFG)
    teacher = SimpleNamespace(model=SimpleNamespace(module=model),
                              variables={'params': random_params(model, seed=3)})
    rng = np.random.default_rng(0)
    rows = rng.integers(3, CFG['vocab_size'], (6, 16)).astype(np.int32)
    text = audit_models.Probe('lm', rows, np.zeros(90, np.int64), np.ones(90),
                              np.zeros(90, bool), 'syn', token_mask=np.ones((6, 16), bool))
    a = craft.sampled_probe(teacher, text, seed=0)
    b = craft.sampled_probe(teacher, text, seed=0)
    c = craft.sampled_probe(teacher, text, seed=1)
    np.testing.assert_array_equal(a.inputs, b.inputs)
    assert not np.array_equal(a.inputs, c.inputs)
    np.testing.assert_array_equal(a.inputs[:, :4], rows[:, :4])  # the first quarter: prompts
    assert not np.array_equal(a.inputs[:, 4:], rows[:, 4:])
    # each probe token is a position whose next token the teacher wrote: positions 3..14
    want = np.zeros((6, 16), bool)
    want[:, 3:15] = True
    np.testing.assert_array_equal(a.token_mask, want)
    np.testing.assert_array_equal(a.labels, a.inputs[:, 4:].ravel())
    assert a.size == 6 * 12 and a.crafted == 'sampled' and not a.ambiguous.any()
    with pytest.raises(AuditError, match='--probes=sampled: the teacher'):
        craft.sampled_probe(teacher, _probe(_zoo()[0]), seed=0)
    with pytest.raises(AuditError, match='--probes=boundary: crafted probes are for image'):
        craft.check('boundary', task='lm', anchors=1, ambiguous=0)
