"""The recipes, shipped inside the package: ``--config=digits:smoke`` finds them by name.

Each ``NAME.py`` here has ``get_config(arg=None)`` and a docstring with the exact command.
In a source checkout ``configs/`` is a link to this folder, so ``--config=configs/
digits.py:smoke`` names the same file; after a plain ``pip install`` the name is enough:
``jaxdistill --config=digits:smoke --workdir=/tmp/w``.
"""

from __future__ import annotations

import importlib.util
import os

import ml_collections

from jaxdistill.errors import ConfigError

DIR = os.path.dirname(os.path.abspath(__file__))


def names() -> list[str]:
    """The packaged recipes, without ``.py``."""
    return sorted(f[:-3] for f in os.listdir(DIR) if f.endswith('.py') and not f.startswith('_'))


def resolve(value: str) -> str:
    """``--config`` as a file path: ``NAME[.py][:PRESET]`` of a packaged recipe becomes its
    path here; an existing file, or anything else, is returned as given."""
    name, sep, preset = value.partition(':')
    if os.path.isfile(name) or os.sep in name or '/' in name:
        return value
    stem = name[:-3] if name.endswith('.py') else name
    if stem in names():
        return os.path.join(DIR, f'{stem}.py') + sep + preset
    return value


def load(spec: str) -> ml_collections.ConfigDict:
    """The config ``--config=spec`` gives (``'digits:smoke'``, or a file with a preset)."""
    path, _, preset = resolve(spec).partition(':')
    if not os.path.isfile(path):
        raise ConfigError(f'config {spec!r}: no such recipe or file; the packaged recipes are '
                          f'{", ".join(names())}')
    module_spec = importlib.util.spec_from_file_location(
        f'jaxdistill_config_{os.path.basename(path)[:-3]}', path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(preset) if preset else module.get_config()
