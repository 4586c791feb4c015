"""Shared test helpers: load a configs/*.py file the way the CLI does."""

import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_module(name: str):
    """``configs/NAME`` as a module (its constants and helpers, beside `get_config`)."""
    spec = importlib.util.spec_from_file_location(
        f'configs_{name[:-3]}', os.path.join(ROOT, 'configs', name))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config(name: str, arg=None):
    return load_module(name).get_config(arg)
