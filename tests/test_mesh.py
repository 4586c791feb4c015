"""jaxdistill/mesh.py: mesh sizes from config, with one-line errors."""

import jax
import ml_collections
import pytest

from jaxdistill import mesh as mesh_lib
from jaxdistill.errors import ConfigError


def cfg(data=-1, fsdp=1, tensor=1):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize('c,n,want', [
    (cfg(), 8, (8, 1, 1)), (cfg(data=2, fsdp=-1), 8, (2, 4, 1)),
    (cfg(data=-1, tensor=2), 8, (4, 1, 2)), (cfg(), 1, (1, 1, 1)),
])
def test_axis_sizes(c, n, want):
    assert mesh_lib.axis_sizes(c, n) == want


@pytest.mark.parametrize('c,match', [
    (cfg(data=3, fsdp=-1), 'does not divide'), (cfg(data=2, fsdp=2, tensor=1), 'has 4 devices'),
    (cfg(data=-1, fsdp=-1), 'only one'),
])
def test_bad_mesh(c, match):
    with pytest.raises(ConfigError, match=match):
        mesh_lib.axis_sizes(c, 8)


def test_make_mesh_uses_every_device():
    mesh = mesh_lib.make_mesh(cfg(data=-1, tensor=2))
    assert mesh.axis_names == ('data', 'fsdp', 'tensor')
    assert mesh.size == jax.device_count()


def test_batch_divisibility():
    mesh = mesh_lib.make_mesh(cfg())
    mesh_lib.check_batch(mesh, 8 * jax.device_count())
    if jax.device_count() > 1:
        with pytest.raises(ConfigError, match='data.batch_size=9 is not divisible'):
            mesh_lib.check_batch(mesh, 9)
