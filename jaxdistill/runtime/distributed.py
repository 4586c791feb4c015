"""Multi-process start-up: one JAX process per host (TPU VM) or per GPU (SLURM, mpirun).

JAX runs one Python process per host and stitches their devices into one global set
with `jax.distributed.initialize`, which must run before anything touches a device.
`initialize` decides whether the run is multi-process:

* explicit ``--coordinator_address/--num_processes/--process_id`` (what
  ``launch/local_multihost.sh`` passes; ``--num_processes=1`` forces a single process);
  flags win over what is detected, and a detected cluster fills in the flags not given;
* otherwise JAX's own cluster detection (`jax._src.clusters`): SLURM under ``srun``,
  Open MPI under ``mpirun``, Kubernetes (JobSet/Indexed Job), Cloud TPU VMs and GKE TPU
  slices; a cluster of one process is a single process;
* otherwise nothing: a single process sees its local devices.

A process that cannot reach the coordinator within ``timeout`` seconds stops with a
one-line error (JAX itself would abort the process with a stack trace). CPU processes
exchange collectives through gloo. Everything after start-up is the same code on every
process: each reads only its rows of the data (`jax.process_index`), logs and reports
come from process 0, and Orbax writes every checkpoint from all processes into one
directory, which must therefore be shared (`check_shared_dir`).
"""

from __future__ import annotations

import os
import secrets
import socket
import time

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdistill.errors import ConfigError
from jaxdistill.runtime import paths

FLAGS = ('--coordinator_address', '--num_processes', '--process_id')


def _cluster():
    """JAX's detected cluster environment (a `ClusterEnv` subclass), or None."""
    from jax._src import clusters

    return next((env for env in clusters.ClusterEnv._cluster_types
                 if not env.opt_in_only_method and env.is_env_present()), None)


def _check_flags(coordinator_address: str, num_processes: int | None,
                 process_id: int | None) -> None:
    if num_processes is not None and num_processes < 1:
        raise ConfigError(f'--num_processes={num_processes} must be >= 1')
    if num_processes is not None and process_id is not None and not (
            0 <= process_id < num_processes):
        raise ConfigError(f'--process_id={process_id} must be in [0, {num_processes}): '
                          'number the processes 0..N-1')
    if coordinator_address and ':' not in coordinator_address:
        raise ConfigError(f'--coordinator_address={coordinator_address!r} needs a port: '
                          'HOST:PORT of process 0, e.g. localhost:12355')


def detect(coordinator_address: str = '', num_processes: int | None = None,
           process_id: int | None = None) -> str:
    """``'explicit'``, the name of the cluster JAX detects (``'slurm'``, ``'ompi'``,
    ``'k8s'``, ``'gcetpu'``, ``'gketpu'``) or ``''`` (single process); checks the flags."""
    given = [coordinator_address != '', num_processes is not None, process_id is not None]
    if num_processes == 1 and not coordinator_address:
        return ''
    _check_flags(coordinator_address, num_processes, process_id)
    if all(given):
        return 'explicit'
    env = _cluster()
    if env is not None:
        count = num_processes if num_processes is not None else env.get_process_count()
        return env.name if count > 1 else ''
    if any(given):
        missing = [f for f, g in zip(FLAGS, given) if not g][0]
        raise ConfigError(f'{missing} is missing: a multi-process run needs '
                          '--coordinator_address=HOST:PORT, --num_processes=N and '
                          '--process_id=I (0..N-1) on every process')
    return ''


def wait_for_coordinator(address: str, timeout: float) -> None:
    """Retries a TCP connection to ``address`` (process 0's coordinator, which may start
    later than this process) for ``timeout`` seconds; a one-line error if it never
    answers."""
    host, _, port = address.rpartition(':')
    host = host.strip('[]')
    deadline = time.monotonic() + timeout
    while True:
        try:
            with socket.create_connection((host, int(port)), timeout=min(5.0, timeout)):
                return
        except (OSError, ValueError) as e:
            if time.monotonic() >= deadline:
                raise ConfigError(
                    f'cannot reach the coordinator {address} (process 0) within {timeout:g} s '
                    f'({type(e).__name__}: {" ".join(str(e).split())[:80]}): start process 0, '
                    'check --coordinator_address (HOST:PORT of process 0) and that the port is '
                    'open between hosts, or wait longer with --coordinator_timeout') from None
        time.sleep(0.5)


def initialize(coordinator_address: str = '', num_processes: int | None = None,
               process_id: int | None = None, timeout: float = 300) -> str:
    """Starts the JAX distributed system when the run spans processes; returns how it was
    detected ('' for a single process). Call it before anything touches a device."""
    how = detect(coordinator_address, num_processes, process_id)
    if not how:
        return ''
    # CPU processes (tests, local_multihost.sh) need a cross-process collective backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    args = dict(coordinator_address=coordinator_address or None,
                num_processes=num_processes, process_id=process_id)
    if how != 'explicit':  # what JAX's detection will fill in, to check it first
        from jax._src import clusters

        address, count, index, _ = clusters.ClusterEnv.auto_detect_unset_distributed_params(
            args['coordinator_address'], num_processes, process_id, None, None, int(timeout))
        args.update(coordinator_address=address, num_processes=count, process_id=index)
    if args['process_id'] != 0 and args['coordinator_address']:
        wait_for_coordinator(args['coordinator_address'], timeout)
    jax.distributed.initialize(**args, initialization_timeout=int(timeout))
    return how


def is_main() -> bool:
    """Process 0 writes logs, reports and the config; every process trains."""
    return jax.process_index() == 0


def check_shared_dir(path: str) -> None:
    """Every process must see the same ``path``: Orbax has each host write its shards
    there and process 0 its metadata. Process 0 leaves a marker; the others look for it.

    ``path`` (or its nearest existing parent) is probed; nothing else is written.
    """
    if jax.process_count() == 1 or paths.is_remote(path):
        return  # one process, or a bucket: shared by construction
    probe = paths.resolve(path)
    while not os.path.isdir(probe):
        probe = os.path.dirname(probe)
    token = int(multihost_utils.broadcast_one_to_all(np.int64(secrets.randbits(62))))
    marker = os.path.join(probe, f'.jaxdistill-shared-{token}')
    if is_main():
        with open(marker, 'w') as f:
            f.write('probe')
    multihost_utils.sync_global_devices('jaxdistill-shared-written')
    seen = np.array(os.path.exists(marker), np.int32)
    all_seen = multihost_utils.process_allgather(seen)
    multihost_utils.sync_global_devices('jaxdistill-shared-read')
    if is_main():
        os.remove(marker)
    if not np.all(all_seen):
        missing = [int(i) for i in np.flatnonzero(np.asarray(all_seen) == 0)]
        raise ConfigError(
            f'--workdir={path} is not shared: processes {missing} do not see what process 0 '
            'wrote there; put the workdir on a filesystem every host mounts (NFS, a gcsfuse '
            'bucket) so Orbax can write one checkpoint from all processes')
