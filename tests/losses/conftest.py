"""Shared fixtures of the `jaxdistill.losses` tests."""

import jax
import pytest


@pytest.fixture(autouse=True, scope='module')
def fast_compile():
    """Compile with few XLA optimisations while this module runs, restored afterwards.

    The same programs, compiled about twice as fast: compiling is where this file's time
    goes (the programs run on a few dozen numbers), and 2 CPU cores are all there is.
    """
    before = jax.config.read('jax_disable_most_optimizations')
    jax.config.update('jax_disable_most_optimizations', True)
    yield
    jax.config.update('jax_disable_most_optimizations', before)

