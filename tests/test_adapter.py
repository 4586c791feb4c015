"""jaxdistill/adapter.py: logits, state handling and feature taps of any linen module."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import modules
from jaxdistill.adapter import Model
from jaxdistill.errors import ConfigError


class DictNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        h = nn.Dense(4, name='body')(x.reshape(x.shape[0], -1))
        return {'scores': nn.Dense(3, name='head')(h), 'hidden': h}


def cnn():
    return Model(modules.resolve('cnn', dict(channels=(4, 8), num_classes=10, batch_norm=True),
                                 key='student.module'), name='student')


def test_taps_equal_a_manual_forward():
    model = cnn()
    x = jax.random.normal(jax.random.key(1), (2, 8, 8, 1))
    params, state = model.init(jax.random.key(0), x)
    _, _, feats = model.apply(params, state, x, train=False, taps=('conv0',))
    # Independent reference: the first conv applied by hand.
    kernel, bias = params['conv0']['kernel'], params['conv0']['bias']
    ref = jax.lax.conv_general_dilated(x, kernel, (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias
    np.testing.assert_allclose(feats['conv0'], ref, rtol=1e-5, atol=1e-5)


def test_taps_do_not_leak_into_state():
    model = cnn()
    x = jnp.ones((2, 8, 8, 1))
    params, state = model.init(jax.random.key(0), x)
    assert set(state) == {'batch_stats'}
    _, new_state, feats = model.apply(params, state, x, train=True, taps=('bn1', 'dense'))
    assert set(new_state) == {'batch_stats'} and set(feats) == {'bn1', 'dense'}
    _, eval_state, _ = model.apply(params, state, x, train=False, taps=('dense',))
    assert eval_state is state


def test_feature_shapes_and_errors():
    model = cnn()
    shapes = model.feature_shapes(jnp.ones((1, 8, 8, 1)))
    assert shapes['conv0'] == (1, 8, 8, 4) and shapes['conv1'] == (1, 4, 4, 8)
    assert shapes['head'] == (1, 10)
    with pytest.raises(ConfigError, match="no layer 'conv9'; did you mean 'conv"):
        model.check_taps(['conv9'], jnp.ones((1, 8, 8, 1)), 'distill.losses[2].student')


def test_dict_outputs_pick_logits_by_key():
    x = jnp.ones((2, 5))
    model = Model(DictNet(), logits_key='scores', name='teacher')
    params, state = model.init(jax.random.key(0), x)
    logits, _, _ = model.apply(params, state, x, train=False)
    assert logits.shape == (2, 3)
    with pytest.raises(ConfigError, match=r"teacher.logits_key='': .*\['hidden', 'scores'\]"):
        Model(DictNet(), name='teacher').apply(params, state, x, train=False)
