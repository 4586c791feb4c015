"""jaxdistill/train/__init__.py and run.py: the jitted step on a mesh, frozen teacher, stages."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jaxdistill import config as config_lib
from jaxdistill import provenance, run, train
from jaxdistill.config import loss_entry
from jaxdistill.train.checkpoint import StageCheckpoints
from tests.helpers import load_config


def smoke(data_dir):
    c = load_config('digits.py', 'smoke')
    c.data.data_dir = data_dir
    # A label term keeps the loss O(1): after 20 teacher steps, the KL between two nearly
    # uniform distributions is ~1e-4 with ~1e-8 float32 noise, too small for an rtol test.
    c.distill.losses = (loss_entry('kd', weight=0.5, temperature=2.0), loss_entry('ce', weight=0.5))
    return c


@pytest.fixture(scope='module')
def runs(data_dir, tmp_path_factory):
    """The smoke job on 1 device and on all 8 forced CPU devices."""
    assert jax.device_count() == 8, 'tests/conftest.py forces 8 CPU devices'
    out = {}
    for n in (1, 8):
        workdir = str(tmp_path_factory.mktemp(f'run{n}'))
        out[n] = (workdir, run.train_and_evaluate(smoke(data_dir), workdir,
                                                  devices=jax.devices()[:n]))
    return out


def _student_losses(workdir, stage='student'):
    ckpts = StageCheckpoints(f'{workdir}/{stage}', read_only=True)
    meta = ckpts.meta()
    ckpts.close()
    return np.array([h['loss'] for h in meta['history'] if 'loss' in h])


@pytest.mark.parametrize('stage', ['teacher', 'baseline', 'student'])
def test_one_and_eight_devices_give_the_same_losses(runs, stage):
    one, eight = _student_losses(runs[1][0], stage), _student_losses(runs[8][0], stage)
    assert len(one) == 4
    # With mixup a row keeps its label only when both mixed rows are labelled (1 % of rows
    # at labelled_fraction=0.1), so a logged student loss may be the KL alone, ~1e-3, whose
    # float32 reduction order differs on 8 devices by ~1e-7: hence the absolute tolerance.
    np.testing.assert_allclose(one, eight, rtol=1e-5, atol=1e-6)


def test_one_and_eight_devices_give_the_same_model(runs):
    r1, r8 = runs[1][1], runs[8][1]
    for stage in ('baseline', 'student'):
        assert abs(r1[stage]['accuracy'] - r8[stage]['accuracy']) <= 1 / 360
        np.testing.assert_allclose(r1[stage]['kl_to_teacher'], r8[stage]['kl_to_teacher'],
                                   rtol=1e-3)


def test_teacher_is_frozen(runs, data_dir):
    """The student stage leaves the teacher's checkpoint (params and BN state) as it was."""
    workdir, result = runs[1]
    c = smoke(data_dir)
    c.teacher.checkpoint = workdir
    p = run.plan(c, workdir + '_probe', devices=jax.devices()[:1])
    teacher = run.load_teacher(p)
    assert provenance.params_sha256(teacher['params']) == result['provenance'][
        'teacher_params_sha256']


def test_learning_rate_schedule():
    c = config_lib.base_config().optimizer
    c.learning_rate, c.warmup_steps = 1.0, 10
    sched = train.learning_rate_schedule(c, 110)
    np.testing.assert_allclose([sched(0), sched(5), sched(10), sched(60), sched(110)],
                               [0.0, 0.5, 1.0, 0.5, 0.0], atol=1e-6)


def test_optimizers_step():
    params = {'w': jnp.array([1.0, -2.0])}
    for name in ('adamw', 'adam', 'sgd'):
        c = config_lib.base_config().optimizer
        c.name, c.warmup_steps = name, 0
        opt = train.make_optimizer(c, 10)
        grads = jax.grad(lambda p: jnp.sum(p['w'] ** 2))(params)
        updates, _ = opt.update(grads, opt.init(params), params)
        new = optax.apply_updates(params, updates)
        assert jnp.all(jnp.abs(new['w']) < jnp.abs(params['w'])), name


def test_limited_labels_baseline_and_transfer_student(runs, data_dir, tmp_path):
    """data.labelled_fraction: the teacher is reused, the baseline sees only the labelled
    quarter, the student every image (ce on the labelled rows, kd on all), with mixup."""
    workdir, full = runs[1]
    c = smoke(data_dir)
    c.teacher.checkpoint = workdir
    c.data.labelled_fraction = 0.25
    c.data.mixup = 1.0
    result = run.train_and_evaluate(c, str(tmp_path / 'quarter'), devices=jax.devices()[:1])
    prov = result['provenance']
    assert (prov['train_examples'], prov['labelled_examples']) == (1437, 359)
    assert prov['teacher_params_sha256'] == full['provenance']['teacher_params_sha256']
    for stage in ('baseline', 'student'):
        assert result[stage]['params_sha256'] != full[stage]['params_sha256']
        assert np.isfinite(result[stage]['train_loss'])
    assert full['provenance']['labelled_examples'] == 144  # the smoke preset's 10 %
