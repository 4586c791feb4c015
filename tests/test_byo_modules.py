"""Bring your own Flax module (issue #6): linen and NNX modules from a user package.

The modules live in ``tests/user_models``, outside jaxdistill, and are named by import
path on the command line, as a user's would be. Both directions (NNX teacher -> linen
student, linen teacher -> NNX student) run the real CLI with a logit loss and a feature
loss whose widths differ (so a projector is learned); then the checkpoints are read back.
The commands that stop before training (list_features, bad modules) run the same CLI in
this process (`jaxdistill.main.run_cli`), which saves a Python and JAX start per case.
"""

import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import orbax.checkpoint as ocp
import pytest

from jaxdistill import main as cli_main
from jaxdistill import objective, provenance, tasks, train
from jaxdistill.models import modules
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks import StepInputs
from tests import helpers
from tests.helpers import ROOT

NNX = 'tests.user_models.nnx_models'
LINEN = 'tests.user_models.linen_cnn'


def losses(student: str, teacher: str) -> str:
    return ("--config.distill.losses=({'name': 'kd', 'weight': 1.0, 'temperature': 1.0}, "
            f"{{'name': 'feature_mse', 'weight': 1.0, 'student': '{student}', "
            f"'teacher': '{teacher}'}})")


# (teacher, student) pairs; the feature loss pairs layers of different widths.
JOBS = {
    # An NNX teacher returning a dict; its tapped layer is a value it sows (32 wide).
    'nnx_teacher': [f'--config.teacher.module={NNX}:DictMLP',
                    "--config.teacher.kwargs={'hidden': 32}", '--config.teacher.logits_key=scores',
                    f'--config.student.module={LINEN}:CNN',
                    "--config.student.kwargs={'channels': (4,), 'dense': 16}",
                    losses('dense', 'normed')],
    # A linen teacher; the NNX student's tapped layer is nested in a list of blocks.
    'linen_teacher': [f'--config.teacher.module={LINEN}:CNN',
                      "--config.teacher.kwargs={'channels': (8,)}",
                      f'--config.student.module={NNX}:CNN',
                      "--config.student.kwargs={'channels': (4,), 'dense': 16}",
                      losses('blocks/0/conv', 'conv0')],
}
PROJECTOR = {'nnx_teacher': (16, 32), 'linen_teacher': (4, 8)}


def _args(workdir, overrides, data_dir):
    return ['--config=configs/digits.py:smoke', f'--workdir={workdir}',
            f'--config.data.data_dir={data_dir}', '--config.train.baseline=False', *overrides]


def cli(workdir, *overrides, data_dir):
    """The job as a user runs it: ``python -m jaxdistill.main`` in a fresh process."""
    cmd = [sys.executable, '-m', 'jaxdistill.main', *_args(workdir, overrides, data_dir)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)


@pytest.fixture(scope='module')
def prepared(data_dir):
    """digits prepared before the in-process commands, so none prints TFDS's one-time
    message (as the first subprocess job would have)."""
    config = helpers.load_config('digits.py', 'smoke')
    config.data.data_dir = data_dir
    tasks.build(config)
    return data_dir


def cli_here(workdir, *overrides, data_dir, capfd, monkeypatch):
    """The same command line through `run_cli` in this process: (status, stdout, stderr)."""
    monkeypatch.chdir(ROOT)  # the relative --config path, as for the subprocess
    capfd.readouterr()  # drop anything printed before
    status = cli_main.run_cli(['jaxdistill.main', *_args(workdir, overrides, data_dir)])
    out, err = capfd.readouterr()
    return status, out, err


@pytest.fixture(scope='module', params=sorted(JOBS))
def job(request, tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp(request.param) / 'run')
    proc = cli(workdir, *JOBS[request.param], data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    with open(os.path.join(workdir, 'results.json')) as f:
        return request.param, workdir, json.load(f)


def restore(workdir: str, stage: str, item: str = 'model', step: int | None = None):
    directory = os.path.join(workdir, stage)
    step = step or max(int(d) for d in os.listdir(directory) if d.isdigit())
    return ocp.StandardCheckpointer().restore(os.path.join(directory, str(step), item))


def batch_stats(state) -> dict[str, np.ndarray]:
    """Every BatchNorm running mean / variance in a state tree, by path."""
    return {jax.tree_util.keystr(p): np.asarray(v)
            for p, v in jax.tree_util.tree_flatten_with_path(state)[0]
            if jax.tree_util.keystr(p).endswith(("['mean']", "['var']"))}


def test_student_learns_and_teacher_stays_as_trained(job):
    name, workdir, results = job
    first, last = restore(workdir, 'student', step=10), restore(workdir, 'student', step=20)
    assert results['student']['params_sha256'] == provenance.params_sha256(last['params'])
    assert provenance.params_sha256(first['params']) != provenance.params_sha256(last['params'])
    stats = batch_stats(last['state'])
    assert stats, 'the student has BatchNorm statistics'
    for path, value in stats.items():  # moved from their (0, 1) start, and still moving
        assert not np.allclose(value, 0.0 if path.endswith("['mean']") else 1.0), path
        assert not np.array_equal(value, batch_stats(first['state'])[path]), path
    # The teacher the student stage read and scored is, bit for bit, the one trained.
    teacher = restore(workdir, 'teacher')
    sha = provenance.params_sha256(teacher['params'])
    assert results['teacher']['params_sha256'] == sha
    assert results['provenance']['teacher_params_sha256'] == sha
    assert batch_stats(teacher['state']), 'the teacher has BatchNorm statistics'
    # The feature loss was computed, through a learned projector of the right shape.
    aux = restore(workdir, 'student', 'train')['aux']
    assert {k: v.shape for k, v in aux.items()} == {'distill.losses[1]': PROJECTOR[name]}
    with open(os.path.join(workdir, 'student_metrics', 'metrics.jsonl')) as f:
        logged = [json.loads(line) for line in f]
    feature = [r['distill/feature_mse'] for r in logged if 'distill/feature_mse' in r]
    assert len(feature) == 4 and all(math.isfinite(v) and v > 0 for v in feature)


def test_list_features_names_nnx_layers(tmp_path, prepared, capfd, monkeypatch):
    status, out, err = cli_here(str(tmp_path / 'w'), *JOBS['linen_teacher'],
                                '--config.mode=list_features', data_dir=prepared, capfd=capfd,
                                monkeypatch=monkeypatch)
    assert status == 0, err[-2000:]
    rows = {line.split()[0]: line.split(None, 1)[1] for line in out.splitlines()
            if line.startswith('  ')}
    assert rows['blocks/0/conv'] == '[8, 8, 4]' and rows['conv0'] == '[8, 8, 8]'
    assert rows['dense'] == '[16]' and rows['head'] == '[10]'


@pytest.mark.parametrize('overrides,message', [
    ([losses('blocks/0/cnv', 'conv0')],
     "distill.losses[1].student='blocks/0/cnv': the student has no such layer; did you mean "
     "'blocks/0/conv'?"),
    ([f'--config.student.module={"tests.user_models.broken:Net"}'],
     "student.module='tests.user_models.broken:Net': importing 'tests.user_models.broken' "
     "failed with ModuleNotFoundError: No module named 'jaxdistill_missing_dependency'"),
    ([f'--config.teacher.module={NNX}:DictMLP', "--config.teacher.kwargs={'hidden': 8}"],
     "teacher.logits_key='': the module returns a dict with keys ['hidden', 'scores']; set "
     'teacher.logits_key to the one with logits'),
])
def test_bad_modules_fail_at_config_time_in_one_line(tmp_path, prepared, capfd, monkeypatch,
                                                     overrides, message):
    workdir = tmp_path / 'never'
    keys = {o.split('=', 1)[0] for o in overrides}  # these replace the job's own values
    base = [o for o in JOBS['linen_teacher'] if o.split('=', 1)[0] not in keys]
    status, out, err = cli_here(str(workdir), *base, *overrides, data_dir=prepared,
                                capfd=capfd, monkeypatch=monkeypatch)
    assert status == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err[-2000:]
    assert 'Traceback' not in out + err
    assert message in lines[0]
    assert not workdir.exists(), 'nothing may be written for bad input'


def test_the_step_updates_student_statistics_and_reads_the_teacher_frozen():
    """One jitted step on 8 devices: the NNX teacher is applied in evaluation mode (its
    BatchNorm normalises with its running statistics) and its variables are untouched."""
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1)))
    block = lambda module, kwargs: ml_collections.ConfigDict(dict(module=module, kwargs=kwargs))
    teacher = modules.make_model(block(f'{NNX}:CNN', dict(channels=(4,), dense=8)), 'teacher')
    student = modules.make_model(block(f'{LINEN}:CNN', dict(channels=(4,), dense=8)), 'student')
    x = jax.random.normal(jax.random.key(0), (16, 8, 8, 1))
    labels = jnp.arange(16) % 10
    t_params, t_state = teacher.init(jax.random.key(1), x)
    t_state = jax.tree.map(lambda v: v + 2.0, t_state)  # running stats far from the batch's
    teacher_vars = {'params': t_params, 'state': t_state}
    t_sha = provenance.params_sha256(teacher_vars)
    obj = objective.build([{'name': 'feature_mse', 'weight': 1.0, 'student': 'conv0',
                            'teacher': 'blocks/0/bn'}], total_steps=10)
    opt = optax.sgd(0.1)
    state, shardings = train.create_train_state(student, opt, jax.random.key(2), x[:1], mesh)
    before = jax.device_get(state.model)  # the state is donated to the step
    step = train.make_train_step(
        student, obj, opt, mesh=mesh, state_shardings=shardings, seed=0,
        prepare=lambda b, rng: StepInputs(b['image'], jax.nn.one_hot(b['label'], 10), None,
                                          None),
        teacher=teacher, teacher_shardings=jax.tree.map(lambda _: mesh_lib.replicated(mesh),
                                                        teacher_vars))
    state, metrics = step(state, teacher_vars, mesh_lib.to_global(mesh, {'image': x,
                                                                         'label': labels}))
    assert provenance.params_sha256(teacher_vars) == t_sha
    assert provenance.params_sha256(state.params) != provenance.params_sha256(before['params'])
    for path, value in batch_stats(state.model_state).items():
        assert not np.array_equal(value, batch_stats(before['state'])[path]), path
    # Independent reference: the student's conv0 (before its BatchNorm) against the
    # teacher's BatchNorm output in evaluation and in training mode.
    h_s = student.apply(before['params'], before['state'], x, train=False, taps=('conv0',))[2]
    frozen, live = (teacher.apply(t_params, t_state, x, train=mode, rng=jax.random.key(3),
                                  taps=('blocks/0/bn',))[2]['blocks/0/bn'] for mode in (0, 1))
    mse = lambda t: float(np.mean((np.float64(h_s['conv0']) - np.float64(t)) ** 2))
    np.testing.assert_allclose(float(metrics['distill/feature_mse']), mse(frozen), rtol=1e-4)
    assert abs(mse(live) - mse(frozen)) > 0.1 * mse(frozen)
