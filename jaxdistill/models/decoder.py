"""A decoder-only transformer (Llama-style) for language-model distillation.

Pre-norm layers ``x += Attn(RMSNorm(x)); x += SwiGLU(RMSNorm(x))``, rotary position
embeddings (RoPE, rotate-half form), causal multi-head attention with optional grouped-query
attention (``num_kv_heads`` key/value heads shared by ``num_heads / num_kv_heads`` query
heads), a final RMSNorm and a tied (embedding transpose) or untied output projection. No
biases and no dropout: ``train`` is accepted for the adapter interface and changes nothing.

Parameters are stored in ``param_dtype`` (float32); matmuls run in ``dtype`` (float32 or
bfloat16) while softmax, RoPE and the logits are float32, so bf16 students stay stable.

**Logical axis names** (map them to mesh axes with ``nn.logical_to_mesh_sharding`` and a rule
list, as flax's lm1b example does). Parameters are boxed with ``nn.with_logical_partitioning``
(``nn.unbox`` gives plain arrays):

=========================  =================================
``embedding``              ``('vocab', 'embed')``
``lm_head`` (untied)       ``('embed', 'vocab')``
``query``                  ``('embed', 'heads', 'kv')``
``key`` / ``value``        ``('embed', 'heads', 'kv')`` (kv heads)
``*_bias`` (``qkv_bias``)  ``('heads', 'kv')``
``out``                    ``('heads', 'kv', 'embed')``
``gate`` / ``up``          ``('embed', 'mlp')``
``down``                   ``('mlp', 'embed')``
norm ``scale``             ``('embed',)``
=========================  =================================

With ``scan_layers`` every layer parameter gains a leading ``'layers'`` axis (the stack lives
under ``layers``; unrolled layers are ``layer_0`` ... with the same sub-tree). Activations are
constrained to ``('batch', 'length', 'embed')`` (residual stream), ``('batch', 'length',
'heads', 'kv')`` (queries), ``('batch', 'length', 'mlp')`` and ``('batch', 'length',
'vocab')`` (logits); outside a mesh with rules these constraints are no-ops.

**Decoding** (``decode=True``) uses the ``'cache'`` collection: ``index`` ``[B]`` int32 (the
next position of each row) and per layer ``cached_key`` / ``cached_value`` ``[B, S, kv heads,
head_dim]``, where ``S`` is the length of the tokens passed when the cache was created
(:func:`init_cache`). A call with ``T`` tokens writes them at ``index .. index + T - 1`` of each
row and attends causally to everything before, so a prompt is prefilled in one call and
rows may sit at different positions (set ``index`` per row; see `jaxdistill.models.sampling`).
Keeping ``index + T <= S`` is the caller's job: ``dynamic_update_slice`` would clamp, not
fail. Positions are rotary only, so ``max_len`` is a bound checked on inputs and caches,
not a table of learned embeddings.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from jaxdistill.errors import ConfigError, DataError

Dtype = Any


def _param(module: nn.Module, name: str, shape: tuple[int, ...], names: tuple[str, ...],
           init: Any, dtype: Dtype) -> jax.Array:
    return module.param(name, nn.with_logical_partitioning(init, names), shape, dtype)


def _fan_in(fan_in: int):
    return nn.initializers.normal(stddev=fan_in ** -0.5)


def rope_frequencies(head_dim: int, base: float = 10000.0,
                     scaling: tuple[tuple[str, Any], ...] = ()) -> jax.Array:
    """The ``head_dim / 2`` rotary inverse frequencies, with Hugging Face's ``rope_scaling``
    (``linear``: divided by ``factor``; ``llama3``: Llama 3.1's per-wavelength blend)."""
    half = head_dim // 2
    inv_freq = base ** (-jnp.arange(half, dtype=jnp.float32) / half)
    spec = dict(scaling)
    kind = spec.get('rope_type', spec.get('type', 'default'))
    if kind == 'linear':
        inv_freq = inv_freq / spec['factor']
    elif kind == 'llama3':
        factor, old = spec['factor'], spec['original_max_position_embeddings']
        low, high = spec['low_freq_factor'], spec['high_freq_factor']
        wavelen = 2 * jnp.pi / inv_freq
        scaled = jnp.where(wavelen > old / low, inv_freq / factor, inv_freq)
        smooth = (old / wavelen - low) / (high - low)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= old / high) & (wavelen <= old / low)
        inv_freq = jnp.where(medium, smoothed, scaled)
    elif kind != 'default':
        raise ConfigError(f"rope_scaling type {kind!r} is not implemented (Decoder implements "
                          f"{list(ROPE_TYPES)})")
    return inv_freq


ROPE_TYPES = ('default', 'linear', 'llama3')


def rope(x: jax.Array, positions: jax.Array, base: float = 10000.0,
         scaling: tuple[tuple[str, Any], ...] = ()) -> jax.Array:
    """Rotates ``x [B, T, H, D]`` by its positions ``[B, T]`` (rotate-half, as Llama/NeoX)."""
    inv_freq = rope_frequencies(x.shape[-1], base, scaling)
    angles = positions.astype(jnp.float32)[:, :, None, None] * inv_freq
    sin, cos = jnp.sin(angles), jnp.cos(angles)
    x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
    out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return out.astype(x.dtype)


ACTIVATIONS = {'silu': nn.silu, 'gelu_tanh': lambda x: nn.gelu(x, approximate=True),
               'gelu': lambda x: nn.gelu(x, approximate=False)}


class RMSNorm(nn.Module):
    """RMSNorm with Gemma's ``(1 + scale)`` (``plus_one``; the scale then starts at 0)."""

    eps: float
    plus_one: bool
    dtype: Dtype
    param_dtype: Dtype

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        init = nn.initializers.zeros if self.plus_one else nn.initializers.ones
        scale = _param(self, 'scale', (x.shape[-1],), ('embed',), init, self.param_dtype)
        x32 = x.astype(jnp.float32)
        y = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
        return (y * (1.0 + scale.astype(jnp.float32))).astype(self.dtype)


def _norm(eps: float, plus_one: bool, dtype: Dtype, param_dtype: Dtype, name: str):
    if plus_one:
        return RMSNorm(eps, True, dtype, param_dtype, name=name)
    init = nn.with_logical_partitioning(nn.initializers.ones, ('embed',))
    return nn.RMSNorm(eps, dtype=dtype, param_dtype=param_dtype, scale_init=init, name=name)


class Attention(nn.Module):
    """Causal (grouped-query) self-attention with RoPE and an optional KV cache."""

    num_heads: int
    num_kv_heads: int
    head_dim: int
    dtype: Dtype
    param_dtype: Dtype
    decode: bool
    rope_base: float
    qkv_bias: bool = False
    sliding_window: int = 0
    rope_scaling: tuple[tuple[str, Any], ...] = ()

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> jax.Array:
        b, t, d = x.shape
        h, k, hd = self.num_heads, self.num_kv_heads, self.head_dim

        def proj(name, heads):
            w = _param(self, name, (d, heads, hd), ('embed', 'heads', 'kv'), _fan_in(d),
                       self.param_dtype)
            y = jnp.einsum('btd,dhk->bthk', x, w.astype(self.dtype))
            if self.qkv_bias:
                bias = _param(self, f'{name}_bias', (heads, hd), ('heads', 'kv'),
                              nn.initializers.zeros, self.param_dtype)
                y = y + bias.astype(self.dtype)
            return y

        q = rope(proj('query', h), positions, self.rope_base, self.rope_scaling)
        q = nn.with_logical_constraint(q, ('batch', 'length', 'heads', 'kv'))
        key = rope(proj('key', k), positions, self.rope_base, self.rope_scaling)
        value = proj('value', k)
        key_pos = jnp.broadcast_to(jnp.arange(t), (b, t))
        if self.decode:
            key, value, key_pos = self._update_cache(key, value, positions)
        q = q.reshape(b, t, k, h // k, hd)
        scores = jnp.einsum('btkgd,bskd->bkgts', q, key, preferred_element_type=jnp.float32)
        scores = scores * hd ** -0.5
        allowed = key_pos[:, None, :] <= positions[:, :, None]  # [B, T, S]: causal
        if self.sliding_window:  # Mistral: the last `sliding_window` positions, self included
            allowed &= key_pos[:, None, :] > positions[:, :, None] - self.sliding_window
        scores = jnp.where(allowed[:, None, None], scores, jnp.finfo(jnp.float32).min)
        probs = jax.nn.softmax(scores, axis=-1).astype(self.dtype)
        out = jnp.einsum('bkgts,bskd->btkgd', probs, value).reshape(b, t, h, hd)
        w_out = _param(self, 'out', (h, hd, d), ('heads', 'kv', 'embed'), _fan_in(h * hd),
                       self.param_dtype)
        return jnp.einsum('bthk,hkd->btd', out, w_out.astype(self.dtype))

    def _update_cache(self, key: jax.Array, value: jax.Array, positions: jax.Array):
        """Writes this call's keys/values at ``positions`` and returns the whole cache.

        On the call that creates the cache (``init`` with ``decode=True``) nothing is read:
        the cache is sized by that call's tokens and attention runs on them alone.
        """
        initialized = self.has_variable('cache', 'cached_key')
        cached_key = self.variable('cache', 'cached_key', jnp.zeros, key.shape, key.dtype)
        cached_value = self.variable('cache', 'cached_value', jnp.zeros, value.shape,
                                     value.dtype)
        if not initialized:
            return key, value, positions
        write = jax.vmap(lambda c, u, i: jax.lax.dynamic_update_slice(c, u, (i, 0, 0)))
        start = positions[:, 0]
        cached_key.value = write(cached_key.value, key.astype(cached_key.value.dtype), start)
        cached_value.value = write(cached_value.value, value.astype(cached_value.value.dtype),
                                   start)
        b, s = cached_key.value.shape[:2]
        return cached_key.value, cached_value.value, jnp.broadcast_to(jnp.arange(s), (b, s))


class DecoderLayer(nn.Module):
    """One pre-norm block; returns ``(x, None)`` so `nn.scan` can stack it."""

    num_heads: int
    num_kv_heads: int
    mlp_dim: int
    dtype: Dtype
    param_dtype: Dtype
    decode: bool
    rope_base: float
    norm_eps: float
    head_dim: int = 0  # 0: d_model // num_heads
    qkv_bias: bool = False
    norm_plus_one: bool = False
    activation: str = 'silu'
    sliding_window: int = 0
    rope_scaling: tuple[tuple[str, Any], ...] = ()

    def _norm(self, name: str) -> nn.Module:
        return _norm(self.norm_eps, self.norm_plus_one, self.dtype, self.param_dtype, name)

    @nn.compact
    def __call__(self, x: jax.Array, positions: jax.Array) -> tuple[jax.Array, None]:
        d = x.shape[-1]
        attn = Attention(self.num_heads, self.num_kv_heads, self.head_dim or d // self.num_heads,
                         self.dtype, self.param_dtype, self.decode, self.rope_base,
                         self.qkv_bias, self.sliding_window, self.rope_scaling, name='attn')
        x = x + attn(self._norm('attn_norm')(x), positions)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        y = self._norm('mlp_norm')(x)

        def kernel(name, shape, names):
            return _param(self, name, shape, names, _fan_in(shape[0]),
                          self.param_dtype).astype(self.dtype)

        gate = y @ kernel('gate', (d, self.mlp_dim), ('embed', 'mlp'))
        up = y @ kernel('up', (d, self.mlp_dim), ('embed', 'mlp'))
        hidden = ACTIVATIONS[self.activation](gate) * up
        hidden = nn.with_logical_constraint(hidden, ('batch', 'length', 'mlp'))
        x = x + hidden @ kernel('down', (self.mlp_dim, d), ('mlp', 'embed'))
        return nn.with_logical_constraint(x, ('batch', 'length', 'embed')), None


class Decoder(nn.Module):
    """Decoder-only transformer language model; ``tokens [B, T] -> logits [B, T, V]`` (fp32).

    ``return_hidden=True`` returns ``{'logits', 'hidden'}`` with the final normed hidden state
    ``[B, T, d_model]``, so token losses can recompute logits chunk by chunk from
    ``hidden @ output_projection(params)`` (`jaxdistill.losses.token.chunked_kd_from_hidden`).
    """

    vocab_size: int
    num_layers: int
    d_model: int
    num_heads: int
    mlp_dim: int
    max_len: int
    num_kv_heads: int | None = None
    dtype: Dtype = jnp.float32
    param_dtype: Dtype = jnp.float32
    scan_layers: bool = False
    remat: bool = False
    tie_embeddings: bool = True
    rope_base: float = 10000.0
    norm_eps: float = 1e-6
    # Hugging Face families (jaxdistill.hf builds these from config.json): an explicit
    # head_dim (0: d_model // num_heads; Gemma), q/k/v biases (Qwen2), RMSNorm scaled by
    # (1 + w) and embeddings by sqrt(d_model) (Gemma), the MLP's gate activation ('silu',
    # 'gelu_tanh' for Gemma's GeGLU, 'gelu'), a sliding attention window (Mistral; 0: none)
    # and rope_scaling as (key, value) pairs of HF's dict ('linear', 'llama3').
    head_dim: int = 0
    qkv_bias: bool = False
    norm_plus_one: bool = False
    scale_embeddings: bool = False
    activation: str = 'silu'
    sliding_window: int = 0
    rope_scaling: tuple[tuple[str, Any], ...] = ()

    def _check(self, tokens: jax.Array) -> int:
        kv = self.num_kv_heads or self.num_heads
        if self.head_dim:
            if self.head_dim % 2:
                raise ConfigError(f'Decoder head_dim={self.head_dim} must be even (RoPE '
                                  'rotates pairs)')
        elif self.d_model % self.num_heads or (self.d_model // self.num_heads) % 2:
            raise ConfigError(f'Decoder d_model={self.d_model} must split into num_heads='
                              f'{self.num_heads} heads of even size (RoPE rotates pairs)')
        if self.activation not in ACTIVATIONS:
            raise ConfigError(f'Decoder activation={self.activation!r} is not one of '
                              f'{list(ACTIVATIONS)}')
        rope_frequencies(2, self.rope_base, self.rope_scaling)  # an unknown type fails here
        if self.num_heads % kv:
            raise ConfigError(f'Decoder num_kv_heads={kv} must divide num_heads='
                              f'{self.num_heads}: each key/value head serves a query group')
        if tokens.ndim != 2 or tokens.shape[1] > self.max_len:
            raise DataError(f'tokens {tokens.shape}: expected [batch, length] with length <= '
                            f'Decoder max_len={self.max_len}; shorten the sequences')
        return kv

    @nn.compact
    def __call__(self, tokens: jax.Array, train: bool = False, *, decode: bool = False,
                 return_hidden: bool = False) -> jax.Array | dict[str, jax.Array]:
        del train  # no dropout: the argument exists for the adapter's interface
        kv = self._check(tokens)
        b, t = tokens.shape
        embedding = _param(self, 'embedding', (self.vocab_size, self.d_model),
                           ('vocab', 'embed'), _fan_in(self.d_model), self.param_dtype)
        x = jnp.take(embedding, tokens, axis=0).astype(self.dtype)
        if self.scale_embeddings:  # Gemma: by sqrt(d_model), rounded to the compute dtype
            x = x * jnp.asarray(self.d_model ** 0.5, self.dtype)
        x = nn.with_logical_constraint(x, ('batch', 'length', 'embed'))
        positions = jnp.broadcast_to(jnp.arange(t, dtype=jnp.int32), (b, t))
        if decode:
            initialized = self.has_variable('cache', 'index')
            index = self.variable('cache', 'index', jnp.zeros, (b,), jnp.int32)
            if initialized:
                positions = positions + index.value[:, None]
                index.value = index.value + t
        x = self._layers(x, positions, kv, decode)
        hidden = _norm(self.norm_eps, self.norm_plus_one, self.dtype, self.param_dtype,
                       'final_norm')(x)
        if self.tie_embeddings:
            w = embedding.T
        else:
            w = _param(self, 'lm_head', (self.d_model, self.vocab_size), ('embed', 'vocab'),
                       _fan_in(self.d_model), self.param_dtype)
        logits = jnp.einsum('btd,dv->btv', hidden, w.astype(self.dtype),
                            preferred_element_type=jnp.float32)
        logits = nn.with_logical_constraint(logits, ('batch', 'length', 'vocab'))
        return {'logits': logits, 'hidden': hidden} if return_hidden else logits

    def _layers(self, x: jax.Array, positions: jax.Array, kv: int, decode: bool) -> jax.Array:
        layer = DecoderLayer
        if self.remat:
            # Save nothing inside a layer: the backward pass recomputes it (memory ~ 1 layer).
            layer = nn.remat(layer, policy=jax.checkpoint_policies.nothing_saveable,
                             prevent_cse=not self.scan_layers)
        kwargs = dict(num_heads=self.num_heads, num_kv_heads=kv, mlp_dim=self.mlp_dim,
                      dtype=self.dtype, param_dtype=self.param_dtype, decode=decode,
                      rope_base=self.rope_base, norm_eps=self.norm_eps, head_dim=self.head_dim,
                      qkv_bias=self.qkv_bias, norm_plus_one=self.norm_plus_one,
                      activation=self.activation, sliding_window=self.sliding_window,
                      rope_scaling=self.rope_scaling)
        if self.scan_layers:
            stack = nn.scan(layer, variable_axes={'params': 0, 'cache': 0},
                            split_rngs={'params': True}, in_axes=(nn.broadcast,),
                            length=self.num_layers,
                            metadata_params={nn.PARTITION_NAME: 'layers'})
            x, _ = stack(**kwargs, name='layers')(x, positions)
            return x
        for i in range(self.num_layers):
            x, _ = layer(**kwargs, name=f'layer_{i}')(x, positions)
        return x


def output_projection(params: Any) -> jax.Array:
    """The ``[d_model, vocab]`` matrix with ``logits = hidden @ W`` (tied: embedding.T)."""
    params = nn.unbox(params)
    if 'lm_head' in params:
        return params['lm_head']
    return params['embedding'].T


def init_cache(model: Decoder, batch: int, length: int) -> dict[str, Any]:
    """An all-zero ``'cache'`` collection for ``batch`` rows of up to ``length`` positions.

    Shapes come from ``jax.eval_shape`` of a ``decode=True`` init, so no parameters are
    computed; every row starts at position 0.
    """
    if length > model.max_len:
        raise ConfigError(f'cache length {length} exceeds the model max_len={model.max_len}')

    def create():
        tokens = jnp.zeros((batch, length), jnp.int32)
        return model.init(jax.random.key(0), tokens, decode=True)['cache']

    shapes = jax.eval_shape(create)
    return jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
