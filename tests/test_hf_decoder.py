"""jaxdistill/hf/decoder.py: Llama-style safetensors <-> the Flax Decoder; GPT-2 refused.

The parity reference is a float64 numpy forward written from Hugging Face's
``modeling_llama`` equations on the *HF-named* tensors, so a transpose or a head split
that round-trips but computes something else still fails.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('safetensors')
from safetensors.numpy import save_file  # noqa: E402

from jaxdistill import hf  # noqa: E402
from jaxdistill.errors import CheckpointError, ConfigError  # noqa: E402
from jaxdistill.hf import decoder as hf_decoder  # noqa: E402
from jaxdistill.models.decoder import Decoder  # noqa: E402

TINY = dict(vocab_size=50, num_layers=2, d_model=16, num_heads=4, num_kv_heads=2, mlp_dim=24,
            max_len=16, tie_embeddings=False, rope_base=500.0, norm_eps=1e-5)
LLAMA_CONFIG = dict(model_type='llama', vocab_size=50, num_hidden_layers=2, hidden_size=16,
                    num_attention_heads=4, num_key_value_heads=2, intermediate_size=24,
                    max_position_embeddings=16, tie_word_embeddings=False, rope_theta=500.0,
                    rms_norm_eps=1e-5, hidden_act='silu')


def random_llama(module: Decoder, seed: int = 0) -> dict[str, np.ndarray]:
    """HF-named float32 tensors of the module's shapes (no Flax init: slow on 2 cores)."""
    shapes = hf_decoder.param_shapes(module)
    rng = np.random.default_rng(seed)
    out = {}
    for name, path, transform in hf_decoder.llama_name_map(module.num_layers,
                                                           module.tie_embeddings):
        shape = hf_decoder.hf_shape(shapes[path], transform)
        scale = 1.0 if path[-1] == 'scale' else 0.3
        value = rng.normal(size=shape) * scale + (1.0 if path[-1] == 'scale' else 0.0)
        out[name if name == 'lm_head.weight' else f'model.{name}'] = value.astype(np.float32)
    return out


def np_llama(t: dict[str, np.ndarray], tokens: np.ndarray, c: dict) -> np.ndarray:
    """Logits of LlamaForCausalLM (float64), from HF's equations and tensor names."""
    w = {k.removeprefix('model.'): np.float64(v) for k, v in t.items()}
    h, kv, d = c['num_attention_heads'], c['num_key_value_heads'], c['hidden_size']
    hd, n = d // h, tokens.shape[1]

    def rms(x, g):
        return g * x / np.sqrt((x * x).mean(-1, keepdims=True) + c['rms_norm_eps'])

    inv = 1.0 / c['rope_theta'] ** (np.arange(0, hd, 2) / hd)
    ang = np.arange(n)[:, None] * inv[None, :]
    cos, sin = np.cos(np.r_['-1', ang, ang]), np.sin(np.r_['-1', ang, ang])

    def rotate(x):  # x [B, heads, T, hd]; HF's rotate_half
        half = np.concatenate([-x[..., hd // 2:], x[..., :hd // 2]], -1)
        return x * cos + half * sin

    x = w['embed_tokens.weight'][tokens]
    causal = np.tril(np.ones((n, n), bool))
    for i in range(c['num_hidden_layers']):
        p = f'layers.{i}.'
        y = rms(x, w[p + 'input_layernorm.weight'])

        def heads(name, count, y=y, p=p):
            return (y @ w[p + f'self_attn.{name}.weight'].T).reshape(
                *y.shape[:2], count, hd).transpose(0, 2, 1, 3)

        q, k, v = rotate(heads('q_proj', h)), rotate(heads('k_proj', kv)), heads('v_proj', kv)
        k, v = np.repeat(k, h // kv, axis=1), np.repeat(v, h // kv, axis=1)
        s = np.where(causal, q @ k.transpose(0, 1, 3, 2) / np.sqrt(hd), -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a = a / a.sum(-1, keepdims=True)
        o = (a @ v).transpose(0, 2, 1, 3).reshape(*x.shape[:2], d)
        x = x + o @ w[p + 'self_attn.o_proj.weight'].T
        y = rms(x, w[p + 'post_attention_layernorm.weight'])
        gate, up = y @ w[p + 'mlp.gate_proj.weight'].T, y @ w[p + 'mlp.up_proj.weight'].T
        x = x + (gate / (1 + np.exp(-gate)) * up) @ w[p + 'mlp.down_proj.weight'].T
    x = rms(x, w['norm.weight'])
    return x @ w.get('lm_head.weight', w['embed_tokens.weight']).T


@pytest.fixture(scope='module')
def tensors():
    return random_llama(Decoder(**TINY))


def test_from_llama_config_reads_every_field():
    module = hf_decoder.from_llama_config(LLAMA_CONFIG)
    assert module == Decoder(**TINY)
    assert hf_decoder.from_llama_config({**LLAMA_CONFIG, 'tie_word_embeddings': True}
                                        ).tie_embeddings


def test_logits_match_a_numpy_llama_forward(tensors):
    module = Decoder(**TINY)
    params = hf_decoder.decoder_params_from_hf(tensors, module)
    tokens = np.array([[1, 7, 3, 9, 2, 11, 4], [5, 5, 0, 8, 13, 1, 6]], np.int32)
    got = jax.jit(lambda p, t: module.apply({'params': p}, t))(params, tokens)
    want = np_llama(tensors, tokens, LLAMA_CONFIG)
    np.testing.assert_allclose(np.asarray(got), want, rtol=2e-4, atol=2e-4)


@pytest.mark.parametrize('scan', [False, True])
def test_round_trip_through_a_safetensors_file(tensors, tmp_path, scan):
    module = Decoder(**TINY, scan_layers=scan)
    params = hf_decoder.decoder_params_from_hf(tensors, module)
    if scan:
        assert params['layers']['attn']['query'].shape == (2, 16, 4, 4)
    back = hf_decoder.decoder_params_to_hf(params)
    assert set(back) == set(tensors)
    save_file(back, str(tmp_path / 'model.safetensors'))
    again = hf_decoder.decoder_params_from_hf(hf.load_safetensors(tmp_path), module)
    jax.tree.map(np.testing.assert_array_equal, again, params)
    for name, value in back.items():
        np.testing.assert_array_equal(value, tensors[name], err_msg=name)
    # The map covers every parameter of the module, each exactly once.
    shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    shapes = jax.tree.map(lambda s: s.shape, nn.meta.unbox(shapes['params']))
    assert jax.tree.map(np.shape, params) == shapes


def test_tied_embeddings_and_buffers(tensors):
    tied = Decoder(**{**TINY, 'tie_embeddings': True})
    same_head = {k: v for k, v in tensors.items() if k != 'lm_head.weight'}
    same_head['lm_head.weight'] = same_head['model.embed_tokens.weight']
    same_head['model.layers.0.self_attn.rotary_emb.inv_freq'] = np.zeros(2, np.float32)
    report = hf_decoder.check_decoder_tensors(same_head, tied)
    assert report.ok and set(report.ignored) == {
        'lm_head.weight', 'model.layers.0.self_attn.rotary_emb.inv_freq'}
    hf_decoder.decoder_params_from_hf(same_head, tied)
    with pytest.raises(CheckpointError, match='lm_head.weight differs from the embedding'):
        hf_decoder.decoder_params_from_hf(tensors, tied)  # an untied head into a tied module


@pytest.mark.parametrize('change, expected', [
    (dict(mlp_dim=32), "'model.layers.0.mlp.gate_proj.weight' has shape (24, 16) but Decoder"),
    (dict(num_layers=1), "'model.layers.1.input_layernorm.weight' (16,) has no place in"),
    (dict(num_kv_heads=4), "'model.layers.0.self_attn.k_proj.weight' has shape (8, 16)"),
    (dict(tie_embeddings=True, vocab_size=60), "'model.embed_tokens.weight' has shape (50, 16)"),
])
def test_mismatch_names_the_first_tensor(tensors, change, expected):
    with pytest.raises(hf.CheckpointMismatchError) as info:
        hf_decoder.decoder_params_from_hf(tensors, Decoder(**{**TINY, **change}))
    message = str(info.value)
    assert expected in message and '\n' not in message, message
    assert message.startswith(info.value.report.problems[0])


def test_biases_have_no_place(tensors):
    qwen_like = {**tensors, 'model.layers.0.self_attn.q_proj.bias': np.zeros(16, np.float32)}
    with pytest.raises(hf.CheckpointMismatchError,
                       match=r"'model.layers.0.self_attn.q_proj.bias' \(16,\) has no place"):
        hf_decoder.decoder_params_from_hf(qwen_like, Decoder(**TINY))


def test_gpt2_is_refused_naming_what_differs():
    gpt2 = {'wte.weight': np.zeros((50, 16), np.float32),
            'wpe.weight': np.zeros((16, 16), np.float32),
            'h.0.attn.c_attn.weight': np.zeros((16, 48), np.float32)}
    with pytest.raises(CheckpointError) as info:
        hf_decoder.check_decoder_tensors(gpt2, Decoder(**TINY))
    message = str(info.value)
    for part in ('LayerNorm', 'RMSNorm', 'GELU', 'SwiGLU', 'wpe', 'rotary', 'c_attn'):
        assert part in message, part
    with pytest.raises(ConfigError, match='GPT-2 checkpoints cannot be loaded'):
        hf_decoder.from_llama_config({'model_type': 'gpt2'})


@pytest.mark.parametrize('change, match', [
    (dict(hidden_act='gelu'), "hidden_act='gelu'"),
    (dict(rope_scaling={'type': 'yarn', 'factor': 2.0}), "rope_scaling type 'yarn'"),
    (dict(rope_parameters={'rope_type': 'dynamic', 'factor': 2.0}),
     "rope_scaling type 'dynamic' is not implemented"),
    (dict(attention_bias=True), 'attention_bias=True'),
    (dict(model_type='falcon'), r"model_type='falcon' is not supported: .*'gemma', 'llama', "
                                r"'mistral', 'qwen2'"),
    (dict(model_type='qwen2', use_sliding_window=True), 'use_sliding_window=True'),
    (dict(model_type='gemma', hidden_activation='relu'), "hidden_activation='relu'"),
])
def test_configs_it_cannot_compute_are_refused(change, match):
    with pytest.raises(ConfigError, match=match):
        hf_decoder.from_llama_config({**LLAMA_CONFIG, **change})
