"""launch/*.sh: syntax, --help, usage errors, and the exact commands of --dry-run."""

import os
import shlex
import subprocess

import pytest

from jaxdistill.runtime import hostmem
from tests.helpers import ROOT

SCRIPTS = ('tpu_vm.sh', 'slurm_gpu.sh', 'local_multihost.sh')
ARGS = ['--config=configs/digits.py', "--workdir=/shared/it's here",
        '--config.student.sharding_rules=()']


def launch(script, *args, env=None):
    return subprocess.run(['bash', os.path.join(ROOT, 'launch', script), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def commands(proc) -> list[list[str]]:
    """Every printed command line as argv, the way a shell would split it."""
    assert proc.returncode == 0, proc.stderr
    return [shlex.split(line) for line in proc.stdout.splitlines()
            if line and not line.startswith('#')]


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_are_strict_bash_with_help(script):
    path = os.path.join(ROOT, 'launch', script)
    assert subprocess.run(['bash', '-n', path]).returncode == 0
    assert 'set -euo pipefail' in open(path).read()
    proc = launch(script, '--help')
    assert proc.returncode == 0 and proc.stdout.startswith('Usage: launch/' + script)
    assert '--dry-run' in proc.stdout


@pytest.mark.parametrize('script,args,match', [
    ('tpu_vm.sh', ['--dry-run', 'launch'], 'unknown command launch'),
    ('tpu_vm.sh', ['--dry-run', 'run'], 'run needs the jaxdistill arguments after --'),
    ('tpu_vm.sh', ['--dry-run', 'mount'], 'mount needs --bucket'),
    ('slurm_gpu.sh', ['--dry-run', '--nodes', 'two', '--', 'x'], '--nodes=two must be'),
    ('slurm_gpu.sh', ['--dry-run'], 'give the jaxdistill arguments after --'),
    ('local_multihost.sh', ['--dry-run', '--', 'x'], 'give the number of processes N'),
    ('local_multihost.sh', ['--dry-run', '2', 'x'], 'put the jaxdistill arguments after --'),
])
def test_usage_errors_are_one_line(script, args, match):
    proc = launch(script, *args)
    assert proc.returncode == 2 and proc.stdout == ''
    assert len(proc.stderr.strip().splitlines()) == 1 and match in proc.stderr


def test_tpu_vm_all_dry_run():
    proc = launch('tpu_vm.sh', '--dry-run', '--name', 'kd', '--zone', 'us-central2-b',
                  '--accelerator-type', 'v4-32', '--project', 'proj', '--bucket', 'bkt',
                  'all', '--', *ARGS)
    cmds = commands(proc)
    where = ['--zone=us-central2-b', '--project=proj']
    tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
    assert cmds[0] == tpu + ['create', 'kd', *where, '--accelerator-type=v4-32',
                             '--version=tpu-ubuntu2204-base']
    assert cmds[1][:3] == ['git', '-C', ROOT] and cmds[1][3:5] == ['archive', '--format=tar.gz']
    assert cmds[2] == tpu + ['scp', '/tmp/jaxdistill-kd.tar.gz', 'kd:jaxdistill.tar.gz', *where,
                             '--worker=all']
    install, mount, run, logs = cmds[3:]
    on_all = tpu + ['ssh', 'kd', *where, '--worker=all']
    assert install[:9] == on_all and mount[:9] == on_all and run[:9] == on_all
    assert "'jax[tpu]>=0.10.2,<0.11'" in install[9] and 'pip install' in install[9]
    assert 'gcsfuse --implicit-dirs bkt ~/bkt' in mount[9]
    remote = run[9].removeprefix('--command=')
    # The remote shell sees the jaxdistill arguments exactly as given here.
    main = remote[remote.index('.venv/bin/python'):remote.index(' > ~/jaxdistill.log')]
    assert shlex.split(main) == ['.venv/bin/python', '-m', 'jaxdistill.main', *ARGS]
    assert remote.startswith('cd ~/jaxdistill && nohup ') and remote.endswith('&')
    assert logs == tpu + ['ssh', 'kd', *where, '--worker=0',
                          '--command=tail -n +1 -f ~/jaxdistill.log']


def test_tpu_vm_delete_dry_run():
    cmds = commands(launch('tpu_vm.sh', '--dry-run', '--name', 'kd', 'delete'))
    assert cmds == [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', 'kd',
                     '--zone=us-central2-b', '--quiet']]


def test_slurm_dry_run_is_one_process_per_gpu():
    proc = launch('slurm_gpu.sh', '--dry-run', '--nodes', '2', '--gpus-per-node', '8',
                  '--partition', 'gpu', '--python', '/env/bin/python', '--', *ARGS)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    for directive in ('--nodes=2', '--ntasks-per-node=8', '--gpus-per-node=8',
                      '--partition=gpu'):
        assert f'#SBATCH {directive}' in lines
    srun = shlex.split(next(line for line in lines if line.startswith('srun')))
    assert srun == ['srun', '--kill-on-bad-exit=1', '/env/bin/python', '-m', 'jaxdistill.main',
                    *ARGS]
    assert shlex.split(lines[-1]) == ['sbatch', os.path.join(ROOT, 'launch', 'logs',
                                                             'jaxdistill.sbatch')]
    assert not os.path.exists(os.path.join(ROOT, 'launch', 'logs', 'jaxdistill.sbatch'))


def test_local_multihost_dry_run():
    proc = launch('local_multihost.sh', '--dry-run', '--port', '4321',
                  '--devices-per-process', '4', '--python', '/env/bin/python', '3', '--',
                  *ARGS, env={'XLA_FLAGS': '--xla_force_host_platform_device_count=8'})
    cmds = commands(proc)
    assert len(cmds) == 3
    for i, cmd in enumerate(cmds):
        assert cmd[:3] == ['cd', ROOT, '&&']
        assert cmd[3:13] == [
            'env', 'JAX_PLATFORMS=cpu', 'XLA_FLAGS=--xla_force_host_platform_device_count=4',
            'JAX_CPU_COLLECTIVES_IMPLEMENTATION=gloo', '/env/bin/python', '-m',
            'jaxdistill.main', '--coordinator_address=localhost:4321', '--num_processes=3',
            f'--process_id={i}']
        assert cmd[13:] == [*ARGS, '>', f'/tmp/jaxdistill-multihost/process_{i}.log', '2>&1']


def host_memory_env(platform, *args, glibc_tunables=''):
    """launch/lib.sh's host_memory_env, run in bash."""
    script = f'source launch/lib.sh; host_memory_env {shlex.join([platform, *args])}'
    proc = subprocess.run(['bash', '-euo', 'pipefail', '-c', script], cwd=ROOT,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, 'GLIBC_TUNABLES': glibc_tunables})
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.strip()


@pytest.mark.skipif(not hostmem.is_glibc(), reason='the tunables are glibc-only')
@pytest.mark.parametrize('platform,args', [
    ('cpu', []), ('cpu', ['--host_memory=system']), ('gpu', []), ('tpu', ['--x=1']),
    ('gpu', ['--host_memory=reuse']), ('cpu', ['--host_memory=auto'])])
def test_launchers_set_the_clis_host_memory_policy(platform, args):
    """lib.sh decides as hostmem does (one policy, written twice: bash has no jaxdistill)."""
    user = 'glibc.pthread.rseq=0'
    want = hostmem.environ(hostmem.policy_in(args), {'JAX_PLATFORMS': platform,
                                                     'GLIBC_TUNABLES': user})
    got = host_memory_env(platform, *args, glibc_tunables=user)
    tunables = want['GLIBC_TUNABLES']
    assert got == ('' if tunables == user else f'GLIBC_TUNABLES={tunables}')


def test_local_multihost_dry_run_names_the_exported_tunables():
    proc = launch('local_multihost.sh', '--dry-run', '--port', '4321', '--python',
                  '/env/bin/python', '2', '--', *ARGS)
    first = proc.stdout.splitlines()[0]
    if hostmem.is_glibc():
        assert first.startswith('# exported for every process') and first.endswith(
            'GLIBC_TUNABLES=' + ':'.join(hostmem.TUNABLES))
    proc = launch('slurm_gpu.sh', '--dry-run', '--python', '/p', '--', *ARGS,
                  '--host_memory=reuse')
    exports = [line for line in proc.stdout.splitlines() if line.startswith('export ')]
    assert exports == ([f"export GLIBC_TUNABLES={':'.join(hostmem.TUNABLES)}"]
                       if hostmem.is_glibc() else [])
