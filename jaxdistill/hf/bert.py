"""BERT-family encoders: Hugging Face safetensors <-> the Flax `BertEncoder`.

The name map is explicit (one line per tensor in `bert_name_map`) and checked against the
shapes of the module you actually built, so a checkpoint of another architecture fails with
the first tensor that does not fit, not deep inside ``apply``. Usable as
``teacher.checkpoint = 'hf:PATH'`` (`jaxdistill.hf.teacher`) or via `load_bert_checkpoint`,
where PATH is a directory with ``model.safetensors`` (and ``config.json``) or the file.
"""

from __future__ import annotations

import pathlib
import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.hf import convert, files
from jaxdistill.hf.convert import ImportReport
from jaxdistill.hf.files import HF_PREFIX, open_weights, read_config
from jaxdistill.models.bert import BertEncoder, from_hf_config

Params = Any

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


def _leaves(tensors: Mapping[str, np.ndarray], module: BertEncoder) -> convert.Leaves:
    found = _canonical(tensors)

    def make(hf: str, transpose: bool):
        def leaf() -> np.ndarray:
            name, value = found[hf]
            value = np.asarray(value)
            if not files.is_float(value.dtype):
                raise CheckpointError(f'checkpoint tensor {name!r} has dtype {value.dtype}, not '
                                      'floating point: is this a BERT weights file?')
            value = value.astype(np.float32)
            return np.ascontiguousarray(value.T if transpose else value)
        return leaf

    return {path: make(hf, transpose) for hf, path, transpose in bert_name_map(module.layers)}


def bert_params_from_hf(tensors: Mapping[str, np.ndarray],
                        module_or_config: BertEncoder | Mapping[str, Any], *,
                        host: bool = False) -> Params:
    """Flax ``params`` for a `BertEncoder` from HF BERT tensors (``bert.`` prefix optional).

    Raises `CheckpointMismatchError` naming the first mismatch when the architectures
    differ; heads (pooler, MLM/classifier) and the ``position_ids`` buffer are ignored.
    ``host=True`` returns numpy arrays, for placing them into shardings without a detour.
    """
    module = _as_module(module_or_config)
    check_bert_tensors(tensors, module).raise_first(
        fix=f'{_checkpoint_summary(_canonical(tensors))}: build the module from its '
            'config.json (jaxdistill.models.bert.from_hf_config) or fix the module kwargs')
    params = convert.build_params(_leaves(tensors, module))
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
    tensors = open_weights(path)
    config = read_config(path, required=module is None)
    if module is None:
        module = from_hf_config(config)
    params = bert_params_from_hf(tensors, module)
    if config is not None and 'num_attention_heads' in config:
        if module.heads != int(config['num_attention_heads']):
            raise CheckpointError(f'{spec}: module heads={module.heads} but config.json '
                                  f'num_attention_heads={config["num_attention_heads"]}; '
                                  'set heads to match')
    return module, params


def to_hf_config(m: BertEncoder) -> dict[str, Any]:
    """The ``config.json`` of ``BertModel`` for ``m`` (the inverse of ``from_hf_config``)."""
    return {'architectures': ['BertModel'], 'model_type': 'bert', 'vocab_size': m.vocab_size,
            'hidden_size': m.hidden, 'num_hidden_layers': m.layers,
            'num_attention_heads': m.heads, 'intermediate_size': m.intermediate,
            'max_position_embeddings': m.max_len, 'type_vocab_size': m.type_vocab_size,
            'pad_token_id': m.pad_token_id, 'hidden_act': 'gelu',
            'hidden_dropout_prob': m.dropout_rate,
            'attention_probs_dropout_prob': m.attention_dropout_rate,
            'layer_norm_eps': m.layer_norm_eps, 'position_embedding_type': 'absolute',
            'torch_dtype': 'float32'}


CONVERTER = convert.register(convert.Converter(
    'bert', BertEncoder, check_bert_tensors, _leaves, bert_params_to_hf,
    lambda m: [('heads', m.heads, 'num_attention_heads')], to_hf_config))
