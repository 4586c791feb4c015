"""Command line: ``python -m jaxdistill.main --config=configs/NAME.py[:preset] --workdir=DIR``.

Override any key with ``--config.a.b=value``. Bad input (an unknown key, a wrong type,
a missing file) is reported in one line and exits with status 2.

Multi-process runs start the same command on every host (``launch/``): on TPU VMs, under
SLURM, Open MPI (``mpirun``) and Kubernetes the processes find each other on their own
(JAX's cluster detection); elsewhere pass
``--coordinator_address=HOST:PORT --num_processes=N --process_id=I``.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from jaxdistill.errors import JaxdistillError
from jaxdistill.preemption import Preempted

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A configs/*.py file, optionally with a preset: configs/digits.py:smoke.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints and reports.')
flags.mark_flags_as_required(['config', 'workdir'])
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', '', 'HOST:PORT of process 0 for a multi-process run (empty: '
    'detected by JAX on TPU VMs, under SLURM, mpirun and Kubernetes, else a single process).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None,
                                      'Processes in a multi-process run (1: force one).')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'This process, 0..num_processes-1.')
_COORDINATOR_TIMEOUT = flags.DEFINE_float(
    'coordinator_timeout', 300, 'Seconds a process waits for the coordinator (process 0) '
    'before stopping with an error.')
_HOST_MEMORY = flags.DEFINE_enum(
    'host_memory', 'auto', ['auto', 'reuse', 'system'],
    'XLA:CPU step memory: reuse the previous step\'s pages (no page faults; resident memory '
    'stays at its peak) or the C library\'s defaults; auto: reuse when computing on a CPU '
    'under glibc (jaxdistill/hostmem.py).')


def _fail(message: str) -> None:
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str]) -> list[str]:
    """absl parsing, with every failure (flags or the config file) reported in one line."""
    try:
        return flags.FLAGS(argv)
    except flags.Error as e:
        _fail(' '.join(str(e).split()))
    except JaxdistillError as e:
        _fail(str(e))
    except (AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError) as e:
        unknown = _unknown_override(argv)
        if unknown:
            _fail(unknown)
        text = ' '.join(str(e).strip('\'"').replace('\\n', ' ').split()).replace("\\'", "'")
        _fail(f'bad --config: {text}')


def _unknown_override(argv: list[str]) -> str | None:
    """Names the first ``--config.a.b=v`` whose key is not in the schema, if any."""
    from jaxdistill.config import FREE_FORM, base_config, flat_keys
    from jaxdistill.errors import closest

    known = flat_keys(base_config())
    for arg in argv[1:]:
        if not arg.startswith('--config.'):
            continue
        key = arg[len('--config.'):].split('=', 1)[0]
        base = key.split('[', 1)[0]
        if base in known or any(base.startswith(f + '.') for f in FREE_FORM):
            continue
        return f'unknown config key {key!r} in {arg}: {closest(key, known)}'
    return None


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        _fail(f'unexpected arguments {argv[1:]}: every option is a --flag')
    logging.set_verbosity(logging.ERROR)  # library chatter; our own output is print()
    from jaxdistill import hostmem

    try:
        # First: it may restart this process with glibc's tunables (jaxdistill/hostmem.py).
        hostmem.ensure(_HOST_MEMORY.value)
        from jaxdistill import distributed, run  # after flag parsing: --help stays fast

        # Before anything touches a device: JAX then sees every process's devices.
        distributed.initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                               _COORDINATOR_TIMEOUT.value)
        distributed.check_shared_dir(_WORKDIR.value)
        run.train_and_evaluate(_CONFIG.value, _WORKDIR.value)
    except Preempted:
        # The checkpoint is committed (run_stage waited for it) and the message printed:
        # leave now instead of spending seconds tearing down native libraries, so a
        # preemption grace period is spent on saving, not on exiting.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except JaxdistillError as e:
        _fail(str(e))


def cli() -> None:
    """The ``jaxdistill`` console script: the same as ``python -m jaxdistill.main``."""
    app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
    cli()
