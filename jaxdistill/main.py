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
from jaxdistill.runtime import hostmem


def define_flags(flag_values: flags.FlagValues = flags.FLAGS,
                 argv: list[str] | None = None) -> dict[str, flags.FlagHolder]:
    """The CLI's flags on ``flag_values``; ``argv`` is where ``--config.a.b=v`` overrides
    are read from (None: ``sys.argv``)."""
    holders = {
        'config': config_flags.DEFINE_config_file(
            'config', None,
            'A recipe by name or a configs/*.py file, optionally with a preset: digits:smoke, '
            'configs/digits.py:smoke.',
            flag_values=flag_values, lock_config=True, sys_argv=argv),
        'workdir': flags.DEFINE_string('workdir', None, 'Directory for checkpoints and reports.',
                                       flag_values=flag_values),
        'coordinator_address': flags.DEFINE_string(
            'coordinator_address', '', 'HOST:PORT of process 0 for a multi-process run (empty: '
            'detected by JAX on TPU VMs, under SLURM, mpirun and Kubernetes, else a single '
            'process).', flag_values=flag_values),
        'coordinator_timeout': flags.DEFINE_float(
            'coordinator_timeout', 300, 'Seconds a process waits for the coordinator '
            '(process 0) before stopping with an error.', flag_values=flag_values),
        'num_processes': flags.DEFINE_integer(
            'num_processes', None, 'Processes in a multi-process run (1: force one).',
            flag_values=flag_values),
        'process_id': flags.DEFINE_integer('process_id', None,
                                           'This process, 0..num_processes-1.',
                                           flag_values=flag_values),
        'host_memory': flags.DEFINE_enum(
            'host_memory', 'auto', ['auto', 'reuse', 'system'],
            'XLA:CPU step memory: reuse the previous step\'s pages (no page faults; resident '
            'memory stays at its peak) or the C library\'s defaults; auto: reuse when computing '
            'on a CPU under glibc (jaxdistill/runtime/hostmem.py).', flag_values=flag_values),
    }
    flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)
    return holders


_FLAGS = define_flags()


def _fail(message: str) -> None:
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
    """absl parsing, with every failure (flags or the config file) reported in one line."""
    argv = _named_config(argv)
    _check_config_file(argv)
    try:
        rest = flag_values(argv)
    except flags.Error as e:
        _fail(_config_file_error(str(e)) or ' '.join(str(e).split()))
    except JaxdistillError as e:
        _fail(str(e))
    except (AttributeError, KeyError, TypeError, ValueError, OSError, SyntaxError) as e:
        unknown = _unknown_override(argv)
        if unknown:
            _fail(unknown)
        text = ' '.join(str(e).strip('\'"').replace('\\n', ' ').split()).replace("\\'", "'")
        _fail(f'bad --config: {text}')
    _check_loaded(flag_values, _config_arg(argv))
    return rest


def _named_config(argv: list[str]) -> list[str]:
    """``--config=digits:smoke``: a packaged recipe by name (`jaxdistill.configs`)."""
    from jaxdistill import configs

    out = list(argv)
    for i, arg in enumerate(out[1:], 1):
        if arg.startswith('--config='):
            out[i] = '--config=' + configs.resolve(arg[len('--config='):])
        elif out[i - 1] == '--config':
            out[i] = configs.resolve(arg)
    return out


def _config_arg(argv: list[str]) -> str | None:
    """The value of ``--config=X`` / ``--config X`` (the last one, as absl takes it)."""
    value = None
    for i, arg in enumerate(argv[1:], 1):
        if arg.startswith('--config='):
            value = arg[len('--config='):]
        elif arg == '--config' and i + 1 < len(argv):
            value = argv[i + 1]
    return value


def _check_config_file(argv: list[str]) -> None:
    """``--config`` names a Python file that exists; if not, lists the configs that do."""
    value = _config_arg(argv)
    if value is None:
        return  # absl reports the missing required flag
    path = value.split(':', 1)[0]
    if os.path.isfile(path):
        return
    what = 'is a directory' if os.path.isdir(path) else 'no such file'
    folder = path if os.path.isdir(path) else os.path.dirname(path)
    for candidate in (folder, 'configs', _PACKAGED_CONFIGS):
        names = _config_names(candidate) if candidate else []
        if names:
            _fail(f'--config={value}: {what} {path!r}; the configs in '
                  f'{os.path.join(candidate, "")} are {", ".join(names)} '
                  '(give FILE.py or FILE.py:PRESET)')
    _fail(f'--config={value}: {what} {path!r}; give a Python file with get_config(), '
          'e.g. configs/digits.py')


# The packaged recipes (jaxdistill/configs), listed when the working directory has none.
_PACKAGED_CONFIGS = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'configs')


def _config_names(folder: str) -> list[str]:
    if not os.path.isdir(folder):
        return []
    return sorted(f for f in os.listdir(folder) if f.endswith('.py') and not f.startswith('_'))


def _config_file_error(text: str) -> str | None:
    """The one line that matters of ml_collections' error for a raising ``get_config``.

    It embeds the whole traceback; the exception it ends with is the config's own
    message (e.g. the known presets). ValueErrors speak for themselves; other types are
    named, as they are likely a bug in the config file.
    """
    marker = 'Error whilst parsing config file:'
    if marker not in text:
        return None
    flag = text.split(': ', 1)[0].replace('flag ', '', 1)  # '--config=configs/x.py:p'
    lines = [line.strip() for line in text.split(marker, 1)[1].splitlines() if line.strip()]
    last = lines[-1] if lines else 'get_config() failed'
    kind, sep, message = last.partition(': ')
    if sep and kind.rsplit('.', 1)[-1] in ('ValueError', 'ConfigError'):
        last = message
    return f'{flag}: {last}'


def _check_loaded(flag_values: flags.FlagValues, value: str | None) -> None:
    """ml_collections defers a config file's IOError until the config is read: read it now."""
    from ml_collections import ConfigDict

    config = flag_values['config'].value
    if isinstance(config, ConfigDict):
        return
    try:
        config.keys()
    except OSError as e:
        reason = str(e).strip().splitlines()[-1].strip()
        _fail(f'--config={value}: {reason}')
    _fail(f'--config: get_config() returned {type(config).__name__}, not an '
          'ml_collections.ConfigDict (did it forget a return?)')


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


def main(argv: list[str], holders: dict[str, flags.FlagHolder] = _FLAGS,
         restart: bool = True) -> None:
    """The job for parsed flags; ``restart=False`` never re-executes this process for the
    host memory policy (`run_cli`: in-process callers keep theirs)."""
    if len(argv) > 1:
        _fail(f'unexpected arguments {argv[1:]}: every option is a --flag')
    logging.set_verbosity(logging.ERROR)  # library chatter; our own output is print()
    from jaxdistill.train.preemption import Preempted  # imports jax: after the process's start

    value = {name: holder.value for name, holder in holders.items()}
    try:
        # `cli` applied the policy before jax was imported, so this restarts nothing then;
        # a caller of main() that skipped it gets the same one restart here.
        notes = []
        if restart:
            hostmem.ensure(value['host_memory'])
            # what it did, one line: printed once the config holds (bad input prints nothing)
            notes.append(hostmem.describe(value['host_memory']))
        else:
            hostmem.resolve(value['host_memory'])
        from jaxdistill import run
        from jaxdistill.runtime import distributed

        # Before anything touches a device: JAX then sees every process's devices.
        distributed.initialize(value['coordinator_address'], value['num_processes'],
                               value['process_id'], value['coordinator_timeout'])
        distributed.check_shared_dir(value['workdir'])
        run.train_and_evaluate(value['config'], value['workdir'], notes=notes)
    except Preempted:
        # The checkpoint is committed (run_stage waited for it) and the message printed:
        # leave now instead of spending seconds tearing down native libraries, so a
        # preemption grace period is spent on saving, not on exiting.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)
    except JaxdistillError as e:
        _fail(str(e))


def run_cli(argv: list[str]) -> int:
    """The command line in this process (tests, notebooks): ``argv[0]`` is the program
    name; returns the exit status. Flags live in a fresh `FlagValues`, so calls are
    independent; the process is never restarted (see `main`)."""
    flag_values = flags.FlagValues()
    holders = define_flags(flag_values, argv)
    try:
        rest = parse_flags(argv, flag_values)
        main(rest, holders, restart=False)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    return 0


def cli() -> None:
    """The ``jaxdistill`` console script: the same as ``python -m jaxdistill.main``.

    Where the process starts: its allocator policy first (at most one restart, before jax or
    the config file is loaded; jaxdistill/runtime/hostmem.py), then the flags and the job.
    """
    hostmem.start(sys.argv)
    app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
    cli()
