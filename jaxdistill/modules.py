"""Resolves `teacher.module` / `student.module`: a built-in name or 'pkg.mod:Class'."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

import flax.linen as nn

from jaxdistill.errors import ConfigError, closest
from jaxdistill.models import BUILTIN


def resolve(spec: str, kwargs: Mapping[str, Any], *, key: str) -> nn.Module:
    """Builds the module named by ``spec`` with ``kwargs``; ``key`` names the config key."""
    if ':' in spec:
        mod_name, _, attr = spec.partition(':')
        try:
            mod = importlib.import_module(mod_name)
        except Exception as e:  # noqa: BLE001 - the user's import error, shown in one line
            raise ConfigError(
                f'{key}={spec!r}: importing {mod_name!r} failed with '
                f'{type(e).__name__}: {e} (is the package on PYTHONPATH?)') from None
        if not hasattr(mod, attr):
            names = [n for n in dir(mod) if not n.startswith('_')]
            raise ConfigError(f'{key}={spec!r}: {mod_name} has no {attr!r}; '
                              f'{closest(attr, names)}')
        factory = getattr(mod, attr)
    elif spec in BUILTIN:
        factory = BUILTIN[spec]
    else:
        raise ConfigError(f'{key}={spec!r} is neither a built-in module '
                          f"({closest(spec, BUILTIN)}) nor an import path 'pkg.mod:Class'")
    try:
        module = factory(**dict(kwargs))
    except TypeError as e:
        raise ConfigError(f'{key.rsplit(".", 1)[0]}.kwargs do not fit {spec!r}: {e}') from None
    if not isinstance(module, nn.Module):
        raise ConfigError(f'{key}={spec!r} built a {type(module).__name__}, not a Flax module')
    return module
