"""jaxdistill/modules.py: built-in names, import paths and their errors."""

import flax.linen as nn
import pytest

from jaxdistill import modules
from jaxdistill.errors import ConfigError


def test_import_path():
    m = modules.resolve('flax.linen:Dense', dict(features=3), key='student.module')
    assert isinstance(m, nn.Dense) and m.features == 3


@pytest.mark.parametrize('spec,kwargs,match', [
    ('mpl', {}, "did you mean 'mlp'"),
    ('no_such_pkg.mod:Net', {}, "importing 'no_such_pkg.mod' failed with ModuleNotFoundError"),
    ('flax.linen:Dens', {}, "did you mean 'Dense'"),
    ('mlp', dict(widths=3), r'student.kwargs do not fit'),
    ('collections:OrderedDict', {}, 'not a Flax module'),
])
def test_errors(spec, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        modules.resolve(spec, kwargs, key='student.module')
