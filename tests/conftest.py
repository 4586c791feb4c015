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


@pytest.fixture(scope='session')
def lm_cache_teacher(data_dir, tmp_path_factory):
    """configs/lm_text.py:smoke,cached (top-8, no baseline) in ``mode=cache_teacher`` on one
    device, once for the session: a workdir with the smoke teacher (20 steps) and its cache,
    and what the call returned. Read by several files (test_signals_runs, test_multihost);
    a test may add stages to the workdir, never change the teacher or the cache."""
    import jax

    from jaxdistill import run
    from tests.helpers import load_config

    workdir = str(tmp_path_factory.mktemp('lm_cache_teacher'))
    c = load_config('lm_text.py', 'smoke,cached')
    c.data.data_dir, c.distill.cache.k, c.train.baseline = data_dir, 8, False
    c.mode = 'cache_teacher'
    return workdir, run.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
