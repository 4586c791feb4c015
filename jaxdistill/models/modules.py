"""Resolves `teacher.module` / `student.module`: a built-in name or 'pkg.mod:Class'.

A linen module is built right away (linen modules hold no arrays until ``init``). An
NNX module creates its parameters in ``__init__``, so it is recognised by its class (a
subclass of ``nnx.Module``) or, for a factory function, by a ``rngs`` argument, and
returned as an `NnxSpec` that `Model.init` builds from the init rng. Either way the
arguments are checked against the constructor here, at config time.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
from flax import nnx

from jaxdistill.errors import ConfigError, closest
from jaxdistill.models import BUILTIN
from jaxdistill.models.adapter import Model, NnxSpec, signature


def _lookup(spec: str, key: str) -> Callable[..., Any]:
    if ':' in spec:
        mod_name, _, attr = spec.partition(':')
        try:
            mod = importlib.import_module(mod_name)
        except Exception as e:  # noqa: BLE001 - the user's import error, shown in one line
            text = ' '.join(str(e).split())
            raise ConfigError(
                f'{key}={spec!r}: importing {mod_name!r} failed with '
                f'{type(e).__name__}: {text} (is the package on PYTHONPATH?)') from None
        if not hasattr(mod, attr):
            names = [n for n in dir(mod) if not n.startswith('_')]
            raise ConfigError(f'{key}={spec!r}: {mod_name} has no {attr!r}; '
                              f'{closest(attr, names)}')
        return getattr(mod, attr)
    if spec in BUILTIN:
        return BUILTIN[spec]
    raise ConfigError(f'{key}={spec!r} is neither a built-in module '
                      f"({closest(spec, BUILTIN)}) nor an import path 'pkg.mod:Class'")


def is_nnx(factory: Callable[..., Any]) -> bool:
    """An NNX Module class, or a function that builds one from ``rngs``."""
    if isinstance(factory, type):
        return issubclass(factory, nnx.Module)
    sig = signature(factory)
    return sig is not None and 'rngs' in sig.parameters


def _kwargs_error(key: str, spec: str, e: Exception) -> ConfigError:
    return ConfigError(f'{key.rsplit(".", 1)[0]}.kwargs do not fit {spec!r}: {e}')


def resolve(spec: str, kwargs: Mapping[str, Any], *, key: str) -> nn.Module | NnxSpec:
    """The module named by ``spec`` with ``kwargs``; ``key`` names the config key.

    Returns a linen module, or an `NnxSpec` for an NNX one; `Model` accepts both.
    """
    factory = _lookup(spec, key)
    kwargs = dict(kwargs)
    if is_nnx(factory):
        if 'rngs' in kwargs:
            raise ConfigError(f'{key.rsplit(".", 1)[0]}.kwargs.rngs: jaxdistill passes rngs to '
                              f'{spec!r} itself (from the seed); remove it')
        sig = signature(factory)
        if sig is not None:
            try:
                sig.bind(**kwargs, **({'rngs': None} if 'rngs' in sig.parameters else {}))
            except TypeError as e:
                raise _kwargs_error(key, spec, e) from None
        return NnxSpec(factory, kwargs)
    try:
        module = factory(**kwargs)
    except TypeError as e:
        raise _kwargs_error(key, spec, e) from None
    if isinstance(module, nnx.Module):
        raise ConfigError(f'{key}={spec!r} built an NNX module without rngs: give it a '
                          "'rngs: nnx.Rngs' argument and name the class (or that function)")
    if not isinstance(module, nn.Module):
        raise ConfigError(f'{key}={spec!r} built a {type(module).__name__}, not a Flax module')
    return module


def make_model(block: Any, name: str, key: str | None = None) -> Model:
    """The `Model` of a config block ``{module, kwargs, logits_key}`` (e.g. ``config.student``).

    ``name`` is how errors name the block (``'teacher'``); ``key`` its config path.
    """
    key = key or name
    return Model(resolve(block.module, block.kwargs, key=f'{key}.module'),
                 block.get('logits_key', ''), name)
