"""train.grad_accum_steps: N micro-batches give the update of one batch N times their size.

Each case builds the real jitted step (`train.make_train_step`) twice on 8 CPU devices, once
whole and once accumulated, from the same state and batch, and compares the updated
parameters and the logged losses. The batches have uneven padding and withheld labels, so
a per-micro-batch mean (instead of the whole batch's token normalisation) would differ.
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdistill import config as config_lib
from jaxdistill import objective, train
from jaxdistill.config import loss_entry
from jaxdistill.errors import ConfigError
from jaxdistill.models import modules
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks import StepInputs

MESH = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))


def _model(module, name, **kwargs):
    return modules.make_model(ml_collections.ConfigDict(dict(module=module, kwargs=kwargs)), name)


def _run(student, teacher, obj, batch, prepare, accum, optimizer):
    mesh = mesh_lib.make_mesh(MESH)
    sample = jax.tree.map(lambda x: x[:1], prepare(batch, None).inputs)
    t_params, t_state = teacher.init(jax.random.key(1), sample)
    teacher_vars = {'params': t_params, 'state': t_state}
    state, shardings = train.create_train_state(student, optimizer, jax.random.key(2), sample,
                                                mesh)
    before = jax.device_get(state.params)
    step = train.make_train_step(
        student, obj, optimizer, mesh=mesh, state_shardings=shardings, seed=0, prepare=prepare,
        teacher=teacher, teacher_shardings=jax.tree.map(lambda _: mesh_lib.replicated(mesh),
                                                        teacher_vars),
        grad_accum_steps=accum)
    state, metrics = step(state, teacher_vars, mesh_lib.to_global(mesh, batch))
    return before, jax.device_get(state.params), jax.device_get(metrics)


def _compare(runs, keys):
    (b1, p1, m1), (b4, p4, m4) = runs
    leaves = lambda t: jax.tree.leaves(t)
    for a, b in zip(leaves(b1), leaves(b4)):
        np.testing.assert_array_equal(a, b)  # the same starting point
    moved = max(float(np.abs(a - b).max()) for a, b in zip(leaves(p1), leaves(b1)))
    assert moved > 1e-3  # the step did something
    for a, b in zip(leaves(p1), leaves(p4)):
        np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5)
    for k in keys:
        np.testing.assert_allclose(m1[k], m4[k], rtol=1e-5, err_msg=k)


def _lm_batch(rng, batch=32, length=16, vocab=64):
    tokens = rng.integers(3, vocab, (batch, length + 1)).astype(np.int32)
    lengths = rng.integers(1, length + 1, batch)  # uneven padding: micro counts differ
    mask = np.arange(length)[None, :] < lengths[:, None]
    labelled = rng.random(batch) < 0.6
    return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'mask': mask,
            'labelled': labelled}


def _lm_prepare(batch, rng):
    del rng
    return StepInputs(batch['inputs'], batch['targets'], batch['mask'],
                      batch['labelled'][:, None])


@pytest.mark.parametrize('opt', ['sgd', pytest.param('adamw_clipped', marks=pytest.mark.slow)])
def test_lm_accumulated_equals_one_batch(opt):
    kw = dict(vocab_size=64, num_heads=2, max_len=16)
    teacher = _model('decoder', 'teacher', num_layers=2, d_model=32, mlp_dim=64, **kw)
    student = _model('decoder', 'student', num_layers=1, d_model=16, mlp_dim=32, **kw)
    obj = objective.build([loss_entry('kd', weight=0.7, temperature=2.0),
                           loss_entry('ce', weight=0.3)], total_steps=10)
    if opt == 'sgd':
        optimizer = optax.sgd(1.0)
    else:  # the real optimizer: clipping reads the global norm of the accumulated gradient
        cfg = config_lib.base_config().optimizer
        cfg.clip_norm, cfg.warmup_steps = 0.5, 0
        optimizer = train.make_optimizer(cfg, 10)
    batch = _lm_batch(np.random.default_rng(0))
    runs = [_run(student, teacher, obj, batch, _lm_prepare, n, optimizer) for n in (1, 4)]
    _compare(runs, ('loss', 'distill/kd', 'distill/ce', 'grad_norm'))


def test_classification_accumulated_equals_one_batch():
    teacher = _model('mlp', 'teacher', hidden=(32,), num_classes=10)
    student = _model('mlp', 'student', hidden=(16,), num_classes=10)
    obj = objective.build([loss_entry('kd', weight=0.9, temperature=4.0),
                           loss_entry('ce', weight=0.1)], total_steps=10)
    rng = np.random.default_rng(1)
    batch = {'image': rng.normal(size=(32, 8, 8, 1)).astype(np.float32),
             'label': rng.integers(0, 10, 32).astype(np.int32),
             'labelled': rng.random(32) < 0.3}

    def prepare(b, rng):
        del rng
        return StepInputs(b['image'], jax.nn.one_hot(b['label'], 10), None, b['labelled'])

    runs = [_run(student, teacher, obj, batch, prepare, n, optax.sgd(1.0)) for n in (1, 8)]
    _compare(runs, ('loss', 'distill/kd', 'distill/ce', 'grad_norm'))


def test_window_counts_are_the_whole_batch():
    obj = objective.build([loss_entry('kd'), loss_entry('ce'),
                           {'name': 'feature_mse', 'student': 'a', 'teacher': 'b'}], 10)
    mask = jnp.array([[1, 1, 0], [1, 0, 0]], bool)
    w = objective.accumulation_window(obj, (2, 3, 5), mask, jnp.array([[True], [False]]), 2)
    assert [None if c is None else float(c) for c in w.counts] == [3.0, 2.0, None]


@pytest.mark.parametrize('accum,batch,match', [
    (3, 32, r'train.grad_accum_steps=3 does not divide data.batch_size=32'),
    (0, 32, r'train.grad_accum_steps=0 must be >= 1'),
])
def test_bad_accumulation_is_one_line(accum, batch, match):
    c = config_lib.base_config()
    c.train.grad_accum_steps, c.data.batch_size = accum, batch
    with pytest.raises(ConfigError, match=match) as info:
        config_lib.validate(c)
    assert '\n' not in str(info.value)
