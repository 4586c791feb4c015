"""jaxdistill/checkpoint.py: round trip, shape checks naming the parameter, finding runs."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.checkpoint import StageCheckpoints, check_shapes, find_stage_dir
from jaxdistill.errors import CheckpointError


def tree():
    return {'params': {'dense': {'kernel': jnp.arange(6.0).reshape(2, 3), 'bias': jnp.ones(3)}},
            'state': {}}


def test_round_trip(tmp_path):
    ckpts = StageCheckpoints(str(tmp_path / 'teacher'))
    ckpts.save(7, tree(), {'step': jnp.int32(7)}, {'done': True})
    ckpts.wait()
    assert ckpts.latest_step() == 7
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree())
    restored = ckpts.restore(7, abstract)
    np.testing.assert_array_equal(restored.model['params']['dense']['kernel'],
                                  tree()['params']['dense']['kernel'])
    assert restored.meta == {'done': True}
    ckpts.close()
    assert find_stage_dir(str(tmp_path)) == str(tmp_path / 'teacher')
    assert find_stage_dir(str(tmp_path / 'teacher')) == str(tmp_path / 'teacher')


def test_shape_mismatch_names_parameter_and_shapes(tmp_path):
    ckpts = StageCheckpoints(str(tmp_path / 'teacher'))
    ckpts.save(1, tree(), {'step': jnp.int32(1)}, {})
    ckpts.wait()
    wrong = tree()
    wrong['params']['dense']['kernel'] = jnp.zeros((2, 4))
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), wrong)
    with pytest.raises(CheckpointError,
                       match=r"'params/dense/kernel' is float32\[2, 3\] there but the module "
                             r'expects float32\[2, 4\]'):
        ckpts.restore(1, abstract)
    missing = tree()
    missing['params']['head'] = {'kernel': jnp.zeros(2)}
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), missing)
    with pytest.raises(CheckpointError, match="no parameter 'params/head/kernel'"):
        ckpts.restore(1, abstract)
    ckpts.close()


def test_check_shapes_accepts_equal_trees():
    check_shapes(tree(), tree(), 'here')


@pytest.mark.parametrize('make', ['missing', 'empty'])
def test_find_stage_dir_errors(tmp_path, make):
    path = tmp_path / 'nothing'
    if make == 'empty':
        path.mkdir()
    with pytest.raises(CheckpointError, match='teacher.checkpoint'):
        find_stage_dir(str(path))
