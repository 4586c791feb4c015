"""One registry of converters between Hugging Face tensors and jaxdistill modules.

A `Converter` knows one Flax module class (`BertEncoder`, `Decoder`): how to compare a
checkpoint's tensors (or their shapes) with a built module, how to produce each Flax
parameter from the tensors, and how to write the parameters back under Hugging Face
names. Callers ask `for_module` instead of branching on ``isinstance``; each family module
(`jaxdistill.hf.bert`, `jaxdistill.hf.decoder`) registers its converter on import.

Parameters are produced leaf by leaf (`build_params`): each leaf reads the tensors it needs
and is handed to ``place`` (e.g. ``jax.device_put`` into its sharding) before the next is
read, so an import never holds the whole model on the host or on one device.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError

Path = tuple[str, ...]
Leaves = dict[Path, Callable[[], np.ndarray]]


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the module; ``report`` has every problem."""

    def __init__(self, message: str, report: ImportReport):
        super().__init__(message)
        self.report = report


@dataclasses.dataclass(frozen=True)
class ImportReport:
    """What did not fit, in module order: ``problems[0]`` is the first mismatch."""

    module: str
    missing: tuple[str, ...] = ()  # the module needs them; the file lacks them
    unexpected: tuple[str, ...] = ()  # body tensors the module has no place for
    mismatched: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()  # file, expected
    ignored: tuple[str, ...] = ()  # heads (pooler, cls, ...) and buffers (position_ids)
    problems: tuple[str, ...] = ()

    @property
    def ok(self) -> bool:
        return not self.problems

    def __str__(self) -> str:
        lines = [f'{self.module}: {len(self.problems)} problem(s), '
                 f'{len(self.missing)} missing, {len(self.unexpected)} unexpected, '
                 f'{len(self.mismatched)} mis-shaped, {len(self.ignored)} ignored']
        lines += [f'  {p}' for p in self.problems]
        if self.ignored:
            lines.append('  ignored: ' + ', '.join(self.ignored))
        return '\n'.join(lines)

    def raise_first(self, prefix: str = '', fix: str = '') -> None:
        """Raises `CheckpointMismatchError` naming the first problem (if any), in one line."""
        if self.ok:
            return
        more = len(self.problems) - 1
        raise CheckpointMismatchError(
            prefix + self.problems[0] + (f' (+{more} more problem(s))' if more else '') +
            (f'; {fix}' if fix else ''), self)


@dataclasses.dataclass(frozen=True)
class Converter:
    """HF tensors <-> the parameters of one module class."""

    name: str
    module_type: type
    check: Callable[[Mapping[str, Any], Any], ImportReport]  # tensors (or shapes), module
    leaves: Callable[[Mapping[str, Any], Any], Leaves]  # tensors, module -> leaf makers
    to_hf: Callable[[Mapping[str, Any]], dict[str, np.ndarray]]  # params -> HF tensors
    heads: Callable[[Any], list[tuple[str, int, str]]]  # (kwarg, value, config.json field)
    hf_config: Callable[[Any], dict[str, Any]]  # module -> its config.json (export)


_REGISTRY: dict[type, Converter] = {}


def register(converter: Converter) -> Converter:
    _REGISTRY[converter.module_type] = converter
    return converter


def supported() -> list[str]:
    return sorted(c.name for c in _REGISTRY.values())


def for_module(module: Any, key: str = 'teacher.module') -> Converter:
    """The converter of ``module``'s class (or a base class); a one-line error otherwise."""
    for cls in type(module).__mro__:
        if cls in _REGISTRY:
            return _REGISTRY[cls]
    names = ' or '.join(f"'{c.name}' ({c.module_type.__name__})" for c in
                        sorted(_REGISTRY.values(), key=lambda c: c.name))
    raise ConfigError(f'{key}: hf: checkpoints load into the {names} modules, not '
                      f'{type(module).__name__}; set {key.rsplit(".", 1)[0]}.module accordingly')


def build_params(leaves: Leaves, place: Callable[[Path, np.ndarray], Any] | None = None
                 ) -> dict[str, Any]:
    """The nested parameter dict, each leaf made and placed before the next is read."""
    params: dict[str, Any] = {}
    for path, make in leaves.items():
        value = make()
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = value if place is None else place(path, value)
    return params


def flat_paths(tree: Mapping[str, Any], prefix: Path = ()) -> dict[Path, Any]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, Mapping):
            out.update(flat_paths(v, (*prefix, k)))
        else:
            out[(*prefix, k)] = v
    return out
