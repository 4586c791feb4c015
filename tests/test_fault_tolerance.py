"""Fault tolerance end to end: SIGKILL and SIGTERM mid-run, export, teachers, non-finite loss.

The subprocess tests run the CLI the way a user does and compare against one
uninterrupted run of the same command: the parameters' SHA-256 in results.json and the
running digest of every batch consumed (checkpoint meta) must be equal, bit for bit.
"""

import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from orbax.checkpoint import StandardCheckpointer

from jaxdistill import config as config_lib
from jaxdistill import export, objective, provenance, run, train
from jaxdistill.errors import CheckpointError, ConfigError, TrainingError
from jaxdistill.train.checkpoint import StageCheckpoints, find_teacher
from tests.helpers import ROOT, load_config

# Enough steps to interrupt mid-stage; a metrics line per step tells the test where the run is.
STEPS = {'teacher': 30, 'baseline': 40, 'student': 40}
OVERRIDES = ['--config.teacher.steps=30', '--config.train.steps=40', '--config.train.log_every=1',
             '--config.train.checkpoint_every=7']


def command(workdir, data_dir, *extra):
    return [sys.executable, '-m', 'jaxdistill.main', '--config=configs/digits.py:smoke',
            f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *OVERRIDES, *extra]


def cli(workdir, data_dir, *extra):
    return subprocess.run(command(workdir, data_dir, *extra), cwd=ROOT, capture_output=True,
                          text=True, timeout=600)


def results(workdir):
    with open(os.path.join(workdir, 'results.json')) as f:
        return json.load(f)


def final_meta(workdir, stage):
    ckpts = StageCheckpoints(os.path.join(workdir, stage), read_only=True)
    try:
        return ckpts.meta()
    finally:
        ckpts.close()


def logged_step(workdir, stage) -> int:
    """The last step in ``STAGE_metrics/metrics.jsonl`` (0 before the first)."""
    try:
        with open(os.path.join(workdir, f'{stage}_metrics', 'metrics.jsonl')) as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        return 0
    steps = [json.loads(line)['step'] for line in lines[:-1]]  # the last may be half written
    return max(steps, default=0)


def start_and_wait(workdir, data_dir, stage, step):
    """Starts the CLI and returns it once ``stage`` has logged ``step`` (or more)."""
    proc = subprocess.Popen(command(workdir, data_dir), cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while logged_step(workdir, stage) < step:
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1]
            pytest.fail(f'the run ended before {stage} step {step}: {err[-2000:]}')
        time.sleep(0.002)
    return proc


def assert_same_run(workdir, reference):
    got, want = results(workdir), results(reference)
    for stage in STEPS:
        assert got[stage]['params_sha256'] == want[stage]['params_sha256'], stage
        assert final_meta(workdir, stage)['data'] == final_meta(reference, stage)['data'], stage


@pytest.fixture(scope='module')
def reference(tmp_path_factory, data_dir):
    """The uninterrupted run every interrupted one must reproduce bit for bit."""
    workdir = str(tmp_path_factory.mktemp('ft') / 'reference')
    proc = cli(workdir, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir


@pytest.mark.slow
def test_sigkill_at_a_random_step_then_rerun_is_bitwise_exact(reference, data_dir, tmp_path):
    seed = random.SystemRandom().randrange(2**32)
    rng = random.Random(seed)
    stage = rng.choices(list(STEPS), weights=list(STEPS.values()))[0]
    step = rng.randrange(1, STEPS[stage])
    workdir = str(tmp_path / 'killed')
    proc = start_and_wait(workdir, data_dir, stage, step)
    proc.kill()
    proc.communicate()
    reached = logged_step(workdir, stage)
    rerun = cli(workdir, data_dir)
    assert rerun.returncode == 0, (seed, rerun.stderr[-3000:])
    resumed = re.search(rf'{stage} +resuming from step (\d+)', rerun.stdout)
    if reached < STEPS[stage] and reached >= 7:  # a checkpoint existed and the stage was unfinished
        assert resumed and int(resumed[1]) <= reached, (seed, stage, step, rerun.stdout)
    assert_same_run(workdir, reference)
    print(f'SIGKILL (seed {seed}) at {stage} step {reached}; resumed from step '
          f'{resumed[1] if resumed else "-"}; every stage bitwise equal to the reference')


@pytest.mark.slow
def test_sigterm_saves_the_next_step_exits_0_and_resumes_exactly(reference, data_dir, tmp_path):
    step = random.SystemRandom().randrange(2, STEPS['student'] - 10)  # well before the end
    workdir = str(tmp_path / 'preempted')
    proc = start_and_wait(workdir, data_dir, 'student', step)
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=120)
    latency = time.monotonic() - sent
    assert proc.returncode == 0, err[-3000:]
    saved = re.search(r'student: SIGTERM received; saved step (\d+)/40 to (\S+); rerun the same '
                      r'command to resume', out)
    assert saved, out[-2000:]
    saved_step = int(saved[1])
    with open(os.path.join(workdir, 'student_metrics', 'metrics.jsonl')) as f:
        trained = json.loads(f.read().splitlines()[-1])['step']
    assert step <= saved_step == trained  # saved the step in flight and trained no further
    assert saved[2] == os.path.join(workdir, 'student', str(saved_step))
    assert max(int(n) for n in os.listdir(saved[2] + '/..') if n.isdigit()) == saved_step
    assert os.path.exists(os.path.join(saved[2], 'commit_success.txt'))
    print(f'SIGTERM at student step >= {step}: saved step {saved_step}, exit 0 after '
          f'{latency:.2f} s')
    rerun = cli(workdir, data_dir)
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert f'student   resuming from step {saved_step}' in rerun.stdout
    assert_same_run(workdir, reference)


def smoke_config(data_dir, **train):
    c = load_config('digits.py', 'smoke')
    c.data.data_dir = data_dir
    c.teacher.steps, c.train.steps, c.train.checkpoint_every = 30, 40, 7
    c.train.update(train)
    return c


@pytest.fixture(scope='module')
def teacher_run(data_dir, tmp_path_factory):
    """A workdir holding only a jaxdistill teacher (10 steps, trained in process)."""
    workdir = tmp_path_factory.mktemp('teacher_run')
    c, p = stage_plan(data_dir)
    stage = train.Stage('teacher', str(workdir / 'teacher'), p.teacher, objective.label_only(),
                        10, 1, p.task.train_batches(1), prepare=p.task.prepare_fn())
    result = train.run_stage(stage, c, p.mesh, p.sample)
    return str(workdir), provenance.params_sha256(result.model['params'])


def test_teacher_shape_mismatch_names_the_parameter_and_both_shapes(teacher_run, data_dir):
    c, _ = stage_plan(data_dir)
    c.teacher.checkpoint = teacher_run[0]
    c.teacher.kwargs.dense = 12  # the teacher was trained with dense=16
    p = run.plan(c, '/nonexistent/unused', devices=jax.devices()[:1])
    with pytest.raises(CheckpointError, match=r"parameter 'params/dense/bias' is float32\[16\] "
                                              r'there but the module expects float32\[12\]'):
        run.load_teacher(p)


def test_teacher_from_a_run_one_of_its_steps_or_an_orbax_checkpoint(teacher_run, data_dir,
                                                                     tmp_path):
    workdir, want = teacher_run
    c, _ = stage_plan(data_dir)
    c.teacher.checkpoint = workdir
    teacher = run.load_teacher(run.plan(c, '/nonexistent/unused', devices=jax.devices()[:1]))
    plain = str(tmp_path / 'flax_variables')
    with StandardCheckpointer() as ckptr:  # flax's layout: {'params': ..., **collections}
        ckptr.save(plain, {'params': teacher['params'], **teacher['state']})
    for source in (workdir, os.path.join(workdir, 'teacher', '10'), plain):
        c.teacher.checkpoint = source
        p = run.plan(c, '/nonexistent/unused', devices=jax.devices()[:1])
        assert p.teacher_dir == find_teacher(source)
        assert provenance.params_sha256(run.load_teacher(p)['params']) == want, source


@pytest.mark.slow
def test_export_round_trip_in_a_fresh_process(reference, data_dir, tmp_path):
    proc = cli(reference, data_dir, '--config.mode=export')
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = os.path.join(reference, 'export')
    assert f"jaxdistill.export.load('{out}')" in proc.stdout
    with open(os.path.join(out, 'export.json')) as f:
        spec = json.load(f)
    r = results(reference)
    assert spec['params_sha256'] == r['student']['params_sha256']
    assert spec['provenance']['teacher']['params_sha256'] == r['teacher']['params_sha256']
    assert spec['provenance']['step'] == 40 and spec['module'] == 'cnn'
    images = np.random.default_rng(0).random((5, 8, 8, 1), np.float32)
    np.save(tmp_path / 'images.npy', images)
    code = ('import sys, numpy as np\nfrom jaxdistill import export\n'
            'student = export.load(sys.argv[1])\n'
            'np.save(sys.argv[3], np.asarray(student(np.load(sys.argv[2]))))\n')
    fresh = subprocess.run([sys.executable, '-c', code, out, str(tmp_path / 'images.npy'),
                            str(tmp_path / 'logits.npy')], cwd=str(tmp_path),
                           capture_output=True, text=True, timeout=300)
    assert fresh.returncode == 0, fresh.stderr[-3000:]
    c = smoke_config(data_dir)
    p = run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    ckpts = StageCheckpoints(os.path.join(reference, 'student'), read_only=True)
    params, state = jax.eval_shape(p.student.init, jax.random.key(0), p.sample)
    step, restored = ckpts.restore_latest({'params': params, 'state': state})
    ckpts.close()
    want = p.student.apply(restored.model['params'], restored.model['state'], images,
                           train=False)[0]
    np.testing.assert_allclose(np.load(tmp_path / 'logits.npy'), want, rtol=1e-6, atol=1e-6)
    assert export.load(out).provenance['checkpoint'].endswith(f'student/{step}')


@pytest.mark.slow
def test_damaged_latest_checkpoint_is_reported_and_the_previous_one_used(reference, data_dir,
                                                                          tmp_path):
    workdir = str(tmp_path / 'damaged')
    shutil.copytree(reference, workdir)
    os.remove(os.path.join(workdir, 'results.json'))
    student = os.path.join(workdir, 'student')
    assert sorted(os.listdir(student)) == ['35', '40']  # train.keep_checkpoints=2
    os.remove(os.path.join(student, '40', 'commit_success.txt'))  # as if killed mid-commit
    proc = cli(workdir, data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    warnings = [line for line in proc.stdout.splitlines() if line.startswith('warning:')]
    assert warnings == [f'warning: checkpoint {student}/40 is damaged (no commit_success.txt: the '
                        f'save never committed): resuming from step 35; the damaged files are '
                        f'kept in {student}/40.damaged'], proc.stdout
    assert 'student   resuming from step 35' in proc.stdout
    assert sorted(os.listdir(student)) == ['35', '40', '40.damaged']
    assert_same_run(workdir, reference)


# In-process stages: resharded restore and non-finite losses.

def stage_plan(data_dir, n_devices=1, mesh=None, **kwargs):
    c = smoke_config(data_dir)
    c.train.checkpoint_every, c.train.log_every = 10, 5
    for key, value in {**(mesh or {}), **kwargs}.items():
        c[key.split('.')[0]][key.split('.')[1]] = value
    return c, run.plan(c, '/nonexistent/unused', devices=jax.devices()[:n_devices])


def label_stage(p, directory, steps=20, batches=None):
    return train.Stage('baseline', str(directory), p.student, objective.label_only(), steps, 0,
                       p.task.train_batches(0) if batches is None else batches,
                       prepare=p.task.prepare_fn())


def losses(meta):
    return {h['step']: h['loss'] for h in meta['history'] if 'loss' in h}


LAYOUTS = {'1 device': (1, {}), '8 data': (8, {}),
           '8 fsdp': (8, {'mesh.data': 1, 'mesh.fsdp': -1})}


@pytest.mark.parametrize('writer,reader', [('1 device', '8 data'), ('1 device', '8 fsdp'),
                                           ('8 fsdp', '1 device')])
def test_resharded_restore_continues_with_matching_losses(data_dir, tmp_path, writer, reader):
    cw, pw = stage_plan(data_dir, LAYOUTS[writer][0], LAYOUTS[writer][1])
    full = train.run_stage(label_stage(pw, tmp_path / 'w'), cw, pw.mesh, pw.sample)
    shutil.copytree(tmp_path / 'w', tmp_path / 'r', ignore=shutil.ignore_patterns('20'))
    cr, pr = stage_plan(data_dir, LAYOUTS[reader][0], LAYOUTS[reader][1])
    resumed = train.run_stage(label_stage(pr, tmp_path / 'r'), cr, pr.mesh, pr.sample)
    want, got = losses(full.meta), losses(resumed.meta)
    assert sorted(got) == [5, 10, 15, 20] and got[10] == want[10]  # 5, 10: from the checkpoint
    np.testing.assert_allclose([got[15], got[20]], [want[15], want[20]], rtol=1e-5)
    for leaf in jax.tree.leaves(resumed.model):
        assert leaf.sharding.mesh.size == pr.mesh.size
    for layout, result in ((writer, full), (reader, resumed)):  # fsdp really shards params
        assert ('fsdp' in layout) == any(not leaf.sharding.is_fully_replicated
                                         for leaf in jax.tree.leaves(result.model['params']))
    for a, b in zip(jax.tree.leaves(resumed.model), jax.tree.leaves(full.model)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


class NanAt:
    """The batches of ``base``, with NaN images in the batch of ``step`` (a corrupt record)."""

    def __init__(self, base, step):
        self.base, self.step = base, step

    def __getitem__(self, s):
        batch = dict(self.base[s])
        if s + 1 == self.step:
            batch['image'] = np.full_like(batch['image'], np.nan)
        return batch


def test_nonfinite_loss_stops_with_the_step_and_the_last_good_checkpoint(data_dir, tmp_path):
    c, p = stage_plan(data_dir, **{'train.checkpoint_every': 5})
    directory = str(tmp_path / 'baseline')
    stage = label_stage(p, directory, batches=NanAt(p.task.train_batches(0), 13))
    with pytest.raises(TrainingError, match=rf'^baseline: loss is nan at step 13; last good '
                                            rf'checkpoint: {directory}/10; lower '):
        train.run_stage(stage, c, p.mesh, p.sample)
    assert StageCheckpoints(directory, read_only=True).latest_step() == 10


def test_skip_nonfinite_skips_the_update_and_counts_it(data_dir, tmp_path):
    c, p = stage_plan(data_dir, **{'train.skip_nonfinite': True, 'train.checkpoint_every': 1,
                                   'train.keep_checkpoints': 30, 'student.kwargs': dict(
                                       channels=(4,), dense=8, num_classes=10, batch_norm=True)})
    directory = str(tmp_path / 'baseline')
    result = train.run_stage(label_stage(p, directory, steps=15,
                                         batches=NanAt(p.task.train_batches(0), 13)),
                             c, p.mesh, p.sample)
    assert [h['train/nonfinite_skips'] for h in result.meta['history']
            if 'loss' in h] == [0.0, 0.0, 1.0]  # steps 5, 10, 15
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(result.model)))
    ckpts = StageCheckpoints(directory, read_only=True)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), result.model)
    models = [jax.device_get(ckpts.restore(s, abstract).model) for s in (12, 13, 14)]
    ckpts.close()
    same = jax.tree.map(np.array_equal, models[0], models[1])
    assert all(jax.tree.leaves(same)), 'step 13 (NaN batch) changed params or BatchNorm state'
    assert not all(jax.tree.leaves(jax.tree.map(np.array_equal, models[1], models[2])))


@pytest.mark.parametrize('train_keys,message', [
    ({'best_metric': 'accuracy'}, "train.best_metric='accuracy' must name an evaluation metric"),
    ({'best_metric': 'eval/accuracy', 'eval_every': 0}, 'set train.eval_every > 0'),
    ({'best_mode': 'highest'}, "train.best_mode='highest' is not one of \\['max', 'min'\\]"),
])
def test_best_metric_keys_are_validated(train_keys, message):
    c = load_config('digits.py', 'smoke')
    c.train.update(train_keys)
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c)


def test_a_stage_keeps_its_last_and_its_best_checkpoint(data_dir, tmp_path):
    c, p = stage_plan(data_dir, **{'train.best_metric': 'eval/accuracy', 'train.eval_every': 5,
                                   'train.keep_checkpoints': 1})
    scores = iter([0.2, 0.9, 0.5, 0.1])  # evaluations at steps 5, 10, 15, 20
    stage = label_stage(p, tmp_path / 'baseline')
    stage.evaluate = lambda model_vars: {'accuracy': next(scores)}
    train.run_stage(stage, c, p.mesh, p.sample)
    assert sorted(int(n) for n in os.listdir(tmp_path / 'baseline')) == [10, 20]
    ckpts = StageCheckpoints(str(tmp_path / 'baseline'), read_only=True,
                             best_metric='eval/accuracy')
    assert ckpts.best_step() == 10
    ckpts.close()
