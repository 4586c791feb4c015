"""jaxdistill.runtime.hostmem: what each policy means, its errors, and its effect (page faults)."""

import json
import os
import subprocess
import sys

import pytest

from jaxdistill.errors import ConfigError
from jaxdistill.runtime import hostmem
from tests.helpers import ROOT

glibc_only = pytest.mark.skipif(not hostmem.is_glibc(), reason='the tunables are glibc-only')

# A step whose [2048, 8192] temporaries (64 MiB each) exceed what a thread's glibc arena
# holds; prints the minor page faults of each window of 10 runs. Under reuse the heap grows
# for the first windows (one step's block is still being freed as the next one starts) and
# then stops: here it settled within 20 runs.
PROBE = r'''
import json, resource
import jax, jax.numpy as jnp
from jaxdistill.runtime import hostmem
x = jnp.full((2048, 256), 0.01)
w = jnp.full((256, 8192), 0.01)
step = jax.jit(jax.grad(lambda w: jax.nn.logsumexp(x @ w, axis=-1).sum()))
windows = []
for _ in range(6):
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    for _ in range(10):
        step(w).block_until_ready()
    windows.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
print(json.dumps({'policy': hostmem.in_force(), 'faults': windows}))
'''


def probe(policy):
    env = hostmem.environ(policy, {'JAX_PLATFORMS': 'cpu', 'PATH': os.environ.get('PATH', '')})
    proc = subprocess.run([sys.executable, '-c', PROBE], cwd=ROOT, capture_output=True,
                          text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
@glibc_only
def test_reuse_removes_the_page_faults_of_each_step():
    # Two processes per policy: the effect is the same in each (glibc reads the tunables
    # at start-up, before any thread exists).
    system = [probe('system') for _ in range(2)]
    reuse = [probe('reuse') for _ in range(2)]
    assert {p['policy'] for p in system} == {'system'} and {p['policy'] for p in reuse} == {
        'reuse'}
    # The C library's defaults map the step's temporaries afresh on every run (~65 MiB of
    # 4 KiB pages per run here), in every window; reused memory stops faulting.
    assert all(f > 100_000 for p in system for f in p['faults']), system
    assert all(min(p['faults'][1:]) < 1_000 for p in reuse), reuse
    assert all(p['faults'][-1] < 1_000 for p in reuse), reuse


def test_policies_resolve():
    cpu, gpu = {'JAX_PLATFORMS': 'cpu'}, {'JAX_PLATFORMS': 'cuda'}
    assert hostmem.resolve('system', cpu) == 'system'
    assert hostmem.resolve('auto', gpu) == 'system'  # accelerators keep their allocator
    if hostmem.is_glibc():
        assert hostmem.resolve('auto', cpu) == 'reuse'
        assert hostmem.resolve('reuse', gpu) == 'reuse'  # asked for explicitly


def test_environ_adds_and_removes_only_its_tunables():
    env = {'GLIBC_TUNABLES': 'glibc.pthread.rseq=0', 'JAX_PLATFORMS': 'cpu', 'X': '1'}
    system = hostmem.environ('system', env)
    assert system == env and hostmem.in_force(system) == 'system'
    if hostmem.is_glibc():
        reuse = hostmem.environ('reuse', env)
        assert reuse['X'] == '1' and reuse['GLIBC_TUNABLES'].startswith('glibc.pthread.rseq=0:')
        assert hostmem.in_force(reuse) == 'reuse'
        assert hostmem.environ('system', reuse) == env  # and back: the user's entry kept
        assert hostmem.environ('reuse', reuse) == reuse  # idempotent


def test_unknown_policy_names_the_flag_and_the_choices():
    with pytest.raises(ConfigError, match=r"--host_memory='keep' is not one of auto, reuse, "
                                          r'system'):
        hostmem.resolve('keep')


@glibc_only
def test_the_cli_restarts_itself_once_under_its_policy():
    """`ensure` execs the same command with the tunables; the second process goes on."""
    code = ('import os, sys; from jaxdistill.runtime import hostmem; '
            'print(hostmem.ensure(sys.argv[1]), os.getpid(), flush=True)')
    for policy, started_with in (('reuse', 'system'), ('system', 'reuse'), ('reuse', 'reuse')):
        env = hostmem.environ(started_with, {'JAX_PLATFORMS': 'cpu',
                                             'PATH': os.environ.get('PATH', '')})
        proc = subprocess.run([sys.executable, '-c', code, policy], cwd=ROOT, env=env,
                              capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, proc.stderr[-2000:]
        lines = proc.stdout.split()
        assert lines[0] == policy and len(lines) == 2, proc.stdout  # printed once: one exec


def test_policy_in_reads_the_flag_like_absl():
    assert hostmem.policy_in(['prog', '--config=x']) == 'auto'
    assert hostmem.policy_in(['prog', '--host_memory=system']) == 'system'
    assert hostmem.policy_in(['prog', '--host_memory', 'reuse', '--x']) == 'reuse'
    assert hostmem.policy_in(['prog', '-host_memory=reuse', '--host_memory=system']) == 'system'
    assert hostmem.policy_in(['prog', '--config.host_memory=reuse']) == 'auto'


@glibc_only
@pytest.mark.parametrize('policy,env,want', [
    ('auto', {'JAX_PLATFORMS': 'cpu'}, 'host memory: system (auto on a CPU under glibc: the C '
     "library's defaults; reuse not applied: this process was not started by the CLI entry"),
    ('auto', {'JAX_PLATFORMS': 'cpu', 'GLIBC_TUNABLES': ':'.join(hostmem.TUNABLES)},
     'host memory: reuse (auto on a CPU under glibc: glibc tunables: one malloc arena, no mmap, '
     'no trim; in force from the start (launch script or environment))'),
    ('reuse', {'JAX_PLATFORMS': 'cuda', 'GLIBC_TUNABLES': ':'.join(hostmem.TUNABLES),
               'JAXDISTILL_HOST_MEMORY_RESTARTED': '1'},
     'host memory: reuse (glibc tunables: one malloc arena, no mmap, no trim; restarted once at '
     'start to apply it)'),
    ('auto', {'JAX_PLATFORMS': 'tpu'}, "host memory: system (auto on an accelerator or not "
     "glibc: the C library's defaults; nothing to apply)"),
])
def test_describe_says_which_policy_and_how(policy, env, want):
    assert hostmem.describe(policy, env).startswith(want)


CONFIG_PROBE = '''
import os, sys
from jaxdistill.runtime import hostmem


def get_config():
    print('config loaded:', hostmem.in_force(), os.environ.get('{marker}', '-'),
          'jax' in sys.modules, flush=True)
    raise SystemExit(0)
'''


@glibc_only
@pytest.mark.parametrize('started_with,flag,want', [
    ('system', [], 'config loaded: reuse 1'),  # auto on a CPU: one restart
    ('reuse', [], 'config loaded: reuse -'),  # a launcher set it: no restart
    ('reuse', ['--host_memory=system'], 'config loaded: system 1'),
    ('system', ['--host_memory', 'system'], 'config loaded: system -'),
])
def test_the_cli_entry_applies_the_policy_before_jax(tmp_path, started_with, flag, want):
    """`python -m jaxdistill.main`: the restart (if any) happens before the config file is
    loaded and before jax is imported, exactly once."""
    config = tmp_path / 'probe.py'
    config.write_text(CONFIG_PROBE.replace('{marker}', hostmem._RESTARTED))
    env = hostmem.environ(started_with, {'JAX_PLATFORMS': 'cpu', 'PYTHONPATH': ROOT,
                                         'PATH': os.environ.get('PATH', '')})
    proc = subprocess.run([sys.executable, '-m', 'jaxdistill.main', f'--config={config}',
                           f'--workdir={tmp_path}/w', *flag], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.splitlines() == [f'{want} False'], proc.stdout


def test_the_cli_module_imports_no_jax():
    """What `start` relies on: importing the CLI's module leaves jax unloaded."""
    code = 'import sys, jaxdistill.main; print("jax" in sys.modules)'
    proc = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, 'PYTHONPATH': ROOT})
    assert proc.stdout.strip() == 'False', proc.stderr[-2000:]
