"""jaxdistill/models: shapes, parameter counts, BatchNorm state and logical axis names of
the built-ins."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib

BUILTINS = [
    ('mlp', dict(hidden=(16,), num_classes=10), (2, 8, 8, 1)),
    ('cnn', dict(channels=(8, 16), num_classes=10, batch_norm=True), (2, 8, 8, 1)),
    # Shallow instances of both ResNet families: every code path, a fraction of the compile.
    ('resnet20', dict(num_classes=10, stage_sizes=(1, 1, 1), width=8), (2, 16, 16, 3)),
    ('resnet50', dict(num_classes=5, stage_sizes=(1, 1), width=8), (2, 32, 32, 3)),
]


@pytest.mark.parametrize('name,kwargs,shape', BUILTINS)
def test_builtin_forward(name, kwargs, shape):
    model = Model(modules.resolve(name, kwargs, key='student.module'))
    x = jnp.ones(shape)
    params, state = jax.jit(model.init)(jax.random.key(0), x)
    apply = jax.jit(model.apply, static_argnames='train')
    logits, new_state, _ = apply(params, state, x, train=True)
    assert logits.shape == (2, kwargs['num_classes'])
    assert logits.dtype == jnp.float32
    if name != 'mlp' and name != 'cnn' or kwargs.get('batch_norm'):
        assert 'batch_stats' in state
        moved = jax.tree.leaves(jax.tree.map(lambda a, b: jnp.any(a != b),
                                             state['batch_stats'], new_state['batch_stats']))
        assert any(bool(m) for m in moved), 'training must update BatchNorm statistics'
    _, eval_state, _ = apply(params, state, x, train=False)
    same = jax.tree.map(lambda a, b: bool(jnp.array_equal(a, b)), eval_state, state)
    assert all(jax.tree.leaves(same)), 'evaluation must leave the state untouched'


def test_resnet50_parameter_count():
    # torchvision's resnet50 has 25,557,032 parameters with 1000 classes.
    model = Model(modules.resolve('resnet50', dict(num_classes=1000), key='teacher.module'))
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.ones((1, 224, 224, 3)))[0]
    n = sum(x.size for x in jax.tree.leaves(shapes))
    assert n == 25_557_032


@pytest.mark.parametrize('name,kwargs,shape', BUILTINS)
def test_every_builtin_parameter_has_logical_names(name, kwargs, shape):
    """Every parameter is named, one name per dimension, from the vocabulary the default
    rules map; `Model.init` still returns plain arrays (what checkpoints hold)."""
    model = Model(modules.resolve(name, kwargs, key='student.module'))
    boxed, _ = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones(shape), boxed=True))
    leaves = jax.tree.leaves(boxed, is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
    known = {n for n, _ in mesh_lib.DEFAULT_RULES} | {None}
    for leaf in leaves:
        assert isinstance(leaf, nn.LogicallyPartitioned), leaf
        assert len(leaf.names) == leaf.value.ndim and set(leaf.names) <= known, leaf.names
    plain, _ = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones(shape)))
    assert jax.tree.structure(plain) == jax.tree.structure(nn.meta.unbox(boxed))
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(plain))


def test_names_follow_the_layer_roles():
    model = Model(modules.resolve('resnet20', dict(stage_sizes=(1, 1, 1), width=8),
                                  key='student.module'))
    boxed, _ = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.ones((1, 16, 16, 3)),
                                                 boxed=True))
    block = boxed['stage1_block0']
    assert block['Conv_0']['kernel'].names == (None, None, 'conv_in', 'conv_out')
    assert block['proj']['kernel'].names == (None, None, 'conv_in', 'conv_out')
    assert block['BatchNorm_1']['scale'].names == ('conv_out',)
    assert boxed['head']['kernel'].names == ('embed', 'classes')
