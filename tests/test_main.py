"""The CLI end to end, in real subprocesses: outputs, resume; a changed config refused
(through `main.run_cli` in this process: the check runs before anything starts).

Every other bad input is one row of the table in `tests/test_cli_errors.py`.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from jaxdistill import main as cli_main
from tests.helpers import ROOT

REQUIRED = {
    'teacher': ['accuracy', 'params'],
    'baseline': ['accuracy', 'agreement', 'kl_to_teacher'],
    'student': ['accuracy', 'agreement', 'kl_to_teacher', 'params', 'train_loss', 'steps',
                'steps_per_second', 'params_sha256'],
    'provenance': ['teacher_params_sha256', 'teacher_checkpoint', 'dataset', 'losses'],
}


def cli(workdir, *overrides, data_dir, config='configs/digits.py:smoke'):
    cmd = [sys.executable, '-m', 'jaxdistill.main', f'--config={config}',
           f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *overrides]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope='module')
def smoke_run(tmp_path_factory, data_dir):
    workdir = str(tmp_path_factory.mktemp('cli') / 'run')
    proc = cli(workdir, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return workdir, proc


def results(workdir):
    with open(os.path.join(workdir, 'results.json')) as f:
        return json.load(f)


def test_outputs(smoke_run):
    workdir, proc = smoke_run
    r = results(workdir)
    for section, keys in REQUIRED.items():
        for key in keys:
            assert key in r[section], f'results.json lacks {section}.{key}'
    assert r['student']['steps'] == 20 and len(r['student']['params_sha256']) == 64
    assert 0.0 <= r['student']['agreement'] <= 1.0 and r['student']['kl_to_teacher'] >= 0.0
    assert r['provenance']['losses'][0]['name'] == 'kd'
    assert r['provenance']['teacher_checkpoint'] == os.path.join(workdir, 'teacher')
    for name in ('config.json', 'report.md', 'learning_curves.png'):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    for stage in ('teacher', 'baseline', 'student'):
        assert '20' in os.listdir(os.path.join(workdir, stage)), stage
        events = os.listdir(os.path.join(workdir, f'{stage}_metrics', 'events'))
        assert any(e.startswith('events.out.tfevents') for e in events), stage
    report = open(os.path.join(workdir, 'report.md')).read()
    assert '| student |' in report and 'learning_curves.png' in report
    # Without a terminal: one progress line per log step (smoke: every 5 of 20 steps).
    stage_lines = [line for line in proc.stdout.splitlines() if ' step ' in line]
    assert [line.split()[0] for line in stage_lines] == [
        stage for stage in ('teacher', 'baseline', 'student') for _ in range(4)]
    assert [line.split()[2] for line in stage_lines[:4]] == ['5/20', '10/20', '15/20', '20/20']
    assert all(' ETA 0:00:' in line for line in stage_lines)
    with open(os.path.join(workdir, 'config.json')) as f:
        assert json.load(f)['train']['steps'] == 20


def test_rerun_skips_finished_stages(smoke_run, data_dir):
    workdir, _ = smoke_run
    before = results(workdir)
    proc = cli(workdir, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.count('skipped') == 3
    assert results(workdir)['student']['params_sha256'] == before['student']['params_sha256']


def test_resume_from_a_middle_checkpoint_is_exact(smoke_run, data_dir, tmp_path):
    workdir, _ = smoke_run
    copy = str(tmp_path / 'copy')
    shutil.copytree(workdir, copy)
    shutil.rmtree(os.path.join(copy, 'student', '20'))  # as if killed after step 10
    os.remove(os.path.join(copy, 'results.json'))
    proc = cli(copy, data_dir=data_dir)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert 'student   step     20/20' in proc.stdout
    assert (results(copy)['student']['params_sha256'] ==
            results(workdir)['student']['params_sha256'])


def test_other_config_on_same_workdir_is_refused(smoke_run, data_dir, capfd, monkeypatch):
    workdir, _ = smoke_run
    before = sorted(os.listdir(workdir))
    monkeypatch.chdir(ROOT)
    capfd.readouterr()
    status = cli_main.run_cli(['jaxdistill.main', '--config=configs/digits.py:smoke',
                               f'--workdir={workdir}', f'--config.data.data_dir={data_dir}',
                               '--config.seed=5'])
    out, err = capfd.readouterr()
    assert status == 2 and out == '', out
    assert err.strip() == (f'error: --workdir={workdir} holds a run with a different '
                           'config (seed: 0 -> 5); use a new --workdir, or rerun with '
                           'the same config to resume')
    assert sorted(os.listdir(workdir)) == before
