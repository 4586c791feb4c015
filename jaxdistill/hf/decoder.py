"""Decoder-only Hugging Face checkpoints (Llama, Mistral, Qwen2, Gemma) <-> the Flax `Decoder`.

`jaxdistill.models.decoder.Decoder` is Llama's architecture (pre-norm RMSNorm, rotary
positions in the rotate-half form HF uses, a gated MLP, grouped-query attention) with the
switches the other families need: q/k/v biases (Qwen2), a sliding attention window
(Mistral), RMSNorm ``(1 + w)``, embeddings scaled by ``sqrt(d_model)``, GeGLU and an explicit
``head_dim`` (Gemma). These families share one tensor naming (``model.layers.N.self_attn.
q_proj.weight`` ...), so one name map (`decoder_name_map`) covers them all, its rows chosen by
the module's switches; each family's module (`jaxdistill.hf.llama`, ``.mistral``,
``.qwen2``, ``.gemma``) only translates its ``config.json`` (`Family`) both ways.

torch ``Linear`` weights are ``(out, in)``; the decoder keeps query/key/value as
``(d_model, heads, head_dim)`` and the output projection as ``(heads, head_dim, d_model)``.

GPT-2 does not map, and no renaming would make it: its blocks use LayerNorm with a bias
(``ln_1``/``ln_2``/``ln_f``) where the decoder has RMSNorm, a GELU MLP (``mlp.c_fc``,
``mlp.c_proj``) where it has a gated one (``gate``/``up``/``down``), learned absolute positions
(``wpe``) where it rotates queries and keys, and fused query/key/value projections with
biases (``attn.c_attn``). A GPT-2 file therefore fails with `GPT2_DIFFERENCES`, not with a
list of a hundred missing tensors.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.hf import convert, files
from jaxdistill.hf.convert import ImportReport
from jaxdistill.models.decoder import ROPE_TYPES, Decoder

# transforms from the HF tensor to the Flax parameter
COPY, DENSE, HEADS_IN, HEADS_OUT, HEADS_BIAS = 'copy', 'dense', 'heads_in', 'heads_out', 'bias'
GPT2_DIFFERENCES = (
    'GPT-2 checkpoints cannot be loaded into the Llama-style Decoder: GPT-2 uses LayerNorm with '
    'a bias (ln_1, ln_2, ln_f) where Decoder has RMSNorm, a GELU MLP (mlp.c_fc, mlp.c_proj) '
    'where Decoder has SwiGLU (gate, up, down), learned absolute positions (wpe) where Decoder '
    'uses rotary positions, and fused query/key/value projections with biases (attn.c_attn); '
    "use a Llama-style checkpoint (config.json model_type 'llama') or your own GPT-2 module")
_GPT2_NAMES = re.compile(r'(^|\.)(wte|wpe)\.weight$|(^|\.)h\.\d+\.(attn\.c_attn|mlp\.c_fc)\.')
# What a module may set on top of config.json (teacher.kwargs / student.kwargs with 'hf').
OVERRIDES = ('dtype', 'param_dtype', 'scan_layers', 'remat', 'max_len')


# ---------------------------------------------------------------------------- families


@dataclasses.dataclass(frozen=True)
class Family:
    """One ``model_type``: its ``config.json`` -> `Decoder` kwargs, and back for export."""

    model_type: str
    architecture: str  # config.json ``architectures`` on export, e.g. 'LlamaForCausalLM'
    kwargs: Callable[[Mapping[str, Any]], dict[str, Any]]
    config: Callable[[Decoder], dict[str, Any]]
    matches: Callable[[Decoder], bool]  # a Decoder this family can express on export


FAMILIES: dict[str, Family] = {}


def register_family(family: Family) -> Family:
    FAMILIES[family.model_type] = family
    return family


def family_for(config: Mapping[str, Any]) -> Family:
    kind = config.get('model_type', 'llama')
    if kind == 'gpt2':
        raise ConfigError(GPT2_DIFFERENCES)
    if kind not in FAMILIES:
        raise ConfigError(f'config.json model_type={kind!r} is not supported: jaxdistill.hf '
                          f'loads model_type {sorted(FAMILIES)} (and BERT encoders via '
                          "module 'bert')")
    return FAMILIES[kind]


def family_of(module: Decoder) -> Family:
    """The family that expresses ``module`` on export (the most specific that matches)."""
    for name in ('gemma', 'qwen2', 'mistral', 'llama'):  # mistral only with a window
        if name in FAMILIES and FAMILIES[name].matches(module):
            return FAMILIES[name]
    raise ConfigError(f'{describe(module)} matches no Hugging Face family '
                      f'({sorted(FAMILIES)}): it mixes switches no single family has')


def refuse(config: Mapping[str, Any], key: str, want: Any, what: str, kind: str) -> None:
    """A field this family's Decoder cannot compute: a one-line error naming it."""
    if config.get(key, want) != want:
        raise ConfigError(f'config.json {key}={config[key]!r}: Decoder implements only '
                          f'{what} for model_type {kind!r}')


def rope_settings(config: Mapping[str, Any]) -> tuple[float, tuple[tuple[str, Any], ...]]:
    """``(rope_theta, rope_scaling pairs)`` from v4 (rope_theta + rope_scaling) or v5
    (rope_parameters) config.json; a scaling type Decoder lacks is a one-line error."""
    params = dict(config.get('rope_parameters') or {})
    scaling = {**dict(config.get('rope_scaling') or {}), **params}
    theta = float(scaling.pop('rope_theta', config.get('rope_theta', 10000.0)))
    kind = scaling.get('rope_type', scaling.get('type', 'default'))
    if kind not in ROPE_TYPES:
        raise ConfigError(f'config.json rope_scaling type {kind!r} is not implemented: Decoder '
                          f'implements {list(ROPE_TYPES)}')
    if kind == 'default':
        return theta, ()
    scaling.pop('type', None)
    scaling['rope_type'] = kind
    return theta, tuple(sorted((k, v) for k, v in scaling.items() if not isinstance(v, list)))


def common_kwargs(config: Mapping[str, Any], tie_default: bool) -> dict[str, Any]:
    """The `Decoder` kwargs every family reads the same way."""
    try:
        d, heads = int(config['hidden_size']), int(config['num_attention_heads'])
        head_dim = int(config.get('head_dim') or d // heads)
        theta, scaling = rope_settings(config)
        return dict(vocab_size=int(config['vocab_size']),
                    num_layers=int(config['num_hidden_layers']), d_model=d, num_heads=heads,
                    num_kv_heads=int(config.get('num_key_value_heads') or heads),
                    mlp_dim=int(config['intermediate_size']),
                    max_len=int(config.get('max_position_embeddings', 2048)),
                    tie_embeddings=bool(config.get('tie_word_embeddings', tie_default)),
                    rope_base=theta, rope_scaling=scaling,
                    norm_eps=float(config.get('rms_norm_eps', 1e-6)),
                    head_dim=0 if head_dim * heads == d else head_dim)
    except KeyError as e:
        raise ConfigError(f'config.json has no {e.args[0]!r}: is this a '
                          f"{config.get('model_type', 'llama')} config.json?") from None


def common_config(m: Decoder, family: Family) -> dict[str, Any]:
    """config.json fields every family writes the same way (the inverse of common_kwargs)."""
    hd = m.head_dim or m.d_model // m.num_heads
    out = {'architectures': [family.architecture], 'model_type': family.model_type,
           'vocab_size': m.vocab_size, 'hidden_size': m.d_model,
           'intermediate_size': m.mlp_dim, 'num_hidden_layers': m.num_layers,
           'num_attention_heads': m.num_heads,
           'num_key_value_heads': m.num_kv_heads or m.num_heads, 'head_dim': hd,
           'max_position_embeddings': m.max_len, 'rms_norm_eps': m.norm_eps,
           'rope_theta': m.rope_base, 'tie_word_embeddings': m.tie_embeddings,
           'torch_dtype': 'float32', 'attention_dropout': 0.0, 'use_cache': True}
    scaling = dict(m.rope_scaling)
    out['rope_scaling'] = scaling or None
    out['rope_parameters'] = {'rope_theta': m.rope_base, 'rope_type': 'default', **scaling}
    return out


def from_hf_config(config: Mapping[str, Any], **overrides: Any) -> Decoder:
    """A `Decoder` from a Hugging Face ``config.json`` of any supported family.

    ``overrides`` may set `OVERRIDES` (compute dtype, scan, remat, ...); anything that would
    change the architecture is the checkpoint's to say.
    """
    family = family_for(config)
    kwargs = family.kwargs(config)
    kwargs.update(overrides)
    return Decoder(**kwargs)


def from_llama_config(config: Mapping[str, Any], **overrides: Any) -> Decoder:
    """`from_hf_config` (kept for callers of the Llama-only importer)."""
    return from_hf_config(config, **overrides)


def to_hf_config(module: Decoder) -> dict[str, Any]:
    """The ``config.json`` of ``module`` in the family that expresses it."""
    family = family_of(module)
    return family.config(module)


# ---------------------------------------------------------------------------- name map


def decoder_name_map(module: Decoder) -> list[tuple[str, tuple[str, ...], str]]:
    """``(canonical HF name, Flax path, transform)`` for every parameter of ``module``.

    Canonical names drop the ``model.`` prefix of ``*ForCausalLM`` files; ``lm_head`` only
    exists for untied output projections, the q/k/v biases only with ``qkv_bias``.
    """
    rows = [('embed_tokens.weight', ('embedding',), COPY)]
    for i in range(module.num_layers):
        hf, fl = f'layers.{i}', f'layer_{i}'
        rows.append((f'{hf}.input_layernorm.weight', (fl, 'attn_norm', 'scale'), COPY))
        for short, name in (('q', 'query'), ('k', 'key'), ('v', 'value')):
            rows.append((f'{hf}.self_attn.{short}_proj.weight', (fl, 'attn', name), HEADS_IN))
            if module.qkv_bias:
                rows.append((f'{hf}.self_attn.{short}_proj.bias', (fl, 'attn', f'{name}_bias'),
                             HEADS_BIAS))
        rows += [(f'{hf}.self_attn.o_proj.weight', (fl, 'attn', 'out'), HEADS_OUT),
                 (f'{hf}.post_attention_layernorm.weight', (fl, 'mlp_norm', 'scale'), COPY),
                 (f'{hf}.mlp.gate_proj.weight', (fl, 'gate'), DENSE),
                 (f'{hf}.mlp.up_proj.weight', (fl, 'up'), DENSE),
                 (f'{hf}.mlp.down_proj.weight', (fl, 'down'), DENSE)]
    rows.append(('norm.weight', ('final_norm', 'scale'), COPY))
    if not module.tie_embeddings:
        rows.append(('lm_head.weight', ('lm_head',), DENSE))
    return rows


def llama_name_map(layers: int, tie_embeddings: bool) -> list[tuple[str, tuple[str, ...], str]]:
    """`decoder_name_map` of a plain Llama `Decoder` with ``layers`` layers."""
    return decoder_name_map(Decoder(1, layers, 2, 1, 1, 1, tie_embeddings=tie_embeddings))


def hf_shape(flax_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    """The shape the HF tensor has for a Flax parameter of ``flax_shape``."""
    if transform == DENSE:
        return flax_shape[::-1]
    if transform == HEADS_IN:  # (d, heads, head_dim) <- (heads * head_dim, d)
        return (flax_shape[1] * flax_shape[2], flax_shape[0])
    if transform == HEADS_OUT:  # (heads, head_dim, d) <- (d, heads * head_dim)
        return (flax_shape[2], flax_shape[0] * flax_shape[1])
    if transform == HEADS_BIAS:  # (heads, head_dim) <- (heads * head_dim,)
        return (flax_shape[0] * flax_shape[1],)
    return flax_shape


def to_flax(value: np.ndarray, transform: str, flax_shape: tuple[int, ...]) -> np.ndarray:
    if transform in (DENSE, HEADS_IN, HEADS_OUT):
        value = value.T  # torch Linear (out, in) -> (in, out); heads split below
    return np.ascontiguousarray(value.reshape(flax_shape))


def to_hf(value: np.ndarray, transform: str) -> np.ndarray:
    if transform == HEADS_IN:
        value = value.reshape(value.shape[0], -1)
    elif transform == HEADS_OUT:
        value = value.reshape(-1, value.shape[-1])
    elif transform == HEADS_BIAS:
        value = value.reshape(-1)
    if transform in (DENSE, HEADS_IN, HEADS_OUT):
        value = value.T
    return np.ascontiguousarray(value)




# ---------------------------------------------------------------------------- import


def _canonical(tensors: Mapping[str, Any]) -> dict[str, str]:
    """canonical name -> name in the file: drops ``model.``."""
    return {name.removeprefix('model.'): name for name in tensors}


def describe(m: Decoder) -> str:
    extra = ''.join(f', {k}={getattr(m, k)!r}' for k in ('head_dim', 'qkv_bias', 'norm_plus_one',
                                                          'sliding_window')
                    if getattr(m, k))
    return (f'Decoder(vocab_size={m.vocab_size}, num_layers={m.num_layers}, d_model='
            f'{m.d_model}, num_heads={m.num_heads}, num_kv_heads={m.num_kv_heads or m.num_heads}'
            f', mlp_dim={m.mlp_dim}, tie_embeddings={m.tie_embeddings}{extra})')


def param_shapes(module: Decoder) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter shapes of the *unrolled* module (a scanned stack is mapped per layer)."""
    unrolled = module.clone(scan_layers=False, remat=False)
    tokens = jnp.zeros((1, min(4, module.max_len)), jnp.int32)
    tree = nn.meta.unbox(jax.eval_shape(unrolled.init, jax.random.key(0), tokens)['params'])
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(v.shape) for path, v in flat}


def check_decoder_tensors(tensors: Mapping[str, Any], module: Decoder) -> ImportReport:
    """Compares a checkpoint (tensors, or anything with ``.shape``) with ``module``.

    Raises `CheckpointError` with `GPT2_DIFFERENCES` for GPT-2 files; otherwise never raises.
    """
    if any(_GPT2_NAMES.search(name) for name in tensors):
        raise CheckpointError(GPT2_DIFFERENCES)
    infos = getattr(tensors, 'infos', tensors)  # shapes without reading a lazy checkpoint
    desc, shapes, found = describe(module), param_shapes(module), _canonical(infos)
    rows = decoder_name_map(module)
    missing, mismatched, problems = [], [], []
    for hf, path, transform in rows:
        want = hf_shape(shapes[path], transform)
        if hf not in found:
            missing.append(hf)
            problems.append(f'checkpoint lacks tensor {hf!r} {want} that {desc} needs')
        elif tuple(infos[found[hf]].shape) != want:
            name, got = found[hf], tuple(infos[found[hf]].shape)
            mismatched.append((name, got, want))
            problems.append(f'checkpoint tensor {name!r} has shape {got} but {desc} '
                            f'expects {want}')
    mapped = {hf for hf, _, _ in rows}
    unexpected, ignored = [], []
    for key in sorted(found, key=_natural):
        if key in mapped:
            continue
        name = found[key]
        if key.endswith('rotary_emb.inv_freq') or (key == 'lm_head.weight'
                                                    and module.tie_embeddings):
            ignored.append(name)  # a buffer; a tied head duplicates the embedding
            continue
        unexpected.append(name)
        problems.append(f'checkpoint tensor {name!r} {tuple(infos[name].shape)} has no place '
                        f'in {desc}')
    return ImportReport(desc, tuple(missing), tuple(unexpected), tuple(mismatched),
                        tuple(ignored), tuple(problems))


def _natural(name: str) -> list:
    return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', name)]


def _leaves(tensors: Mapping[str, np.ndarray], module: Decoder) -> convert.Leaves:
    """One maker per Flax leaf; a scanned module's maker stacks that leaf of every layer."""
    shapes, found = param_shapes(module), _canonical(tensors)
    dtype = np.dtype(module.param_dtype)

    def one(hf: str, path: tuple[str, ...], transform: str) -> np.ndarray:
        value = np.asarray(tensors[found[hf]])
        if not files.is_float(value.dtype):
            raise CheckpointError(f'checkpoint tensor {found[hf]!r} has dtype {value.dtype}, '
                                  'not floating point')
        return to_flax(value.astype(np.float32), transform, shapes[path]).astype(dtype)

    makers: dict[tuple[str, ...], list] = {}
    for hf, path, transform in decoder_name_map(module):
        if module.scan_layers and path[0].startswith('layer_'):
            makers.setdefault(('layers', *path[1:]), []).append((hf, path, transform))
        else:
            makers[path] = [(hf, path, transform)]

    def make(rows, stacked):
        if stacked:
            return lambda: np.stack([one(*r) for r in rows])
        return lambda: one(*rows[0])
    return {path: make(rows, path[0] == 'layers') for path, rows in makers.items()}


def _check_tied_head(tensors: Mapping[str, Any], module: Decoder) -> None:
    found = _canonical(tensors)
    if module.tie_embeddings and 'lm_head.weight' in found and not np.array_equal(
            tensors[found['lm_head.weight']], tensors[found['embed_tokens.weight']]):
        raise CheckpointError('checkpoint tensor lm_head.weight differs from the embedding '
                              '(an untied output projection): set tie_embeddings=False')


def decoder_params_from_hf(tensors: Mapping[str, np.ndarray], module: Decoder,
                           place: Callable[[tuple[str, ...], np.ndarray], Any] | None = None
                           ) -> dict:
    """Flax ``params`` (numpy, ``module.param_dtype``) for ``module`` from HF tensors.

    Raises `CheckpointMismatchError` naming the first mismatch; a scanned module
    (``scan_layers``) gets its layers stacked under ``layers``. ``place(path, array)``, when
    given, receives each leaf as soon as it is made (e.g. to put it into its sharding).
    """
    check_decoder_tensors(tensors, module).raise_first(
        fix='build the module from its config.json (jaxdistill.hf.decoder.from_hf_config) or '
            'fix the module kwargs')
    _check_tied_head(tensors, module)
    return convert.build_params(_leaves(tensors, module), place)


def _unstacked(params: Mapping[str, Any]) -> dict[str, Any]:
    params = dict(nn.meta.unbox(params))
    if 'layers' in params:  # scanned: unstack
        stack = params.pop('layers')
        n = jax.tree.leaves(stack)[0].shape[0]
        for i in range(n):
            params[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], stack)
    return params


def module_of_params(params: Mapping[str, Any]) -> Decoder:
    """A `Decoder` with the switches the parameter tree shows (for `decoder_params_to_hf`)."""
    params = _unstacked(params)
    layers = sum(1 for k in params if re.fullmatch(r'layer_\d+', k))
    bias = 'query_bias' in params.get('layer_0', {}).get('attn', {})
    return Decoder(1, layers, 2, 1, 1, 1, tie_embeddings='lm_head' not in params, qkv_bias=bias)


def decoder_params_to_hf(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of `decoder_params_from_hf`: float32 tensors named as ``*ForCausalLM``'s
    (``model.`` prefix; ``lm_head.weight`` when the module has an untied head)."""
    params = _unstacked(params)
    out = {}
    for hf, path, transform in decoder_name_map(module_of_params(params)):
        node = params
        for key in path:
            node = node[key]
        name = hf if hf == 'lm_head.weight' else f'model.{hf}'
        out[name] = to_hf(np.asarray(node, np.float32), transform)
    return out


def _heads(m: Decoder) -> list[tuple[str, int, str]]:
    return [('num_heads', m.num_heads, 'num_attention_heads'),
            ('num_kv_heads', m.num_kv_heads or m.num_heads, 'num_key_value_heads')]


CONVERTER = convert.register(convert.Converter(
    'decoder', Decoder, check_decoder_tensors,
    lambda tensors, module: (_check_tied_head(tensors, module), _leaves(tensors, module))[1],
    decoder_params_to_hf, _heads, to_hf_config))
