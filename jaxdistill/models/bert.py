"""A BERT encoder (Devlin et al. 2019) laid out like Hugging Face's `BertModel`.

Built to load real checkpoints (`jaxdistill.hf`), so every numerical choice follows the
PyTorch original rather than Flax defaults: post-LN layers, exact (erf) GELU, LayerNorm
with ``eps=1e-12`` (the config's ``layer_norm_eps``) and two-pass variance, padding keys
masked with the dtype's minimum before the softmax. Parameter names mirror the HF tree
(``embeddings``, ``layer_{i}/attention/query`` ...) so the name map in `jaxdistill.hf`
reads as a transliteration.

The output is a dict: ``last_hidden_state`` (batch, length, hidden) and ``embedding``,
the sentence-transformers recipe (mask-aware mean pooling, then L2 normalisation). Use
``logits_key='embedding'`` (or ``'last_hidden_state'``) in the adapter. The pooling is a
parameter-free submodule, ``mean_pool``, so feature losses can tap the sentence embedding
by name (``{'student': 'mean_pool', 'teacher': 'mean_pool'}``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jaxdistill.errors import ConfigError, DataError

LN_EPS = 1e-12  # BERT's LayerNorm epsilon: Flax's default 1e-6 shifts outputs visibly


def _layer_norm(eps: float, name: str) -> nn.LayerNorm:
    # Two-pass variance: the fast E[x^2] - E[x]^2 form loses digits that parity needs.
    return nn.LayerNorm(epsilon=eps, use_fast_variance=False, name=name)


def _dense(features: int, name: str) -> nn.Dense:
    return nn.Dense(features, kernel_init=nn.initializers.normal(0.02), name=name)


class BertSelfAttention(nn.Module):
    """Multi-head self-attention with separate query/key/value/output projections."""

    hidden: int
    heads: int
    dropout_rate: float = 0.1

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        batch, length, _ = x.shape
        head_dim = self.hidden // self.heads

        def split(t):
            return t.reshape(batch, length, self.heads, head_dim)

        q = split(_dense(self.hidden, 'query')(x))
        k = split(_dense(self.hidden, 'key')(x))
        v = split(_dense(self.hidden, 'value')(x))
        scores = jnp.einsum('bqhd,bkhd->bhqk', q, k) / jnp.sqrt(jnp.asarray(head_dim, q.dtype))
        # Padding keys get the dtype's minimum (as HF does), not -inf: no NaN if a row is empty.
        scores = jnp.where(mask[:, None, None, :], scores, jnp.finfo(scores.dtype).min)
        probs = nn.softmax(scores, axis=-1)
        probs = nn.Dropout(self.dropout_rate)(probs, deterministic=not train)
        out = jnp.einsum('bhqk,bkhd->bqhd', probs, v).reshape(batch, length, self.hidden)
        return _dense(self.hidden, 'output')(out)


class BertLayer(nn.Module):
    """One post-LN transformer layer: x = LN(x + Attn(x)); x = LN(x + FFN(x))."""

    hidden: int
    heads: int
    intermediate: int
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = LN_EPS

    @nn.compact
    def __call__(self, x: jnp.ndarray, mask: jnp.ndarray, train: bool = False) -> jnp.ndarray:
        def drop(t):
            return nn.Dropout(self.dropout_rate)(t, deterministic=not train)

        eps = self.layer_norm_eps
        y = BertSelfAttention(self.hidden, self.heads, self.attention_dropout_rate,
                              name='attention')(x, mask, train)
        x = _layer_norm(eps, 'attention_norm')(x + drop(y))
        y = nn.gelu(_dense(self.intermediate, 'intermediate')(x), approximate=False)
        y = _dense(self.hidden, 'output')(y)
        return _layer_norm(eps, 'output_norm')(x + drop(y))


class BertEmbeddings(nn.Module):
    """word + absolute position + token type embeddings, then LayerNorm."""

    vocab_size: int
    hidden: int
    max_len: int
    type_vocab_size: int
    dropout_rate: float = 0.1
    layer_norm_eps: float = LN_EPS

    @nn.compact
    def __call__(self, input_ids: jnp.ndarray, token_type_ids: jnp.ndarray,
                 train: bool = False) -> jnp.ndarray:
        init = nn.initializers.normal(0.02)
        positions = jnp.arange(input_ids.shape[-1])[None, :]
        x = (nn.Embed(self.vocab_size, self.hidden, embedding_init=init,
                      name='word_embeddings')(input_ids)
             + nn.Embed(self.max_len, self.hidden, embedding_init=init,
                        name='position_embeddings')(positions)
             + nn.Embed(self.type_vocab_size, self.hidden, embedding_init=init,
                        name='token_type_embeddings')(token_type_ids))
        x = _layer_norm(self.layer_norm_eps, 'LayerNorm')(x)
        return nn.Dropout(self.dropout_rate)(x, deterministic=not train)


class BertEncoder(nn.Module):
    """BERT body + sentence embedding; defaults are all-MiniLM-L6-v2's shape.

    ``input_ids`` may also be the dict that `jaxdistill.hf.encode` returns, so one batch
    array-dict can flow through the adapter. Without an ``attention_mask`` the mask is
    ``input_ids != pad_token_id`` (HF assumes all ones), so padded batches stay correct when
    only ids are passed; set ``pad_token_id=None`` for HF's behaviour.
    """

    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_len: int = 512
    type_vocab_size: int = 2
    pad_token_id: int | None = 0
    dropout_rate: float = 0.1
    attention_dropout_rate: float = 0.1
    layer_norm_eps: float = LN_EPS

    @nn.compact
    def __call__(self, input_ids: Any, attention_mask: jnp.ndarray | None = None,
                 train: bool = False, *,
                 token_type_ids: jnp.ndarray | None = None) -> dict[str, jnp.ndarray]:
        if isinstance(input_ids, Mapping):
            attention_mask = input_ids.get('attention_mask', attention_mask)
            token_type_ids = input_ids.get('token_type_ids', token_type_ids)
            input_ids = input_ids['input_ids']
        if self.hidden % self.heads:
            raise ConfigError(f'BertEncoder hidden={self.hidden} is not divisible by '
                              f'heads={self.heads}: pick heads that divide hidden')
        if input_ids.shape[-1] > self.max_len:
            raise DataError(f'input_ids: sequence length {input_ids.shape[-1]} exceeds '
                            f'BertEncoder max_len={self.max_len}; truncate with '
                            'jaxdistill.hf.encode(..., max_len)')
        if attention_mask is None:
            attention_mask = (jnp.ones_like(input_ids) if self.pad_token_id is None
                              else input_ids != self.pad_token_id)
        mask = jnp.asarray(attention_mask).astype(bool)
        if token_type_ids is None:
            token_type_ids = jnp.zeros_like(input_ids)
        x = BertEmbeddings(self.vocab_size, self.hidden, self.max_len, self.type_vocab_size,
                           self.dropout_rate, self.layer_norm_eps,
                           name='embeddings')(input_ids, token_type_ids, train)
        for i in range(self.layers):
            x = BertLayer(self.hidden, self.heads, self.intermediate, self.dropout_rate,
                          self.attention_dropout_rate, self.layer_norm_eps,
                          name=f'layer_{i}')(x, mask, train)
        return {'last_hidden_state': x, 'embedding': MeanPool(name='mean_pool')(x, mask)}


class MeanPool(nn.Module):
    """`mean_pool_normalize` as a module: no parameters, but a name feature losses can tap."""

    @nn.compact
    def __call__(self, hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
        return mean_pool_normalize(hidden, mask)


def mean_pool_normalize(hidden: jnp.ndarray, mask: jnp.ndarray) -> jnp.ndarray:
    """Mean over non-padding tokens, then unit L2 norm (sentence-transformers' recipe).

    The clamps are sentence-transformers' (1e-9 tokens) and torch `normalize`'s (1e-12 norm),
    so an all-padding row gives zeros, not NaN.
    """
    m = mask.astype(hidden.dtype)[..., None]
    mean = jnp.sum(hidden * m, axis=-2) / jnp.maximum(jnp.sum(m, axis=-2), 1e-9)
    norm = jnp.linalg.norm(mean, axis=-1, keepdims=True)
    return mean / jnp.maximum(norm, 1e-12)


def from_hf_config(config: Mapping[str, Any], **overrides: Any) -> BertEncoder:
    """Builds a `BertEncoder` from a Hugging Face BERT ``config.json`` dict.

    Only what changes the computation is read; settings that would silently compute
    something else (another activation, relative positions) are refused instead.
    """
    def get(key: str, default: Any = None) -> Any:
        if key not in config and default is None:
            raise ConfigError(f'config.json has no {key!r}: is this a BERT config.json?')
        return config.get(key, default)

    act = get('hidden_act', 'gelu')
    if act != 'gelu':
        raise ConfigError(f"config.json hidden_act={act!r}: BertEncoder implements only 'gelu' "
                          '(exact erf GELU); use a checkpoint trained with it')
    pos = get('position_embedding_type', 'absolute')
    if pos != 'absolute':
        raise ConfigError(f'config.json position_embedding_type={pos!r}: BertEncoder has only '
                          "'absolute' position embeddings")
    kwargs = dict(
        vocab_size=int(get('vocab_size')),
        hidden=int(get('hidden_size')),
        layers=int(get('num_hidden_layers')),
        heads=int(get('num_attention_heads')),
        intermediate=int(get('intermediate_size')),
        max_len=int(get('max_position_embeddings', 512)),
        type_vocab_size=int(get('type_vocab_size', 2)),
        pad_token_id=config.get('pad_token_id', 0),
        dropout_rate=float(get('hidden_dropout_prob', 0.1)),
        attention_dropout_rate=float(get('attention_probs_dropout_prob', 0.1)),
        layer_norm_eps=float(get('layer_norm_eps', LN_EPS)),
    )
    kwargs.update(overrides)
    return BertEncoder(**kwargs)
