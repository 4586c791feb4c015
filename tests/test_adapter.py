"""jaxdistill/models/adapter.py: logits, state handling and feature taps of linen and NNX
modules."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.errors import ConfigError
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model


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


# ---------------------------------------------------------------- NNX modules and outputs

NNX_CNN = 'tests.user_models.nnx_models:CNN'


def nnx_cnn(dropout=0.0, logits_key=''):
    spec = modules.resolve(NNX_CNN, dict(channels=(4,), dense=8, dropout=dropout),
                           key='student.module')
    return Model(spec, logits_key=logits_key, name='student')


def images(n=4, seed=1):
    return jax.random.normal(jax.random.key(seed), (n, 8, 8, 1))


def test_nnx_init_is_two_dicts_of_arrays():
    model, x = nnx_cnn(), images()
    params, state = model.init(jax.random.key(0), x)
    assert set(params) == {'blocks', 'dense', 'head'}
    assert params['blocks']['0']['conv']['kernel'].shape == (3, 3, 1, 4)
    # BatchNorm statistics are state; RNG streams are neither (re-keyed every step).
    assert jax.tree.map(jnp.shape, state) == {'blocks': {'0': {'bn': {'mean': (4,), 'var': (4,)}}}}
    again, _ = model.init(jax.random.key(0), x)
    other, _ = model.init(jax.random.key(1), x)
    k = ('blocks', '0', 'conv', 'kernel')
    leaf = lambda t: t[k[0]][k[1]][k[2]][k[3]]
    np.testing.assert_array_equal(leaf(params), leaf(again))
    assert not np.allclose(leaf(params), leaf(other))
    logits, _, _ = model.apply(params, state, x, train=False)
    assert logits.shape == (4, 10)


def test_nnx_taps_equal_a_manual_forward():
    model, x = nnx_cnn(), images()
    params, state = model.init(jax.random.key(0), x)
    _, _, feats = model.apply(params, state, x, train=False, taps=('blocks/0/conv', 'blocks/0'))
    conv, bn = params['blocks']['0']['conv'], params['blocks']['0']['bn']
    ref = jax.lax.conv_general_dilated(x, conv['kernel'], (1, 1), 'SAME',
                                       dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + conv['bias']
    np.testing.assert_allclose(feats['blocks/0/conv'], ref, rtol=1e-5, atol=1e-5)
    stats = state['blocks']['0']['bn']  # eval: the running statistics, eps 1e-5
    normed = (ref - stats['mean']) / np.sqrt(stats['var'] + 1e-5) * bn['scale'] + bn['bias']
    np.testing.assert_allclose(feats['blocks/0'], np.maximum(normed, 0), rtol=1e-5, atol=1e-5)


def test_nnx_batchnorm_updates_in_training_and_is_frozen_in_evaluation():
    model, x = nnx_cnn(), images()
    params, state = model.init(jax.random.key(0), x)
    _, new_state, feats = model.apply(params, state, x, train=True, rng=jax.random.key(2),
                                      taps=('blocks/0/conv',))
    h = np.asarray(feats['blocks/0/conv'], np.float64).reshape(-1, 4)
    got = new_state['blocks']['0']['bn']
    # flax momentum 0.99 from the initial (0, 1), biased batch variance.
    np.testing.assert_allclose(got['mean'], 0.01 * h.mean(0), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got['var'], 0.99 + 0.01 * h.var(0), rtol=1e-4, atol=1e-6)
    _, eval_state, _ = model.apply(params, new_state, x, train=False)
    assert eval_state is new_state
    # Evaluation normalises with stored statistics: an example's output ignores the batch.
    one = model.apply(params, new_state, x[:1], train=False)[0]
    np.testing.assert_allclose(one, model.apply(params, new_state, x, train=False)[0][:1],
                               rtol=1e-5, atol=1e-5)
    one = model.apply(params, new_state, x[:1], train=True, rng=jax.random.key(0))[0]
    batch = model.apply(params, new_state, x, train=True, rng=jax.random.key(0))[0]
    assert not np.allclose(one, batch[:1], atol=1e-3)


def test_nnx_dropout_is_keyed_by_the_rng():
    model, x = nnx_cnn(dropout=0.5), images()
    params, state = model.init(jax.random.key(0), x)
    fwd = jax.jit(lambda rng: model.apply(params, state, x, train=True, rng=rng)[0])
    a, b, c = fwd(jax.random.key(1)), fwd(jax.random.key(1)), fwd(jax.random.key(2))
    np.testing.assert_array_equal(a, b)
    assert not np.allclose(a, c)
    e1 = model.apply(params, state, x, train=False)[0]
    e2 = model.apply(params, state, x, train=False, rng=jax.random.key(3))[0]
    np.testing.assert_array_equal(e1, e2)  # no dropout in evaluation


def test_nnx_gradients_reach_every_parameter():
    model, x = nnx_cnn(), images()
    params, state = model.init(jax.random.key(0), x)

    def loss(p):
        logits, _, feats = model.apply(p, state, x, train=True, rng=jax.random.key(1),
                                       taps=('dense',))
        return jnp.sum(logits ** 2) + jnp.sum(feats['dense'] ** 2)

    grads = jax.jit(jax.grad(loss))(params)
    assert jax.tree.structure(grads) == jax.tree.structure(params)
    for path, g in jax.tree_util.tree_flatten_with_path(grads)[0]:
        assert float(jnp.abs(g).max()) > 0, jax.tree_util.keystr(path)


def test_nnx_feature_names_sown_values_and_errors():
    model = nnx_cnn()
    shapes = model.feature_shapes(jnp.ones((1, 8, 8, 1)))
    assert shapes == {'blocks/0': (1, 8, 8, 4), 'blocks/0/conv': (1, 8, 8, 4),
                      'blocks/0/bn': (1, 8, 8, 4), 'dense': (1, 8), 'drop': (1, 8),
                      'head': (1, 10)}
    with pytest.raises(ConfigError, match="no layer 'blocks/0/cnv'; did you mean 'blocks/0/conv'"):
        model.check_taps(['blocks/0/cnv'], jnp.ones((1, 8, 8, 1)), 'distill.losses[1].student')
    mlp = Model(modules.resolve('tests.user_models.nnx_models:DictMLP', {},
                                key='teacher.module'), logits_key='scores', name='teacher')
    x = images()
    params, state = mlp.init(jax.random.key(0), x)
    logits, _, feats = mlp.apply(params, state, x, train=False, taps=('normed', 'bn'))
    assert logits.shape == (4, 10)
    np.testing.assert_array_equal(feats['normed'], feats['bn'])  # sown == intercepted
    with pytest.raises(ConfigError, match=r"teacher.logits_key='': .*\['hidden', 'scores'\]"):
        Model(mlp.module, name='teacher').apply(params, state, x, train=False)


def test_recording_leaves_user_classes_alone():
    from tests.user_models import nnx_models

    call = nnx_models.ConvBlock.__call__
    model, x = nnx_cnn(), images()
    params, state = model.init(jax.random.key(0), x)
    model.apply(params, state, x, train=False, taps=('blocks/0',))
    assert nnx_models.ConvBlock.__call__ is call
    fresh = model._backend.build(jax.random.key(0))
    assert type(fresh.blocks[0]) is nnx_models.ConvBlock


def test_tuple_outputs_pick_logits_by_index():
    spec = 'tests.user_models.linen_cnn:TupleCNN'
    x = images(2)
    module = modules.resolve(spec, dict(channels=(4,), dense=8), key='student.module')
    params, state = Model(module).init(jax.random.key(0), x)
    pick = lambda key: Model(module, logits_key=key, name='student').apply(
        params, state, x, train=False)[0]
    assert pick('1').shape == (2, 10) and pick('-1').shape == (2, 10)
    assert pick('').shape == (2, 1)  # the first item by default
    with pytest.raises(ConfigError, match="student.logits_key='5': .* tuple of 2 outputs"):
        pick('5')
    with pytest.raises(ConfigError, match="student.logits_key='scores': the module returns one "
                                          'array'):
        Model(cnn().module, logits_key='scores', name='student').pick_logits(jnp.ones((2, 3)))


class Partitioned(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = False):
        init = nn.with_logical_partitioning(nn.initializers.lecun_normal(), ('embed', 'mlp'))
        return nn.Dense(3, kernel_init=init, name='head')(x)


def test_boxed_init_keeps_logical_names():
    x = jnp.ones((2, 5))
    model = Model(Partitioned())
    boxed, _ = jax.eval_shape(lambda r: model.init(r, x, boxed=True), jax.random.key(0))
    assert isinstance(boxed['head']['kernel'], nn.LogicallyPartitioned)
    assert boxed['head']['kernel'].names == ('embed', 'mlp')
    plain, _ = model.init(jax.random.key(0), x)
    assert isinstance(plain['head']['kernel'], jax.Array)
    spec = modules.resolve('tests.test_adapter:nnx_partitioned', {}, key='student.module')
    boxed, _ = jax.eval_shape(lambda r: Model(spec).init(r, x, boxed=True), jax.random.key(0))
    assert boxed['kernel'].names == ('embed', 'mlp') and boxed['kernel'].value.shape == (5, 3)
    assert not isinstance(boxed['bias'], nn.LogicallyPartitioned)
    plain, _ = Model(spec).init(jax.random.key(0), x)
    assert plain['kernel'].shape == (5, 3)


def nnx_partitioned(*, rngs):
    """An NNX layer with logical axis names, built without a mesh."""
    from flax import nnx

    init = nnx.with_partitioning(nnx.initializers.lecun_normal(), ('embed', 'mlp'))
    return nnx.Linear(5, 3, kernel_init=init, rngs=rngs)
