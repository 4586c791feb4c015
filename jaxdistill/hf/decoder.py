"""Llama-style Hugging Face checkpoints -> the Flax `Decoder`; GPT-2 is refused, with reasons.

`jaxdistill.models.decoder.Decoder` is Llama's architecture (pre-norm RMSNorm, rotary
positions in the rotate-half form HF's Llama uses, SwiGLU MLP, grouped-query attention, no
biases), so a ``LlamaForCausalLM`` / ``LlamaModel`` safetensors file maps onto it tensor by
tensor: `llama_name_map` lists every tensor with its transform (torch ``Linear`` weights
are ``(out, in)``; the decoder keeps query/key/value as ``(d_model, heads, head_dim)`` and
the output projection as ``(heads, head_dim, d_model)``).

GPT-2 does not map, and no renaming would make it: its blocks use LayerNorm with a bias
(``ln_1``/``ln_2``/``ln_f``) where the decoder has RMSNorm, a GELU MLP (``mlp.c_fc``,
``mlp.c_proj``) where it has SwiGLU (``gate``/``up``/``down``), learned absolute positions
(``wpe``) where it rotates queries and keys, and fused query/key/value projections with
biases (``attn.c_attn``). A GPT-2 file therefore fails with `GPT2_DIFFERENCES`, not with a
list of a hundred missing tensors.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.hf import CheckpointMismatchError, ImportReport
from jaxdistill.models.decoder import Decoder

# transforms from the HF tensor to the Flax parameter
COPY, DENSE, HEADS_IN, HEADS_OUT = 'copy', 'dense', 'heads_in', 'heads_out'
GPT2_DIFFERENCES = (
    'GPT-2 checkpoints cannot be loaded into the Llama-style Decoder: GPT-2 uses LayerNorm with '
    'a bias (ln_1, ln_2, ln_f) where Decoder has RMSNorm, a GELU MLP (mlp.c_fc, mlp.c_proj) '
    'where Decoder has SwiGLU (gate, up, down), learned absolute positions (wpe) where Decoder '
    'uses rotary positions, and fused query/key/value projections with biases (attn.c_attn); '
    "use a Llama-style checkpoint (config.json model_type 'llama') or your own GPT-2 module")
_GPT2_NAMES = re.compile(r'(^|\.)(wte|wpe)\.weight$|(^|\.)h\.\d+\.(attn\.c_attn|mlp\.c_fc)\.')


def llama_name_map(layers: int, tie_embeddings: bool) -> list[tuple[str, tuple[str, ...], str]]:
    """``(canonical HF name, Flax path, transform)`` for every Decoder parameter.

    Canonical names drop the ``model.`` prefix of ``LlamaForCausalLM`` files; ``lm_head``
    only exists for untied output projections.
    """
    rows = [('embed_tokens.weight', ('embedding',), COPY)]
    for i in range(layers):
        hf, fl = f'layers.{i}', f'layer_{i}'
        rows += [(f'{hf}.input_layernorm.weight', (fl, 'attn_norm', 'scale'), COPY),
                 (f'{hf}.self_attn.q_proj.weight', (fl, 'attn', 'query'), HEADS_IN),
                 (f'{hf}.self_attn.k_proj.weight', (fl, 'attn', 'key'), HEADS_IN),
                 (f'{hf}.self_attn.v_proj.weight', (fl, 'attn', 'value'), HEADS_IN),
                 (f'{hf}.self_attn.o_proj.weight', (fl, 'attn', 'out'), HEADS_OUT),
                 (f'{hf}.post_attention_layernorm.weight', (fl, 'mlp_norm', 'scale'), COPY),
                 (f'{hf}.mlp.gate_proj.weight', (fl, 'gate'), DENSE),
                 (f'{hf}.mlp.up_proj.weight', (fl, 'up'), DENSE),
                 (f'{hf}.mlp.down_proj.weight', (fl, 'down'), DENSE)]
    rows.append(('norm.weight', ('final_norm', 'scale'), COPY))
    if not tie_embeddings:
        rows.append(('lm_head.weight', ('lm_head',), DENSE))
    return rows


def hf_shape(flax_shape: tuple[int, ...], transform: str) -> tuple[int, ...]:
    """The shape the HF tensor has for a Flax parameter of ``flax_shape``."""
    if transform == DENSE:
        return flax_shape[::-1]
    if transform == HEADS_IN:  # (d, heads, head_dim) <- (heads * head_dim, d)
        return (flax_shape[1] * flax_shape[2], flax_shape[0])
    if transform == HEADS_OUT:  # (heads, head_dim, d) <- (d, heads * head_dim)
        return (flax_shape[2], flax_shape[0] * flax_shape[1])
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
    if transform in (DENSE, HEADS_IN, HEADS_OUT):
        value = value.T
    return np.ascontiguousarray(value)


def from_llama_config(config: Mapping[str, Any], **overrides: Any) -> Decoder:
    """A `Decoder` from a Hugging Face Llama ``config.json``; refuses what it cannot compute."""
    kind = config.get('model_type', 'llama')
    if kind == 'gpt2':
        raise ConfigError(GPT2_DIFFERENCES)
    if kind != 'llama':
        raise ConfigError(f"config.json model_type={kind!r}: Decoder loads model_type 'llama' "
                          'checkpoints (RMSNorm, RoPE, SwiGLU, no biases)')
    refused = {'hidden_act': ('silu', "SwiGLU with SiLU ('silu')"),
               'rope_scaling': (None, 'plain rotary positions (no rope_scaling)'),
               'attention_bias': (False, 'attention without biases'),
               'mlp_bias': (False, 'an MLP without biases')}
    for key, (want, what) in refused.items():
        if config.get(key, want) != want:
            raise ConfigError(f'config.json {key}={config[key]!r}: Decoder implements only '
                              f'{what}')
    try:
        d, heads = int(config['hidden_size']), int(config['num_attention_heads'])
        kwargs = dict(vocab_size=int(config['vocab_size']),
                      num_layers=int(config['num_hidden_layers']), d_model=d, num_heads=heads,
                      num_kv_heads=int(config.get('num_key_value_heads', heads)),
                      mlp_dim=int(config['intermediate_size']),
                      max_len=int(config.get('max_position_embeddings', 2048)),
                      tie_embeddings=bool(config.get('tie_word_embeddings', False)),
                      rope_base=float(config.get('rope_theta', 10000.0)),
                      norm_eps=float(config.get('rms_norm_eps', 1e-6)))
    except KeyError as e:
        raise ConfigError(f'config.json has no {e.args[0]!r}: is this a Llama config.json?'
                          ) from None
    if config.get('head_dim', d // heads) != d // heads:
        raise ConfigError(f"config.json head_dim={config['head_dim']} != hidden_size / "
                          f'num_attention_heads = {d // heads}: Decoder derives head_dim')
    kwargs.update(overrides)
    return Decoder(**kwargs)


def _canonical(tensors: Mapping[str, Any]) -> dict[str, tuple[str, Any]]:
    """canonical name -> (name in the file, tensor or shape holder): drops ``model.``."""
    return {name.removeprefix('model.'): (name, value) for name, value in tensors.items()}


def _describe(m: Decoder) -> str:
    return (f'Decoder(vocab_size={m.vocab_size}, num_layers={m.num_layers}, d_model='
            f'{m.d_model}, num_heads={m.num_heads}, num_kv_heads={m.num_kv_heads or m.num_heads}'
            f', mlp_dim={m.mlp_dim}, tie_embeddings={m.tie_embeddings})')


def param_shapes(module: Decoder) -> dict[tuple[str, ...], tuple[int, ...]]:
    """Parameter shapes of the *unrolled* module (a scanned stack is mapped per layer)."""
    unrolled = module.clone(scan_layers=False, remat=False)
    tokens = jnp.zeros((1, min(4, module.max_len)), jnp.int32)
    tree = nn.meta.unbox(jax.eval_shape(unrolled.init, jax.random.key(0), tokens)['params'])
    flat = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {tuple(k.key for k in path): tuple(v.shape) for path, v in flat}


def check_decoder_tensors(tensors: Mapping[str, Any], module: Decoder) -> ImportReport:
    """Compares a Llama checkpoint (tensors, or anything with ``.shape``) with ``module``.

    Raises `CheckpointError` with `GPT2_DIFFERENCES` for GPT-2 files; otherwise never raises.
    """
    if any(_GPT2_NAMES.search(name) for name in tensors):
        raise CheckpointError(GPT2_DIFFERENCES)
    desc, shapes, found = _describe(module), param_shapes(module), _canonical(tensors)
    rows = llama_name_map(module.num_layers, module.tie_embeddings)
    missing, mismatched, problems = [], [], []
    for hf, path, transform in rows:
        want = hf_shape(shapes[path], transform)
        if hf not in found:
            missing.append(hf)
            problems.append(f'checkpoint lacks tensor {hf!r} {want} that {desc} needs')
        elif tuple(found[hf][1].shape) != want:
            name, got = found[hf][0], tuple(found[hf][1].shape)
            mismatched.append((name, got, want))
            problems.append(f'checkpoint tensor {name!r} has shape {got} but {desc} '
                            f'expects {want}')
    mapped = {hf for hf, _, _ in rows}
    unexpected, ignored = [], []
    for key in sorted(found, key=_natural):
        if key in mapped:
            continue
        name, value = found[key]
        if key.endswith('rotary_emb.inv_freq') or (key == 'lm_head.weight'
                                                    and module.tie_embeddings):
            ignored.append(name)  # a buffer; a tied head duplicates the embedding
            continue
        unexpected.append(name)
        problems.append(f'checkpoint tensor {name!r} {tuple(value.shape)} has no place in '
                        f'{desc}')
    return ImportReport(desc, tuple(missing), tuple(unexpected), tuple(mismatched),
                        tuple(ignored), tuple(problems))


def _natural(name: str) -> list:
    return [(0, int(t), '') if t.isdigit() else (1, 0, t) for t in re.split(r'(\d+)', name)]


def decoder_params_from_hf(tensors: Mapping[str, np.ndarray], module: Decoder) -> dict:
    """Flax ``params`` (numpy, ``module.param_dtype``) for ``module`` from Llama tensors.

    Raises `CheckpointMismatchError` naming the first mismatch; a scanned module
    (``scan_layers``) gets its layers stacked under ``layers``.
    """
    report = check_decoder_tensors(tensors, module)
    if not report.ok:
        more = len(report.problems) - 1
        raise CheckpointMismatchError(
            report.problems[0] + (f' (+{more} more problem(s))' if more else '') +
            '; build the module from its config.json (jaxdistill.hf_decoder.from_llama_config)'
            ' or fix the module kwargs', report)
    shapes, found = param_shapes(module), _canonical(tensors)
    if module.tie_embeddings and 'lm_head.weight' in found and not np.array_equal(
            found['lm_head.weight'][1], found['embed_tokens.weight'][1]):
        raise CheckpointError('checkpoint tensor lm_head.weight differs from the embedding '
                              '(an untied output projection): set tie_embeddings=False')
    dtype = np.dtype(module.param_dtype)
    params: dict[str, Any] = {}
    for hf, path, transform in llama_name_map(module.num_layers, module.tie_embeddings):
        value = np.asarray(found[hf][1], np.float32)
        node = params
        for key in path[:-1]:
            node = node.setdefault(key, {})
        node[path[-1]] = to_flax(value, transform, shapes[path]).astype(dtype)
    if module.scan_layers:
        layers = [params.pop(f'layer_{i}') for i in range(module.num_layers)]
        params['layers'] = jax.tree.map(lambda *xs: np.stack(xs), *layers)
    return params


def decoder_params_to_hf(params: Mapping[str, Any]) -> dict[str, np.ndarray]:
    """Inverse of `decoder_params_from_hf`: float32 tensors named as ``LlamaForCausalLM``'s
    (``model.`` prefix; ``lm_head.weight`` when the module has an untied head)."""
    params = dict(nn.meta.unbox(params))
    if 'layers' in params:  # scanned: unstack
        stack = params.pop('layers')
        n = jax.tree.leaves(stack)[0].shape[0]
        for i in range(n):
            params[f'layer_{i}'] = jax.tree.map(lambda x, i=i: x[i], stack)
    layers = sum(1 for k in params if re.fullmatch(r'layer_\d+', k))
    out = {}
    for hf, path, transform in llama_name_map(layers, 'lm_head' not in params):
        node = params
        for key in path:
            node = node[key]
        name = hf if hf == 'lm_head.weight' else f'model.{hf}'
        out[name] = to_hf(np.asarray(node, np.float32), transform)
    return out
