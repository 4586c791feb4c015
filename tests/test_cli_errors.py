"""Bad input at the command line, in one table: every case exits 2 with one line, no
traceback, and nothing written to the workdir.

The CLI runs in this process (`jaxdistill.main.run_cli`, a fresh set of flags per call),
so the table costs one config load and plan per row, not one Python start. One case, the
process's own command line, runs as a subprocess to show that `python -m jaxdistill.main`
reports the same line.
"""

import json
import os
import subprocess
import sys

import pytest

from jaxdistill import config as config_lib
from jaxdistill import main as cli_main
from jaxdistill import tasks
from tests.helpers import ROOT, load_config

SMOKE = 'configs/digits.py:smoke'
CONFIGS = ', '.join(sorted(f for f in os.listdir(os.path.join(ROOT, 'configs'))
                           if f.endswith('.py') and not f.startswith('_')))


def _existing_run(tmp, data_dir):
    """A workdir holding a run's config (seed 0): the same job with another seed is refused."""
    workdir = tmp / 'run'
    workdir.mkdir()
    config = load_config('digits.py', 'smoke')
    config.data.data_dir = data_dir
    (workdir / 'config.json').write_text(json.dumps(config_lib.to_dict(config)))
    return workdir


def _file(tmp):
    path = tmp / 'teacher.safetensors'
    path.write_bytes(b'')
    return path


# (id, arguments, the text the error line must contain); '{tmp}' is the test's tmp_path.
CASES = [
    # -- the config file (issue 16: 2, 3) --
    ('missing_config', ['--config=configs/missing.py'],
     f"--config=configs/missing.py: no such file 'configs/missing.py'; the configs in "
     f'configs/ are {CONFIGS}'),
    ('config_is_a_directory', ['--config=configs'], "is a directory 'configs'"),
    ('unknown_preset', ['--config=configs/digits.py:unknown'],
     "--config=configs/digits.py:unknown: unknown preset 'unknown' for configs/digits.py "
     "(known: 'smoke')"),
    ('unknown_lm_preset', ['--config=configs/lm_text.py:bogus'],
     "unknown preset 'bogus' for configs/lm_text.py (known: smoke, and one of online"),
    # -- silent bad values (issue 16: 4) --
    ('negative_weight', ['--config.distill.losses[0].weight=-1'],
     'distill.losses[0].weight=-1 must be finite and >= 0 throughout training'),
    ('schedule_goes_negative',
     ["--config.distill.losses=({'name': 'kd', 'weight': {'schedule': 'linear', "
      "'start': 1.0, 'end': -0.5}},)"],
     "distill.losses[0].weight={'schedule': 'linear', 'start': 1.0, 'end': -0.5} "
     '(from 1 to -0.5) must be finite and >= 0'),
    # -- teacher checkpoints (issue 16: 5) --
    ('teacher_checkpoint_is_a_file', ['--config.teacher.checkpoint={tmp}/teacher.safetensors'],
     "teacher.checkpoint='{tmp}/teacher.safetensors' is a file; expected a directory: a "
     'jaxdistill workdir, its teacher/ stage directory, one numbered step directory of it, an '
     'Orbax checkpoint directory of the variables, or hf:DIR'),
    ('teacher_checkpoint_missing', ['--config.teacher.checkpoint=/nonexistent/run'],
     "teacher.checkpoint='/nonexistent/run' does not exist"),
    # -- data keys (issue 16: 1) --
    ('tfds_image_key_unknown', ['--config.data.image_key=signal'],
     "data.image_key='signal' is not a feature of 'digits' (it has ['image', 'label'])"),
    ('source_image_key_unknown',
     ['--config.data.source=tests.user_data:signals', '--config.data.image_key=image'],
     "data.source='tests.user_data:signals': records have keys ['label', 'signal'], not "
     "'image'; set data.image_key / data.label_key"),
    ('source_not_importable', ['--config.data.source=nope.mod:fn'],
     "data.source='nope.mod:fn' cannot be imported"),
    # -- the cases the CLI already reported in one line --
    ('unknown_key', ['--config.train.stpes=3'],
     "unknown config key 'train.stpes' in --config.train.stpes=3: did you mean 'train.steps'?"),
    ('wrong_type', ['--config.train.steps=abc'], '--config.train.steps=abc'),
    ('unknown_dataset', ['--config.data.name=digitz'], "data.name='digitz' is not a TFDS dataset"),
    ('unknown_module', ['--config.student.module=nope.mod:Net'],
     "student.module='nope.mod:Net': importing"),
    ('batch_not_divisible', ['--config.data.batch_size=30'],
     'data.batch_size=30 is not divisible by the 8'),
    ('unknown_loss', ['--config.distill.losses[0].name=kdd'], "unknown loss 'kdd'"),
    ('class_mismatch', ['--config.student.kwargs.num_classes=7'],
     'teacher has 10 outputs but student has 7'),
    ('bad_host_memory', ['--host_memory=keep'], 'flag --host_memory=keep: value should be one of'),
    ('unwritable_workdir', ['--workdir={tmp}/teacher.safetensors/run'],
     'teacher.safetensors is a file, not a directory'),
    ('other_config_on_a_workdir', ['--workdir={tmp}/run', '--config.seed=5'],
     "holds a run with a different config (seed: 0 -> 5)"),
    ('stray_argument', ['extra'], "unexpected arguments ['extra']"),
]


@pytest.fixture(scope='module')
def prepared(data_dir):
    """digits prepared before the table, so no row prints TFDS's one-time message."""
    config = load_config('digits.py', 'smoke')
    config.data.data_dir = data_dir
    tasks.build(config)
    return data_dir


def _argv(args, tmp, data_dir):
    args = [a.replace('{tmp}', str(tmp)) for a in args]
    argv = ['jaxdistill.main']
    if not any(a.startswith('--config=') for a in args):
        argv.append(f'--config={SMOKE}')
    if not any(a.startswith('--workdir=') for a in args):
        argv.append(f'--workdir={tmp}/never')
    return argv + [f'--config.data.data_dir={data_dir}', '--host_memory=system'] + [
        a for a in args if a != '--host_memory=system']


def _listing(tmp):
    return sorted(str(p.relative_to(tmp)) for p in tmp.rglob('*'))


@pytest.mark.parametrize('args,message', [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_is_one_line(tmp_path, capfd, monkeypatch, prepared, args, message):
    monkeypatch.chdir(ROOT)  # relative --config paths, as a user types them
    _existing_run(tmp_path, prepared)
    _file(tmp_path)
    before = _listing(tmp_path)
    status = cli_main.run_cli(_argv(args, tmp_path, prepared))
    out, err = capfd.readouterr()
    assert status == 2, err[-2000:]
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: '), err[-3000:]
    assert 'Traceback' not in err + out and out == '', (out + err)[-3000:]
    assert message.replace('{tmp}', str(tmp_path)) in lines[0]
    assert _listing(tmp_path) == before, 'nothing may be written for bad input'


def test_subprocess_reports_the_same_line(tmp_path, prepared):
    """`python -m jaxdistill.main` itself: the process's exit status and stderr."""
    cmd = [sys.executable, '-m', 'jaxdistill.main', '--config=configs/missing.py',
           f'--workdir={tmp_path}/never']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 2 and proc.stdout == ''
    assert proc.stderr.strip().splitlines() == [
        "error: --config=configs/missing.py: no such file 'configs/missing.py'; the configs in "
        f'configs/ are {CONFIGS} (give FILE.py or FILE.py:PRESET)']
    assert not (tmp_path / 'never').exists()


def test_subprocess_prints_nothing_else_for_bad_config(tmp_path, prepared):
    """An error found after the flags parse (in the config's plan): the process's allocator
    line is not printed either, so stdout stays empty and stderr holds the one line."""
    cmd = [sys.executable, '-m', 'jaxdistill.main', f'--config={SMOKE}',
           f'--workdir={tmp_path}/never', f'--config.data.data_dir={prepared}',
           '--config.student.kwargs.num_classes=7']
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.returncode == 2 and proc.stdout == '', proc.stdout
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'teacher has 10 outputs but student has 7' in lines[0], lines
    assert not (tmp_path / 'never').exists()
