"""jaxdistill/losses/registry.py: names, specs, hyper-parameter validation, errors."""

import jax.numpy as jnp
import numpy as np
import pytest
from absl.testing import parameterized

from jaxdistill import losses
from jaxdistill.errors import ConfigError
from tests.losses.reference import LABELS, TOKEN_MASK, ZS, ZT, np_ce, topk_inputs


class ValidationTest(parameterized.TestCase):

    def test_get_unknown_suggests(self):
        with pytest.raises(ConfigError, match=r"unknown loss 'kdd': did you mean 'kd'\?.* "
                                              r"known: .*forward_kl"):
            losses.get('kdd')
        self.assertIs(losses.get('jsd'), losses.jsd)
        self.assertEqual(set(losses.POINTWISE) - set(losses.REGISTRY), set())

    @parameterized.parameters(
        ('kd', {'temperature': 0.0}, r'temperature=0.0 .*must be > 0'),
        ('kd', {'temperature': -1}, r'temperature=-1 .*must be > 0'),
        ('jsd', {'temperature': float('nan')}, r'temperature=nan'),
        ('jsd', {'beta': 1.5}, r"beta=1.5 is invalid for loss 'jsd': beta must be in \[0, 1\]"),
        ('jsd', {'beta': -0.1}, r'beta=-0.1 .*\[0, 1\]'),
        ('skew_kl', {'alpha': 2.0}, r'alpha=2.0 .*\[0, 1\]'),
        ('skew_rkl', {'alpha': -1.0}, r'alpha=-1.0 .*\[0, 1\]'),
        ('dkd', {'beta': -8.0}, r'beta=-8.0 .*>= 0'),
        ('dist', {'gamma': -1.0}, r'gamma=-1.0 .*>= 0'),
        ('rkd', {'angle_weight': -1.0}, r'angle_weight=-1.0'),
        ('kd', {'temperature': '2'}, r"temperature='2' .*must be a number"),
        ('kd', {'temprature': 2.0}, r"no hyper-parameter 'temprature': did you mean "
                                    r"'temperature'"),
        ('jsd', {'alpha': 0.5}, r"loss 'jsd' has no hyper-parameter 'alpha'.*beta"),
        ('dkd', {'labels': [1]}, r"no hyper-parameter 'labels'"),
        ('topk_kl', {'mode': 'renormalize'}, r"mode='renormalize' .*did you mean "
                                             r"'renormalise'"),
        ('topk_kl', {'mode': 'tail', 'temperature': 2.0}, r"temperature=2.0 .*mode='tail'"),
        ('nope', {}, r"unknown loss 'nope'"),
    )
    def test_validate_hyper_names_the_key(self, name, hyper, match):
        with pytest.raises(ConfigError, match=match):
            losses.validate_hyper(name, **hyper)

    def test_validate_hyper_accepts_good_values(self):
        losses.validate_hyper('kd', temperature=2.0)
        losses.validate_hyper('jsd', beta=0.0, temperature=1)
        losses.validate_hyper('dkd', alpha=1.0, beta=8.0, temperature=4.0)
        losses.validate_hyper('topk_kl', mode='tail', temperature=1.0)
        self.assertEqual(losses.hyper_names('jsd'), ('temperature', 'axis', 'beta'))

    def test_losses_check_concrete_values_when_called(self):
        with pytest.raises(ConfigError, match='temperature=0'):
            losses.kd(ZS, ZT, temperature=0)
        with pytest.raises(ConfigError, match='beta=2'):
            losses.jsd(ZS, ZT, beta=2)

    def test_bad_shapes(self):
        with pytest.raises(ConfigError, match=r'student vocab 32000 != teacher vocab 32001'):
            losses.check_same_vocab(32000, 32001)
        with pytest.raises(ConfigError, match=r'where has shape \(3,\)'):
            losses.kd(ZS, ZT, where=np.ones(3, bool))
        with pytest.raises(ConfigError, match='student_logits shape'):
            losses.kd(ZS, ZT[:2])
        with pytest.raises(ConfigError, match='axis=3'):
            losses.kd(ZS, ZT, axis=3)
        lt, ids = topk_inputs()
        with pytest.raises(ConfigError, match='teacher_topk_logprobs'):
            losses.topk_kl(ZS, lt[..., :2], ids)


# ------------------------------------------------------------------ the specs, and adding one
class SpecTest(parameterized.TestCase):

    def test_specs_say_what_the_objective_used_to_list(self):
        """The string tuples the objective kept before the registry, now read from the specs."""
        def having(**field):
            return {n for n, s in losses.SPECS.items()
                    if all(getattr(s, k) == v for k, v in field.items())}

        self.assertEqual(having(kind='label'), {'ce'})
        self.assertEqual(having(needs_labels=True) - having(kind='label'), {'dkd'})
        self.assertEqual(having(batch_level=True), {'dist', 'rkd', 'similarity_mse'})
        self.assertEqual(having(tapped=True), {'feature_mse', 'feature_cosine',
                                               'attention_transfer', 'rkd', 'similarity_mse'})
        self.assertEqual(having(kind='relational'), {'rkd', 'similarity_mse'})
        self.assertEqual(having(projected=True), {'feature_mse', 'feature_cosine'})
        self.assertEqual({n for n, s in losses.SPECS.items() if s.sparse},
                         {'kd', 'forward_kl', 'topk_kl'})
        self.assertEqual(set(losses.POINTWISE), {'kd', 'forward_kl', 'reverse_kl', 'jsd',
                                                 'skew_kl', 'skew_rkl', 'tvd'})
        self.assertEqual(losses.spec('dkd').parts, losses.dkd_parts)
        self.assertEqual(losses.names('feature', 'relational'),
                         ('feature_mse', 'feature_cosine', 'attention_transfer', 'rkd',
                          'similarity_mse'))

    def test_register_refuses_bad_specs(self):
        with pytest.raises(ConfigError, match="loss 'kd' is already registered"):
            losses.register('kd', losses.kd)
        with pytest.raises(ConfigError, match="kind='logits' must be one of"):
            losses.register('x_test', losses.kd, kind='logits')
        with pytest.raises(ConfigError, match='must be an identifier'):
            losses.register('my loss', losses.kd)
        self.assertNotIn('x_test', losses.SPECS)


def scaled_l1(student_logits, teacher_logits, *, temperature=1.0, where=None, axis=-1,
              scale=1.0):
    """A trivial loss, written and registered here only: ``scale * mean |z_s - z_t| / T``."""
    diff = jnp.abs(losses.upcast(student_logits) - losses.upcast(teacher_logits))
    return scale * jnp.mean(diff, axis=axis) / temperature


def test_a_loss_is_one_function_and_one_registration():
    """Register a loss in this file only; configs then name it, `build` validates its
    hyper-parameters by its rules, and the objective trains with it beside ce."""
    from jaxdistill import objective

    losses.register('scaled_l1', scaled_l1, rules={'scale': losses.registry.POSITIVE})
    try:
        obj = objective.build([{'name': 'scaled_l1', 'weight': 0.75, 'temperature': 2.0,
                                'scale': 3.0}, {'name': 'ce', 'weight': 0.25}], total_steps=10)
        loss, metrics = obj(jnp.int32(0), ZS, ZT, LABELS, TOKEN_MASK)
        m = TOKEN_MASK
        want_l1 = (3.0 * np.abs(ZS - ZT).mean(-1) / 2.0)[m].mean()
        np.testing.assert_allclose(metrics['distill/scaled_l1'], want_l1, rtol=1e-6)
        np.testing.assert_allclose(metrics['distill/ce'], np_ce(ZS[m], LABELS[m]).mean(),
                                   rtol=1e-6)
        np.testing.assert_allclose(loss, 0.75 * want_l1 + 0.25 * metrics['distill/ce'],
                                   rtol=1e-6)
        with pytest.raises(ConfigError, match=r"scale=-1.0 is invalid for loss 'scaled_l1'"):
            objective.build([{'name': 'scaled_l1', 'scale': -1.0}], total_steps=10)
        with pytest.raises(ConfigError, match="'scaled_l1' has no hyper-parameter 'scal'"):
            objective.build([{'name': 'scaled_l1', 'scal': 1.0}], total_steps=10)
    finally:
        losses.unregister('scaled_l1')
    with pytest.raises(ConfigError, match="unknown loss 'scaled_l1'"):
        objective.build([{'name': 'scaled_l1'}], total_steps=10)
