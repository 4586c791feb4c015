"""KV-cached autoregressive sampling from a `Decoder`, compiled once per shape.

Prompts are **left-aligned**: row ``b`` of ``prompts [B, P]`` holds its
``prompt_lengths[b]`` tokens first, then padding (any value; it is ignored). One
``decode=True`` call prefills every prompt at once; then each row continues from its own
position (the cache's per-row ``index`` is set to ``prompt_lengths``), so rows of different
lengths are generated together without left padding or position offsets. Padding positions
of a short prompt were written into the cache by the prefill, but a row only attends to
positions before its current one, and each is overwritten by a generated token before it
is reached.

The result ``tokens [B, P + N]`` holds each prompt followed directly by its generated tokens
(row ``b``: positions ``prompt_lengths[b] .. prompt_lengths[b] + N - 1``), zeros elsewhere;
``mask`` marks the generated positions. With ``eos_id`` a row stops after emitting it (the
EOS token is kept and marked), and the loop ends once every row has stopped.

Sampling order follows Hugging Face: logits / temperature, then top-k, then top-p (nucleus:
the smallest set of most likely tokens whose probability reaches ``top_p``).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import ConfigError, DataError
from jaxdistill.models.decoder import Decoder, init_cache


def sample_logits(logits: jax.Array, rng: jax.Array, *, temperature: float = 1.0,
                  top_k: int = 0, top_p: float = 1.0, greedy: bool = False) -> jax.Array:
    """Draws one token per row of ``logits [..., V]``; ``greedy`` takes the argmax.

    ``top_k=0`` and ``top_p=1.0`` disable those filters (``top_k`` must be a Python int;
    ``temperature`` and ``top_p`` may be traced). Tokens tied with the k-th (or the
    nucleus's last) logit stay in the support, so the support may be slightly larger.
    """
    if greedy:
        return jnp.argmax(logits, axis=-1).astype(jnp.int32)
    z = logits.astype(jnp.float32) / temperature
    if top_k:
        kth = jax.lax.top_k(z, top_k)[0][..., -1:]
        z = jnp.where(z < kth, -jnp.inf, z)
    if not (isinstance(top_p, (int, float)) and top_p >= 1.0):
        ordered = jnp.sort(z, axis=-1)[..., ::-1]
        probs = jax.nn.softmax(ordered, axis=-1)
        before = jnp.cumsum(probs, axis=-1) - probs  # mass of strictly more likely tokens
        n_keep = jnp.sum(before < top_p, axis=-1, keepdims=True)  # >= 1: the top token
        threshold = jnp.take_along_axis(ordered, n_keep - 1, axis=-1)
        z = jnp.where(z < threshold, -jnp.inf, z)
    return jax.random.categorical(rng, z, axis=-1).astype(jnp.int32)


def _watermark_bias(logits, prev, watermark):
    from jaxdistill.audit import watermark as wm
    return wm.bias(logits, prev, watermark)


def _check(model: Any, prompts: Any, prompt_lengths: Any, max_new_tokens: int,
           temperature: float, top_k: int, top_p: float, greedy: bool) -> None:
    if not isinstance(model, Decoder):
        raise ConfigError(f'generate: model is a {type(model).__name__}; sampling needs a '
                          "jaxdistill Decoder (module 'decoder') with a KV cache")
    if len(prompts.shape) != 2:
        raise DataError(f'prompts shape {prompts.shape}: expected [batch, prompt_len]')
    total = prompts.shape[1] + max_new_tokens
    if max_new_tokens < 1 or total > model.max_len:
        raise ConfigError(f'max_new_tokens={max_new_tokens}: prompt length {prompts.shape[1]} '
                          f'+ max_new_tokens must be in ({prompts.shape[1]}, max_len='
                          f'{model.max_len}]; lower max_new_tokens or shorten the prompts')
    if not greedy and not temperature > 0:
        raise ConfigError(f'temperature={temperature} must be > 0 (or set greedy=True)')
    if not 0 <= top_k <= model.vocab_size:
        raise ConfigError(f'top_k={top_k} must be in [0, vocab_size={model.vocab_size}]')
    if not 0 < top_p <= 1:
        raise ConfigError(f'top_p={top_p} must be in (0, 1]')
    if not isinstance(prompt_lengths, jax.core.Tracer):
        lengths = np.asarray(prompt_lengths)
        if lengths.shape != prompts.shape[:1] or lengths.min() < 1 or \
                lengths.max() > prompts.shape[1]:
            raise DataError(f'prompt_lengths must be [batch] ints in [1, {prompts.shape[1]}], '
                            f'got {lengths.tolist()}')


def generate(model: Decoder, params: Any, prompts: jax.Array, prompt_lengths: jax.Array,
             max_new_tokens: int, rng: jax.Array, temperature: float = 1.0, top_k: int = 0,
             top_p: float = 1.0, greedy: bool = False, eos_id: int | None = None,
             watermark: tuple[int, float, float] | None = None
             ) -> tuple[jax.Array, jax.Array]:
    """Samples ``max_new_tokens`` after each left-aligned prompt; returns ``(tokens, mask)``.

    Args:
      model: a `jaxdistill.models.decoder.Decoder` (its ``max_len`` bounds ``P + N``).
      params: its parameters (boxed or not); no gradient flows through sampling.
      prompts: ``[B, P]`` int32, row ``b`` valid up to ``prompt_lengths[b]``.
      prompt_lengths: ``[B]`` ints in ``[1, P]``.
      max_new_tokens: ``N``, tokens generated per row (fewer if ``eos_id`` stops it).
      rng: a PRNG key; step ``n`` uses ``fold_in(rng, n)``.
      temperature, top_k, top_p, greedy: see :func:`sample_logits`.
      eos_id: a row stops after emitting this token.
      watermark: ``(key, gamma, delta)``: add ``delta`` to the logits of the green list of
        the previous token before sampling (`jaxdistill.audit.watermark`); None: off.

    Returns:
      ``tokens [B, P + N]`` int32 (prompt, then generated, zeros after) and ``mask
      [B, P + N]`` bool, True at generated positions.
    """
    _check(model, prompts, prompt_lengths, max_new_tokens, temperature, top_k, top_p, greedy)
    # temperature and top_p are traced: changing them does not recompile.
    return _generate(model, params, jnp.asarray(prompts, jnp.int32),
                     jnp.asarray(prompt_lengths, jnp.int32), rng,
                     jnp.float32(1.0 if greedy else temperature), jnp.float32(top_p),
                     max_new_tokens=max_new_tokens, top_k=int(top_k), nucleus=top_p < 1,
                     greedy=bool(greedy), eos_id=eos_id, watermark=watermark)


@functools.partial(jax.jit, static_argnames=('model', 'max_new_tokens', 'top_k', 'nucleus',
                                             'greedy', 'eos_id', 'watermark'))
def _generate(model, params, prompts, lengths, rng, temperature, top_p, *, max_new_tokens,
              top_k, nucleus, greedy, eos_id, watermark=None):
    params = jax.lax.stop_gradient(params)
    top_p = top_p if nucleus else 1.0
    batch, prompt_len = prompts.shape
    total = prompt_len + max_new_tokens
    rows = jnp.arange(batch)

    def forward(cache, tokens):
        logits, updated = model.apply({'params': params, 'cache': cache}, tokens, decode=True,
                                      mutable=['cache'])
        return logits, updated['cache']

    logits, cache = forward(init_cache(model, batch, total), prompts)
    next_logits = logits[rows, lengths - 1]
    cache = {**cache, 'index': lengths}  # each row continues right after its own prompt
    in_prompt = jnp.arange(prompt_len)[None, :] < lengths[:, None]
    tokens = jnp.zeros((batch, total), jnp.int32).at[:, :prompt_len].set(
        jnp.where(in_prompt, prompts, 0))
    mask = jnp.zeros((batch, total), bool)
    done = jnp.zeros((batch,), bool)

    def body(carry):
        n, tokens, mask, done, cache, next_logits = carry
        if watermark is not None:  # green list of each row's previous token
            next_logits = _watermark_bias(next_logits, tokens[rows, lengths + n - 1], watermark)
        tok = sample_logits(next_logits, jax.random.fold_in(rng, n), temperature=temperature,
                            top_k=top_k, top_p=top_p, greedy=greedy)
        tok = jnp.where(done, 0, tok)
        tokens = tokens.at[rows, lengths + n].set(tok)
        mask = mask.at[rows, lengths + n].set(~done)
        if eos_id is not None:
            done = done | (tok == eos_id)
        logits, cache = forward(cache, tok[:, None])
        return n + 1, tokens, mask, done, cache, logits[:, 0]

    def cond(carry):
        n, _, _, done, _, _ = carry
        return (n < max_new_tokens) & ~jnp.all(done)

    carry = (jnp.int32(0), tokens, mask, done, cache, next_logits)
    _, tokens, mask, _, _, _ = jax.lax.while_loop(cond, body, carry)
    return tokens, mask
