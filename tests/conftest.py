"""Every test sees 8 forced CPU devices and a private TFDS data dir."""

import os
import tempfile

# Before JAX initialises its backend: multi-device code is tested on 8 CPU devices.
os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                           ' --xla_force_host_platform_device_count=8').strip()
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
# One persistent compilation cache for the session and the CLI subprocesses it starts:
# the same smoke job is compiled once, not once per process.
os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='jaxdistill-xla-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402


@pytest.fixture(scope='session')
def data_dir(tmp_path_factory):
    """One TFDS data dir for the session, so `digits` is prepared once."""
    return str(tmp_path_factory.mktemp('tfds'))
