"""Multi-process start-up: one JAX process per host (TPU VM) or per GPU (SLURM).

JAX runs one Python process per host and stitches their devices into one global set
with `jax.distributed.initialize`, which must run before anything touches a device.
`initialize` decides whether the run is multi-process:

* explicit ``--coordinator_address/--num_processes/--process_id`` (what
  ``launch/local_multihost.sh`` passes; ``--num_processes=1`` forces a single process);
* SLURM with more than one task (``srun`` under ``launch/slurm_gpu.sh``): JAX reads the
  ``SLURM_*`` variables and gives each process the GPU of its local rank;
* a Cloud TPU VM (libtpu installed and a Google TPU on the PCI bus): JAX reads the
  worker list from the VM's metadata; on a single-host slice this is a no-op cluster of 1;
* otherwise nothing: a single process sees its local devices.

CPU processes exchange collectives through gloo. Everything after start-up is the
same code on every process: each reads only its rows of the data
(`jax.process_index`), logs and reports come from process 0, and Orbax writes every
checkpoint from all processes into one directory, which must therefore be shared
(`check_shared_dir`).
"""

from __future__ import annotations

import glob
import importlib.util
import os
import secrets
from collections.abc import Mapping

import jax
import numpy as np
from jax.experimental import multihost_utils

from jaxdistill.errors import ConfigError

GOOGLE_PCI_VENDOR = '0x1ae0'  # Cloud TPU chips appear on the PCI bus with this vendor id


def _slurm_tasks(env: Mapping[str, str]) -> int:
    """Tasks of the current SLURM step (0 outside ``srun``)."""
    needed = ('SLURM_JOB_ID', 'SLURM_STEP_NODELIST', 'SLURM_NTASKS', 'SLURM_PROCID',
              'SLURM_LOCALID')
    if not all(k in env for k in needed):
        return 0
    return int(env['SLURM_NTASKS'])


def _on_cloud_tpu_vm(env: Mapping[str, str]) -> bool:
    """libtpu importable and a TPU chip present (what JAX itself checks before it queries
    the VM metadata; TPU_SKIP_MDS_QUERY opts out, as it does for JAX)."""
    if 'TPU_SKIP_MDS_QUERY' in env or importlib.util.find_spec('libtpu') is None:
        return False
    for vendor in glob.glob('/sys/bus/pci/devices/*/vendor'):
        try:
            with open(vendor) as f:
                if f.read().strip() == GOOGLE_PCI_VENDOR:
                    return True
        except OSError:
            continue
    return False


def detect(coordinator_address: str = '', num_processes: int | None = None,
           process_id: int | None = None, env: Mapping[str, str] | None = None) -> str:
    """``'explicit'``, ``'slurm'``, ``'tpu'`` or ``''`` (single process); checks the flags."""
    env = os.environ if env is None else env
    given = [coordinator_address != '', num_processes is not None, process_id is not None]
    if num_processes == 1 and not coordinator_address:
        return ''
    if any(given):
        if not all(given):
            missing = [f for f, g in zip(('--coordinator_address', '--num_processes',
                                          '--process_id'), given) if not g][0]
            raise ConfigError(f'{missing} is missing: a multi-process run needs '
                              '--coordinator_address=HOST:PORT, --num_processes=N and '
                              '--process_id=I (0..N-1) on every process')
        if num_processes < 1:
            raise ConfigError(f'--num_processes={num_processes} must be >= 1')
        if not 0 <= process_id < num_processes:
            raise ConfigError(f'--process_id={process_id} must be in [0, {num_processes}): '
                              'number the processes 0..N-1')
        if ':' not in coordinator_address:
            raise ConfigError(f'--coordinator_address={coordinator_address!r} needs a port: '
                              'HOST:PORT of process 0, e.g. localhost:12355')
        return 'explicit'
    if _slurm_tasks(env) > 1:
        return 'slurm'
    if _on_cloud_tpu_vm(env):
        return 'tpu'
    return ''


def initialize(coordinator_address: str = '', num_processes: int | None = None,
               process_id: int | None = None) -> str:
    """Starts the JAX distributed system when the run spans processes; returns how it was
    detected ('' for a single process). Call it before anything touches a device."""
    how = detect(coordinator_address, num_processes, process_id)
    if not how:
        return ''
    # CPU processes (tests, local_multihost.sh) need a cross-process collective backend.
    jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    if how == 'explicit':
        jax.distributed.initialize(coordinator_address, num_processes, process_id)
    else:
        jax.distributed.initialize()  # SLURM and TPU VMs: JAX fills in everything
    return how


def is_main() -> bool:
    """Process 0 writes logs, reports and the config; every process trains."""
    return jax.process_index() == 0


def check_shared_dir(path: str) -> None:
    """Every process must see the same ``path``: Orbax has each host write its shards
    there and process 0 its metadata. Process 0 leaves a marker; the others look for it.

    ``path`` (or its nearest existing parent) is probed; nothing else is written.
    """
    if jax.process_count() == 1 or '://' in path:
        return  # one process, or a bucket: shared by construction
    probe = os.path.abspath(os.path.expanduser(path))
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
