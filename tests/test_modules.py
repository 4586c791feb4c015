"""jaxdistill/models/modules.py: built-in names, import paths (linen and NNX) and their errors."""

import flax.linen as nn
import jax
import ml_collections
import pytest
from flax import nnx

from jaxdistill.errors import ConfigError
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model, NnxSpec
from tests.user_models import nnx_models


def test_import_path():
    m = modules.resolve('flax.linen:Dense', dict(features=3), key='student.module')
    assert isinstance(m, nn.Dense) and m.features == 3


def test_nnx_class_is_built_later_from_the_init_rng():
    spec = modules.resolve('tests.user_models.nnx_models:CNN', dict(channels=(4,)),
                           key='student.module')
    assert isinstance(spec, NnxSpec) and spec.factory is nnx_models.CNN
    assert spec.kwargs == {'channels': (4,)}
    params, _ = Model(spec).init(jax.random.key(0), jax.numpy.ones((1, 8, 8, 1)))
    assert params['blocks']['0']['conv']['kernel'].shape == (3, 3, 1, 4)


def make_linear(features: int = 3, *, rngs: nnx.Rngs):
    """A factory function (not a class) building an NNX module: recognised by ``rngs``."""
    return nnx.Linear(5, features, rngs=rngs)


def nnx_without_rngs():
    return nnx.Linear(5, 3, rngs=nnx.Rngs(0))


def test_nnx_factory_function():
    spec = modules.resolve('tests.test_modules:make_linear', dict(features=4),
                           key='teacher.module')
    assert isinstance(spec, NnxSpec)
    logits, _, _ = Model(spec).apply(*Model(spec).init(jax.random.key(0), None),
                                     jax.numpy.ones((2, 5)), train=False)
    assert logits.shape == (2, 4)


def test_make_model_reads_a_config_block():
    block = ml_collections.ConfigDict(dict(module='tests.user_models.nnx_models:DictMLP',
                                           kwargs=dict(hidden=8), logits_key='scores'))
    model = modules.make_model(block, 'teacher')
    assert model.name == 'teacher' and model.logits_key == 'scores'
    assert isinstance(model.module, NnxSpec) and model.module.kwargs == {'hidden': 8}


@pytest.mark.parametrize('spec,kwargs,match', [
    ('mpl', {}, "did you mean 'mlp'"),
    ('no_such_pkg.mod:Net', {}, "importing 'no_such_pkg.mod' failed with ModuleNotFoundError"),
    ('tests.user_models.broken:Net', {}, "importing 'tests.user_models.broken' failed with "
                                         "ModuleNotFoundError: No module named "
                                         "'jaxdistill_missing_dependency'"),
    ('flax.linen:Dens', {}, "did you mean 'Dense'"),
    ('mlp', dict(widths=3), r'student.kwargs do not fit'),
    ('collections:OrderedDict', {}, 'not a Flax module'),
    ('tests.user_models.nnx_models:CNN', dict(width=3),
     r"student.kwargs do not fit 'tests.user_models.nnx_models:CNN': .*'width'"),
    ('tests.user_models.nnx_models:CNN', dict(rngs=3), 'jaxdistill passes rngs'),
    ('tests.test_modules:nnx_without_rngs', {}, 'built an NNX module without rngs'),
])
def test_errors(spec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        modules.resolve(spec, kwargs, key='student.module')
