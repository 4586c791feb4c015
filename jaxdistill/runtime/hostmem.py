"""Host memory policy: let XLA:CPU reuse the memory of the previous step.

XLA:CPU allocates each execution's temporaries as one block with ``posix_memalign`` and
frees it when the step ends. glibc serves a block that large from a fresh ``mmap`` and
hands it back with ``munmap`` (a thread's arena cannot grow past 64 MiB), so every step
page-faults all its temporaries in again: 500 MiB, 128,000 faults per step for the
benchmark's LM distillation step, about a quarter of its time (benchmarks/NOTES.md 12).

``reuse`` keeps freed memory in the process instead, through glibc's tunables: one arena
(the main one, which grows with ``brk``), no ``mmap`` for large blocks, no trimming. The
next step's block then lands on pages already mapped. The process's resident memory
stays at its peak, as it would under TCMalloc or XLA's own BFC allocator on accelerators.

Tunables are read when a process starts (``mallopt`` later is not enough: threads started
earlier keep arenas of their own), so the policy is applied where processes start:

* ``launch/`` scripts put the tunables in the environment of the CPU processes they start
  (``launch/lib.sh``, ``host_memory_env``), and ``benchmarks.run`` in its workers';
* the CLI's entry (``python -m jaxdistill.main``) calls `start` before importing jax: when
  the environment lacks what ``--host_memory`` asks for, it restarts once with it set
  (`ensure`, an ``exec``: same process id, same arguments);
* the job then prints one line, `describe`: which policy is in force and how it got there.

``auto`` applies ``reuse`` where it pays: Linux with glibc, computing on the CPU (no GPU or
TPU plugin installed and ``JAX_PLATFORMS`` empty or starting with ``cpu``). ``system``
leaves the C library's defaults.
"""

from __future__ import annotations

import os
import pkgutil
import platform
import sys
from collections.abc import Mapping, Sequence

from jaxdistill.errors import ConfigError

POLICIES = ('auto', 'reuse', 'system')
TUNABLES = ('glibc.malloc.arena_max=1', 'glibc.malloc.mmap_max=0',
            'glibc.malloc.trim_threshold=1099511627776')  # 1 TiB: never trim
ACCELERATOR_PREFIXES = ('jax_cuda', 'jax_rocm', 'libtpu')  # jax_cuda13_plugin, libtpu, ...
_RESTARTED = 'JAXDISTILL_HOST_MEMORY_RESTARTED'  # set across the exec: restart only once


def is_glibc() -> bool:
    return platform.system() == 'Linux' and platform.libc_ver()[0] == 'glibc'


def computes_on_cpu(env: Mapping[str, str] = os.environ) -> bool:
    """Whether JAX will pick the CPU: no accelerator plugin, no other platform requested."""
    platforms = env.get('JAX_PLATFORMS', '').strip().lower()
    if platforms:
        return platforms.split(',')[0] == 'cpu'
    return not any(m.name.startswith(ACCELERATOR_PREFIXES) for m in pkgutil.iter_modules())


def resolve(policy: str, env: Mapping[str, str] = os.environ) -> str:
    """``'reuse'`` or ``'system'``: what ``policy`` means on this machine."""
    if policy not in POLICIES:
        raise ConfigError(f'--host_memory={policy!r} is not one of {", ".join(POLICIES)}: '
                          "use 'auto' (the default), 'reuse' or 'system'")
    if policy == 'reuse' and not is_glibc():
        raise ConfigError('--host_memory=reuse needs Linux with glibc, this is '
                          f'{platform.system()} {platform.libc_ver()[0]}'.rstrip()
                          + ': use --host_memory=auto or system')
    if policy == 'auto':
        return 'reuse' if is_glibc() and computes_on_cpu(env) else 'system'
    return policy


def _entries(env: Mapping[str, str]) -> list[str]:
    return [e for e in env.get('GLIBC_TUNABLES', '').split(':') if e]


def in_force(env: Mapping[str, str] = os.environ) -> str:
    """``'reuse'`` when this environment carries the tunables (a process started with it
    has them), else ``'system'``."""
    return 'reuse' if set(TUNABLES) <= set(_entries(env)) else 'system'


def environ(policy: str, env: Mapping[str, str] = os.environ) -> dict[str, str]:
    """``env`` with the tunables of ``policy`` (the user's other tunables kept)."""
    ours = {t.split('=')[0] for t in TUNABLES}
    others = [e for e in _entries(env) if e.split('=')[0] not in ours]
    out = {k: v for k, v in env.items() if k != 'GLIBC_TUNABLES'}
    entries = others + (list(TUNABLES) if resolve(policy, env) == 'reuse' else [])
    if entries:
        out['GLIBC_TUNABLES'] = ':'.join(entries)
    return out


def ensure(policy: str) -> str:
    """Makes ``policy`` hold in this process, restarting it once (``exec``) if the
    environment it started with says otherwise; returns what is in force."""
    want = resolve(policy)
    if in_force() == want or os.environ.get(_RESTARTED):
        return in_force()
    env = environ(policy)
    env[_RESTARTED] = '1'
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(sys.executable, list(sys.orig_argv), env)
    raise AssertionError('unreachable')  # pragma: no cover


def policy_in(argv: Sequence[str]) -> str:
    """The ``--host_memory`` value in a command line (the last one wins, as with absl);
    ``auto`` when there is none."""
    policy = 'auto'
    for i, arg in enumerate(argv):
        name, eq, value = arg.lstrip('-').partition('=')
        if name == 'host_memory' and arg.startswith('-'):
            policy = value if eq else (argv[i + 1] if i + 1 < len(argv) else policy)
    return policy


def start(argv: Sequence[str] | None = None) -> None:
    """A process entry's first step, before jax is imported: the command line's
    ``--host_memory`` policy in force, by a restart (`ensure`) only if this process's
    environment lacks it. A bad value is left to the flag parser, which reports it."""
    try:
        ensure(policy_in(sys.argv if argv is None else argv))
    except ConfigError:
        return


def describe(policy: str, env: Mapping[str, str] = os.environ) -> str:
    """One line for the job's output: the policy in force, and how it got there."""
    want, now = resolve(policy, env), in_force(env)
    why = {'reuse': 'glibc tunables: one malloc arena, no mmap, no trim',
           'system': "the C library's defaults"}[now]
    if policy == 'auto':
        where = 'a CPU under glibc' if want == 'reuse' else 'an accelerator or not glibc'
        why = f'auto on {where}: {why}'
    if want != now:
        how = (f'{want} not applied: this process was not started by the CLI entry '
               '(python -m jaxdistill.main) or launch/, and keeps its allocator')
    elif env.get(_RESTARTED):
        how = 'restarted once at start to apply it'
    elif now == 'reuse':
        how = 'in force from the start (launch script or environment)'
    else:
        how = 'nothing to apply'
    return f'host memory: {now} ({why}; {how})'

