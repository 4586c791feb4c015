"""jaxdistill/train/checkpoint.py: round trip, shape checks, finding runs, damaged steps,
best-keeping, what a resume verifies."""

import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.errors import CheckpointError
from jaxdistill.train import checkpoint as ckpt
from jaxdistill.train.checkpoint import StageCheckpoints, check_shapes, find_stage_dir


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


# Damaged checkpoints, best-metric retention, resume identity.

def abstract_of(t):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), t)


def saved_steps(directory, steps=(1, 2, 3), **kwargs):
    """A stage directory with one committed checkpoint per step (params filled with it)."""
    ckpts = StageCheckpoints(str(directory), keep=5, **kwargs)
    for s in steps:
        t = tree()
        t['params']['dense']['kernel'] = jnp.full((2, 3), float(s))
        ckpts.save(s, t, {'step': jnp.int32(s)}, {'step': s})
    ckpts.wait()
    ckpts.close()
    return str(directory)


def truncate_data(step_dir):
    """Halves every array data file of the step, as a full disk or a partial copy would."""
    for root, _, files in os.walk(os.path.join(step_dir, 'model')):
        for name in files:
            path = os.path.join(root, name)
            if os.path.basename(root) == 'd':
                with open(path, 'r+b') as f:
                    f.truncate(os.path.getsize(path) // 2)


@pytest.mark.parametrize('damage', ['truncated', 'uncommitted', 'meta'])
def test_damaged_latest_is_reported_in_one_line_and_set_aside(tmp_path, damage):
    d = saved_steps(tmp_path / 'student')
    if damage == 'truncated':
        truncate_data(os.path.join(d, '3'))
    elif damage == 'uncommitted':
        os.remove(os.path.join(d, '3', 'commit_success.txt'))
    else:
        with open(os.path.join(d, '3', 'meta', 'metadata'), 'r+b') as f:
            f.truncate(5)
    lines = []
    ckpts = StageCheckpoints(d, report=lines.append)
    step, restored = ckpts.restore_latest(abstract_of(tree()))
    assert step == 2 and restored.meta == {'step': 2}
    np.testing.assert_array_equal(restored.model['params']['dense']['kernel'], 2.0)
    assert len(lines) == 1 and '\n' not in lines[0], lines
    assert lines[0].startswith(f'warning: checkpoint {d}/3 is damaged (')
    assert lines[0].endswith(f'resuming from step 2; the damaged files are kept in {d}/3.damaged')
    assert sorted(os.listdir(d)) == ['1', '2', '3.damaged']  # moved aside, nothing deleted
    ckpts.save(3, tree(), {'step': jnp.int32(3)}, {'step': 3})  # the step can be written again
    ckpts.wait()
    assert ckpts.latest_step() == 3
    ckpts.close()


def test_unfinished_save_is_reported_and_left_alone(tmp_path):
    d = saved_steps(tmp_path / 'student')
    os.rename(os.path.join(d, '3'), os.path.join(d, '3.orbax-checkpoint-tmp-17'))  # killed
    lines = []
    ckpts = StageCheckpoints(d, report=lines.append)
    assert ckpts.restore_latest(abstract_of(tree()))[0] == 2
    ckpts.close()
    assert lines == [f'warning: {d}: ignoring 1 unfinished save(s) (3.orbax-checkpoint-tmp-17) '
                     'left by a killed run; a new save of the same step replaces it']
    assert '3.orbax-checkpoint-tmp-17' in os.listdir(d)


def test_nothing_is_moved_when_no_step_restores(tmp_path):
    d = saved_steps(tmp_path / 'student', steps=(1, 2))
    for step in ('1', '2'):
        truncate_data(os.path.join(d, step))
    ckpts = StageCheckpoints(d, report=lambda line: None)
    with pytest.raises(CheckpointError, match=rf'no checkpoint in {d} restores \(newest, step 2'):
        ckpts.restore_latest(abstract_of(tree()))
    ckpts.close()
    assert sorted(os.listdir(d)) == ['1', '2']


def test_a_module_that_does_not_fit_is_not_damage(tmp_path):
    d = saved_steps(tmp_path / 'student')
    wrong = tree()
    wrong['params']['dense']['kernel'] = jnp.zeros((2, 4))
    ckpts = StageCheckpoints(d, report=lambda line: pytest.fail(line))
    with pytest.raises(CheckpointError, match="parameter 'params/dense/kernel'"):
        ckpts.restore_latest(abstract_of(wrong))
    ckpts.close()
    assert sorted(os.listdir(d)) == ['1', '2', '3']


@pytest.mark.parametrize('mode,best', [('max', 2), ('min', 3)])
def test_keeps_the_last_n_and_the_best_across_restarts(tmp_path, mode, best):
    def kept():
        return sorted(int(n) for n in os.listdir(tmp_path / 's') if n.isdigit())

    def manager():
        return StageCheckpoints(str(tmp_path / 's'), keep=2, best_metric='eval/accuracy',
                                best_mode=mode)

    ckpts = manager()
    for step, score in [(1, 0.5), (2, 0.9), (3, 0.2), (4, None), (5, 0.3)]:
        metrics = None if score is None else {'eval/accuracy': score}
        ckpts.save(step, tree(), {'step': jnp.int32(step)}, {}, metrics)
        ckpts.wait()
    assert ckpts.best_step() == best and kept() == sorted({best, 4, 5})
    ckpts.close()
    ckpts = manager()  # a resumed run still knows which step is best
    ckpts.save(6, tree(), {'step': jnp.int32(6)}, {})
    ckpts.wait()
    assert ckpts.best_step() == best and kept() == sorted({best, 5, 6})
    ckpts.close()


def test_check_resume_names_what_differs():
    expected = {'rng': ckpt.rng_identity(0), 'data': {'first_batch_sha256': 'a'},
                'teacher': {'params_sha256': 'f' * 64, 'checkpoint': '/t'}}
    same = {**expected, 'data': {'first_batch_sha256': 'a', 'position': 10}}
    ckpt.check_resume(same, expected, 10, 'w/student/10')
    ckpt.check_resume({}, expected, 10, 'w/student/10')  # written before these were recorded
    cases = [({'rng': ckpt.rng_identity(1)}, 'was written with RNG'),
             ({'data': {'first_batch_sha256': 'b'}}, 'was trained on other data'),
             ({'data': {'first_batch_sha256': 'a', 'position': 9}}, 'data position is 9'),
             ({'teacher': {'params_sha256': 'e' * 64, 'checkpoint': '/old'}},
              r'distilled from teacher sha256 eeeeeeeeeeee \(/old\) but the teacher now is '
              r'ffffffffffff \(/t\)')]
    for saved, message in cases:
        with pytest.raises(CheckpointError, match=message):
            ckpt.check_resume({**same, **saved}, expected, 10, 'w/student/10')


def test_gs_teacher_path_is_kept_whole_and_needs_gcsfs():
    assert ckpt.abspath('gs://bucket/run/teacher/') == 'gs://bucket/run/teacher'
    try:
        import gcsfs  # noqa: F401
        pytest.skip('gcsfs is installed: the path would be looked up on the network')
    except ImportError:
        pass
    with pytest.raises(CheckpointError, match=r"^teacher.checkpoint='gs://b/run': .*gcsfs"):
        ckpt.find_teacher('gs://b/run')
