"""jaxdistill/models/decoder.py: the decoder-only transformer, against a float64 reference."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill.errors import ConfigError, DataError
from jaxdistill.models import BUILTIN, modules
from jaxdistill.models.adapter import Model
from jaxdistill.models.decoder import Decoder, output_projection

CFG = dict(vocab_size=256, num_layers=2, d_model=32, num_heads=4, mlp_dim=64, max_len=64,
           num_kv_heads=2)
B, T = 2, 12


def random_params(model, seed=0):
    """Parameters of ``model`` filled by numpy (the structure and boxes of ``init``).

    Compiling a Flax ``init`` costs ~1 s per parameter here (threefry), so tests draw
    from numpy instead; norm scales are ``1 + noise`` so that the reference must apply them.
    """
    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 2), jnp.int32))
    rng = np.random.default_rng(seed)

    def fill(path, s):
        if 'scale' in jax.tree_util.keystr(path):
            return jnp.asarray(1 + 0.1 * rng.standard_normal(s.shape), s.dtype)
        return jnp.asarray(0.2 * rng.standard_normal(s.shape), s.dtype)

    return jax.tree_util.tree_map_with_path(fill, shapes['params'])


def make(**kw):
    model = Decoder(**{**CFG, **kw})
    tokens = jax.random.randint(jax.random.key(1), (B, T), 0, CFG['vocab_size'])
    return model, random_params(model), tokens


@functools.cache
def _jitted_apply(model, return_hidden):
    return jax.jit(functools.partial(model.apply, return_hidden=return_hidden))


def apply(model, params, tokens, return_hidden=False):
    """One compilation per (model, output kind), shared by every test."""
    return _jitted_apply(model, return_hidden)({'params': params}, tokens)


def reference_logits(params, tokens, num_heads, num_kv_heads, eps=1e-6, base=10000.0):
    """Float64 numpy forward written from the formulas (RMSNorm, RoPE, GQA, SwiGLU)."""
    p = jax.tree.map(lambda x: np.asarray(x, np.float64), nn.unbox(params))
    x = p['embedding'][np.asarray(tokens)]
    t = tokens.shape[1]
    head_dim = x.shape[-1] // num_heads
    half = head_dim // 2
    angles = np.arange(t)[:, None] * base ** (-np.arange(half) / half)
    cos, sin = np.cos(angles)[None, :, None], np.sin(angles)[None, :, None]

    def rms(v, scale):
        return v / np.sqrt(np.mean(v ** 2, -1, keepdims=True) + eps) * scale

    def rope(v):
        v1, v2 = v[..., :half], v[..., half:]
        return np.concatenate([v1 * cos - v2 * sin, v2 * cos + v1 * sin], -1)

    causal = np.tril(np.ones((t, t), bool))
    for i in range(len([k for k in p if k.startswith('layer_')])):
        lp = p[f'layer_{i}']
        h = rms(x, lp['attn_norm']['scale'])
        q = rope(np.einsum('btd,dhk->bthk', h, lp['attn']['query']))
        k = rope(np.einsum('btd,dhk->bthk', h, lp['attn']['key']))
        v = np.einsum('btd,dhk->bthk', h, lp['attn']['value'])
        group = num_heads // num_kv_heads  # query head j reads key/value head j // group
        k, v = np.repeat(k, group, axis=2), np.repeat(v, group, axis=2)
        s = np.einsum('bthd,bshd->bhts', q, k) / np.sqrt(head_dim)
        s = np.where(causal, s, -np.inf)
        a = np.exp(s - s.max(-1, keepdims=True))
        a /= a.sum(-1, keepdims=True)
        x = x + np.einsum('bthd,hdk->btk', np.einsum('bhts,bshd->bthd', a, v), lp['attn']['out'])
        h = rms(x, lp['mlp_norm']['scale'])
        g = h @ lp['gate']
        x = x + (g / (1 + np.exp(-g)) * (h @ lp['up'])) @ lp['down']
    w = p['lm_head'] if 'lm_head' in p else p['embedding'].T
    return rms(x, p['final_norm']['scale']) @ w


@pytest.mark.parametrize('kw', [dict(), dict(num_kv_heads=1, tie_embeddings=False)])
def test_matches_float64_reference(kw):
    model, params, tokens = make(**kw)
    logits = apply(model, params, tokens)
    assert logits.shape == (B, T, CFG['vocab_size']) and logits.dtype == jnp.float32
    ref = reference_logits(params, tokens, model.num_heads, model.num_kv_heads)
    np.testing.assert_allclose(logits, ref, rtol=1e-4, atol=1e-4)


def test_causal():
    model, params, tokens = make()
    changed = tokens.at[:, 5].set((tokens[:, 5] + 1) % CFG['vocab_size'])
    a = apply(model, params, tokens)
    b = apply(model, params, changed)
    np.testing.assert_array_equal(a[:, :5], b[:, :5])
    assert np.all(np.abs(a[:, 5:] - b[:, 5:]).max(axis=-1) > 1e-4)


def test_scan_equals_unrolled():
    model, params, tokens = make()
    scanned = Decoder(**CFG, scan_layers=True)
    p = nn.unbox(params)
    layers = [p.pop(f'layer_{i}') for i in range(CFG['num_layers'])]
    p['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *layers)
    init_shapes = jax.tree.map(jnp.shape, nn.unbox(
        jax.eval_shape(scanned.init, jax.random.key(0), tokens)['params']))
    assert jax.tree.map(jnp.shape, p) == init_shapes
    np.testing.assert_allclose(apply(scanned, p, tokens),
                               apply(model, params, tokens), atol=1e-5)


def test_remat_equals_plain_values_and_gradients():
    model, params, tokens = make()
    remat = Decoder(**CFG, remat=True)

    def loss(m, p):
        return jnp.mean(jax.nn.log_softmax(m.apply({'params': p}, tokens))[..., 0])

    plain_l, plain_g = jax.jit(jax.value_and_grad(lambda p: loss(model, p)))(params)
    remat_l, remat_g = jax.jit(jax.value_and_grad(lambda p: loss(remat, p)))(params)
    np.testing.assert_allclose(remat_l, plain_l, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), nn.unbox(remat_g),
                 nn.unbox(plain_g))


def test_bf16_compute_keeps_fp32_params_and_logits():
    model, params, tokens = make()
    bf16 = Decoder(**CFG, dtype=jnp.bfloat16)
    params16 = jax.eval_shape(bf16.init, jax.random.key(0), tokens)['params']
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(params16)))
    out = apply(bf16, params, tokens, return_hidden=True)
    assert out['logits'].dtype == jnp.float32 and out['hidden'].dtype == jnp.bfloat16
    full = apply(model, params, tokens)
    # bf16 keeps ~3 significant digits: logits of std ~1 agree to a few hundredths.
    assert float(jnp.max(jnp.abs(out['logits'] - full))) < 0.1


def test_logical_axis_names():
    for scan in (False, True):
        model = Decoder(**CFG, scan_layers=scan, tie_embeddings=False)
        params = jax.eval_shape(model.init, jax.random.key(0),
                                jnp.zeros((1, 4), jnp.int32))['params']
        names = jax.tree.map(lambda x: x.names, params,
                             is_leaf=lambda x: isinstance(x, nn.LogicallyPartitioned))
        layer = names['layers'] if scan else names['layer_0']
        lead = ('layers',) if scan else ()
        assert names['embedding'] == ('vocab', 'embed')
        assert names['lm_head'] == ('embed', 'vocab')
        assert layer['attn']['query'] == lead + ('embed', 'heads', 'kv')
        assert layer['attn']['out'] == lead + ('heads', 'kv', 'embed')
        assert layer['gate'] == lead + ('embed', 'mlp') and layer['down'] == lead + ('mlp', 'embed')
        assert layer['mlp_norm']['scale'] == lead + ('embed',)
        for leaf, axes in zip(jax.tree.leaves(nn.unbox(params)), jax.tree.leaves(
                names, is_leaf=lambda x: isinstance(x, tuple))):
            assert leaf.ndim == len(axes)


@pytest.mark.parametrize('tie', [True, False])
def test_hidden_times_projection_is_logits(tie):
    model, params, tokens = make(tie_embeddings=tie)
    out = apply(model, params, tokens, return_hidden=True)
    w = output_projection(params)
    assert w.shape == (CFG['d_model'], CFG['vocab_size'])
    np.testing.assert_allclose(out['hidden'] @ w, out['logits'], atol=1e-5)
    assert ('lm_head' in params) == (not tie)


def test_bad_shapes_are_one_line_errors():
    tokens = jnp.zeros((1, 4), jnp.int32)
    with pytest.raises(ConfigError, match='num_kv_heads=3'):
        Decoder(**{**CFG, 'num_kv_heads': 3}).init(jax.random.key(0), tokens)
    with pytest.raises(ConfigError, match='d_model=30'):
        Decoder(**{**CFG, 'd_model': 30}).init(jax.random.key(0), tokens)
    with pytest.raises(DataError, match='max_len=64'):
        Decoder(**CFG).init(jax.random.key(0), jnp.zeros((1, 65), jnp.int32))


def test_builtin_init_through_the_adapter():
    """The one real ``init`` of this file: fp32 parameters, logits of about unit scale."""
    assert BUILTIN['decoder'] is Decoder
    module = modules.resolve('decoder', CFG, key='student.module')
    model = Model(module, name='student')
    tokens = jax.random.randint(jax.random.key(1), (2, 8), 0, CFG['vocab_size'])
    params, state = jax.jit(model.init)(jax.random.key(0), tokens)
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(nn.unbox(params)))
    logits, new_state, _ = jax.jit(functools.partial(model.apply, train=True))(params, state,
                                                                               tokens)
    assert logits.shape == (2, 8, CFG['vocab_size']) and state == {} and new_state == {}
    assert 0.3 < float(jnp.std(logits)) < 3.0  # init scales: not collapsed, not exploding
