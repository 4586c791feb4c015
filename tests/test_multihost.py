"""jaxdistill/runtime/distributed.py and multi-process runs: 2 real processes x 4 CPU devices.

`launch/local_multihost.sh 2` starts two `jaxdistill.main` processes that find each
other through a coordinator on localhost and exchange collectives through gloo. They
train the smoke student with the teacher FSDP-sharded across both processes (mesh
fsdp=8) and the student data-parallel, and must match a 1-device run of the same job.
"""

import json
import os
import socket
import subprocess
import sys

import jax
import pytest

from jaxdistill import run
from jaxdistill.errors import ConfigError
from jaxdistill.runtime import distributed
from tests.helpers import ROOT
from tests.test_mesh import STEPS, assert_same_run, smoke_config, stage_result

SLURM = {'SLURM_JOB_ID': '7', 'SLURM_STEP_NODELIST': 'node[01-02]', 'SLURM_NTASKS': '16',
         'SLURM_PROCID': '3', 'SLURM_LOCALID': '3'}


OMPI = {'OMPI_MCA_orte_hnp_uri': '1234.0;tcp://10.0.0.1:5555', 'OMPI_COMM_WORLD_SIZE': '4',
        'OMPI_COMM_WORLD_RANK': '2', 'OMPI_COMM_WORLD_LOCAL_RANK': '0'}
CLUSTER_VARS = [*SLURM, *OMPI, 'KUBERNETES_SERVICE_HOST', 'JAX_COORDINATOR_ADDRESS']


@pytest.fixture
def cluster_env(monkeypatch):
    """No cluster around but the one a test sets (this machine may run under one)."""
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    return lambda env: [monkeypatch.setenv(k, v) for k, v in env.items()]


@pytest.mark.parametrize('kwargs,env,want', [
    ({}, {}, ''),
    ({}, SLURM, 'slurm'),
    ({}, {**SLURM, 'SLURM_NTASKS': '1'}, ''),  # one task: nothing to join
    ({}, {k: v for k, v in SLURM.items() if k != 'SLURM_PROCID'}, ''),  # sbatch, not srun
    ({}, OMPI, 'ompi'),  # mpirun: JAX's detection, which jaxdistill's own lacked
    (dict(coordinator_address='h:1', num_processes=2, process_id=1), {}, 'explicit'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=1), SLURM, 'explicit'),
    (dict(coordinator_address='h:1'), SLURM, 'slurm'),  # a flag given, the rest detected
    (dict(num_processes=1), SLURM, ''),  # --num_processes=1 forces one process
])
def test_detect(cluster_env, kwargs, env, want):
    cluster_env(env)
    assert distributed.detect(**kwargs) == want


@pytest.mark.parametrize('kwargs,match', [
    (dict(num_processes=2, process_id=0), '--coordinator_address is missing'),
    (dict(coordinator_address='h:1', process_id=0), '--num_processes is missing'),
    (dict(coordinator_address='h:1', num_processes=2, process_id=2),
     r'--process_id=2 must be in \[0, 2\)'),
    (dict(coordinator_address='h', num_processes=2, process_id=0), 'needs a port'),
])
def test_bad_flags(cluster_env, kwargs, match):
    with pytest.raises(ConfigError, match=match):
        distributed.detect(**kwargs)


def test_unreachable_coordinator_is_one_line(tmp_path):
    with socket.socket() as s:  # a port nobody listens on once closed
        s.bind(('localhost', 0))
        port = s.getsockname()[1]
    proc = subprocess.run(
        [sys.executable, '-m', 'jaxdistill.main', '--config=configs/digits.py:smoke',
         f'--workdir={tmp_path}/w', f'--coordinator_address=localhost:{port}',
         '--num_processes=2', '--process_id=1', '--coordinator_timeout=2'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        f'error: cannot reach the coordinator localhost:{port} (process 0) within 2 s'), lines
    assert not (tmp_path / 'w').exists()


def test_cli_reports_bad_flags_in_one_line(tmp_path):
    proc = subprocess.run(
        [sys.executable, '-m', 'jaxdistill.main', '--config=configs/digits.py:smoke',
         f'--workdir={tmp_path}', '--num_processes=2', '--process_id=0'],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines()[-1].startswith(
        'error: --coordinator_address is missing')


SHARED_DIR_PROBE = """
import sys
from jaxdistill.runtime import distributed
from jaxdistill.errors import ConfigError
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
try:
    distributed.check_shared_dir(sys.argv[3])
    print('shared')
except ConfigError as e:
    print(f'error: {e}')
"""


def two_processes(script: str, args: list[list[str]], devices: int = 1) -> list[str]:
    """Runs ``script`` in 2 real processes, process ``i`` with ``argv[1:]`` = coordinator,
    ``i``, ``*args[i]``; returns the last line each printed."""
    with socket.socket() as s:
        s.bind(('localhost', 0))
        address = f'localhost:{s.getsockname()[1]}'
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu',
           'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}'}
    procs = [subprocess.Popen([sys.executable, '-c', script, address, str(i), *args[i]],
                              cwd=ROOT, env=env, text=True, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE)
             for i in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1][-2000:] for o in outs]
    return [o[0].strip().splitlines()[-1] for o in outs]


@pytest.mark.parametrize('shared', [True, False])
def test_workdir_must_be_shared_by_all_processes(tmp_path, shared):
    """Two real processes probe their --workdir; if process 1 looks elsewhere (as a host
    with its own local disk would), both stop with the same one-line error."""
    dirs = [tmp_path / 'same'] * 2 if shared else [tmp_path / 'host0', tmp_path / 'host1']
    for d in dirs:
        d.mkdir(exist_ok=True)
    lines = two_processes(SHARED_DIR_PROBE, [[str(dirs[0])], [str(dirs[1])]])
    if shared:
        assert lines == ['shared', 'shared']
    else:
        assert all(line.startswith(f'error: --workdir={dirs[i]} is not shared: processes [1]')
                   for i, line in enumerate(lines)), lines
    assert all(os.listdir(d) == [] for d in dirs)  # the probe leaves nothing behind


ROWS_PROBE = """
import sys
import ml_collections
from jaxdistill.runtime import distributed
from jaxdistill.runtime import mesh
from jaxdistill.errors import ConfigError
distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
data, tensor = map(int, sys.argv[3:5])
m = mesh.make_mesh(ml_collections.ConfigDict(dict(data=data, fsdp=1, tensor=tensor)))
try:
    mesh.check_batch(m, 32)
    print('ok')
except ConfigError as e:
    print(f'error: {e}')
"""


@pytest.mark.parametrize('data,tensor,ok', [(2, 4, True), (1, 8, False)])
def test_each_process_must_own_a_block_of_the_batch(data, tensor, ok):
    """2 processes x 4 devices: tensor=4 stays inside each process; tensor=8 spans both,
    so both would need the whole batch (each reads half): refused in one line."""
    outs = two_processes(ROWS_PROBE, [[str(data), str(tensor)]] * 2, devices=4)
    if ok:
        assert outs == ['ok', 'ok']
    else:
        assert all(o.startswith("error: mesh {'data': 1, 'fsdp': 1, 'tensor': 8} does not give "
                                'each of the 2 processes its own block') for o in outs), outs


@pytest.fixture(scope='module')
def reference(data_dir, tmp_path_factory):
    """The job on one device: trains the teacher both runs distil from."""
    workdir = str(tmp_path_factory.mktemp('one'))
    config = smoke_config(data_dir)
    run.train_and_evaluate(config, workdir, devices=jax.devices()[:1])
    return workdir, config


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_two_processes_match_one_device(reference, data_dir, tmp_path):
    ref_dir, ref_config = reference
    workdir = str(tmp_path / 'two')
    overrides = {
        'data.data_dir': data_dir, 'teacher.checkpoint': ref_dir,
        'teacher.steps': STEPS, 'train.steps': STEPS, 'train.checkpoint_every': STEPS,
        'train.log_every': 1, 'train.eval_every': 0, 'train.baseline': False,
        'mesh.data': 1, 'mesh.fsdp': -1, 'student.sharding_rules': '()',
        'distill.losses': "({'name': 'kd', 'weight': 0.5, 'temperature': 2.0}, "
                          "{'name': 'ce', 'weight': 0.5})"}
    cmd = ['bash', os.path.join(ROOT, 'launch', 'local_multihost.sh'), '--python',
           sys.executable, '--log-dir', str(tmp_path / 'logs'), '2', '--',
           '--config=configs/digits.py:smoke', f'--workdir={workdir}',
           *(f'--config.{k}={v}' for k, v in overrides.items())]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    # Process 0 alone reports: one header, one results table.
    assert proc.stdout.count('jaxdistill: ') == 1 and proc.stdout.count('| student |') == 1
    assert "mesh {'data': 1, 'fsdp': 8, 'tensor': 1}" in proc.stdout
    process_1 = (tmp_path / 'logs' / 'process_1.log').read_text()
    assert 'jaxdistill: ' not in process_1 and '| student |' not in process_1

    config = smoke_config(data_dir, (1, 8, 1), ref_dir)
    assert_same_run(stage_result(workdir, 'student', config),
                    stage_result(ref_dir, 'student', ref_config))
    # The teacher, sharded over both processes, hashes (after a gather) to what was saved.
    results = [json.loads(open(os.path.join(d, 'results.json')).read())
               for d in (workdir, ref_dir)]
    assert results[0]['provenance']['teacher_params_sha256'] == results[1]['provenance'][
        'teacher_params_sha256']


@pytest.mark.slow
def test_teacher_cache_from_two_processes_equals_one_device(data_dir, lm_cache_teacher,
                                                           tmp_path):
    """mode=cache_teacher on 2 processes x 4 devices (teacher FSDP over both): process 0
    writes the same rows, fingerprint and (up to float noise) top-k as one device (the
    session's one-device cache, tests/conftest.py: the same config on one device)."""
    import pathlib

    import numpy as np

    from jaxdistill.signals import store

    ref = pathlib.Path(lm_cache_teacher[0])
    workdir = tmp_path / 'two'
    overrides = {'data.data_dir': data_dir, 'teacher.checkpoint': str(ref), 'mode': 'cache_teacher',
                 'distill.cache.k': 8, 'train.baseline': False, 'mesh.data': 1, 'mesh.fsdp': -1}
    cmd = ['bash', os.path.join(ROOT, 'launch', 'local_multihost.sh'), '--python',
           sys.executable, '--log-dir', str(tmp_path / 'logs'), '2', '--',
           '--config=configs/lm_text.py:smoke,cached', f'--workdir={workdir}',
           *(f'--config.{k}={v}' for k, v in overrides.items())]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-2000:]
    one, two = (store.read_spec(str(d / 'teacher_cache')) for d in (ref, workdir))
    assert one['fingerprint'] == two['fingerprint'] and one['rows'] == two['rows']
    a, b = (store.read(str(d / 'teacher_cache'), one['fingerprint'], 'path')
            for d in (ref, workdir))
    same = a['topk_ids'] == b['topk_ids']
    assert same.mean() > 0.999
    np.testing.assert_allclose(a['topk_lp'][same].astype(np.float32),
                               b['topk_lp'][same].astype(np.float32), atol=1e-2)
