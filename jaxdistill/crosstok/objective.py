"""The objective's cross-tokenizer terms (``uld``, ``aligned_kl``, ``byte_kl``) from a
`CrossTeacher`.

The teacher arrives as its logits on its own tokens (``online``: the step ran it on
``CrossTeacher.inputs``) or as its cached top-k per teacher token (``cached``: widened by
`dense_logprobs`, with the exact log-probability of each actual teacher token stored beside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdistill.crosstok import bytes as xbytes
from jaxdistill.crosstok import losses as xl
from jaxdistill.crosstok.losses import CrossTeacher, CrossVocab
from jaxdistill.errors import ConfigError


def teacher_logprobs(teacher: CrossTeacher, vocab: CrossVocab) -> tuple[jax.Array, jax.Array]:
    """``([B, U, V_t] log-probabilities, [B, U] log-probability of each teacher target)``."""
    from jaxdistill.losses.sparse import dense_logprobs

    if teacher.logits is not None:
        logp = jax.nn.log_softmax(teacher.logits.astype(jnp.float32), axis=-1)
    else:
        logp = dense_logprobs(teacher.sparse, vocab.teacher_vocab)
    if teacher.target_logprobs is not None:
        target = teacher.target_logprobs.astype(jnp.float32)
    else:
        target = jnp.take_along_axis(logp, teacher.targets[..., None].astype(jnp.int32),
                                     axis=-1)[..., 0]
    return jax.lax.stop_gradient(logp), jax.lax.stop_gradient(target)


def _alignment(teacher: CrossTeacher, mask: jax.Array | None):
    a = teacher.alignment
    if mask is None:
        return a
    # rows an evaluation pads with are masked out of every part
    return a._replace(aligned=a.aligned & mask, same=a.same & mask,
                      span_mask=a.span_mask & jnp.any(mask, axis=-1, keepdims=True),
                      byte=None if a.byte is None else a.byte & mask)


def _part_masks(name: str, a) -> dict[str, jax.Array]:
    """The positions (or spans) each part of term ``name`` averages over."""
    if name == 'uld':
        return {'total': a.aligned}
    if name == 'byte_kl':
        return {'total': a.byte}
    return {'span': a.span_mask, 'token': a.same}


def counts(spec, teacher: CrossTeacher, mask: jax.Array | None) -> dict[str, jax.Array]:
    """Gradient accumulation: the whole batch's count of what each part averages over."""
    return {k: jnp.sum(m.astype(jnp.float32))
            for k, m in _part_masks(spec.name, _alignment(teacher, mask)).items()}


def term(spec, hyper: Mapping[str, Any], student_logits: jax.Array, targets: jax.Array,
         mask: jax.Array | None, teacher: CrossTeacher, vocab: CrossVocab,
         totals: Mapping[str, jax.Array] | None = None) -> jax.Array:
    """The term's value: a mean over the global batch's aligned positions (and spans).

    ``totals`` (gradient accumulation, `counts` of the whole batch): this batch is one
    micro-batch; each part's mean becomes its sum over the whole batch's count, so the
    micro-batches' values add up to the whole batch's.
    """
    if not isinstance(teacher, CrossTeacher) or vocab is None:
        raise ConfigError(f'loss {spec.name!r} compares two tokenizations: it needs '
                          "task='lm' with teacher.tokenizer set (distill.cross_tokenizer)")
    a = _alignment(teacher, mask)
    logp, target_lp = teacher_logprobs(teacher, vocab)
    if spec.name == 'uld':
        parts = xl.uld_term(student_logits, logp, a, **hyper)
    elif spec.name == 'byte_kl':
        parts = xbytes.byte_kl_term(student_logits, logp, a, vocab.bytes, **hyper)
    else:
        parts = spec.fn(student_logits, targets, logp, target_lp, a, vocab, **hyper)
    if totals is None:
        return parts['total']
    share = {k: parts[k] * jnp.sum(m.astype(jnp.float32)) / jnp.maximum(totals[k], 1.0)
             for k, m in _part_masks(spec.name, a).items()}
    if spec.name in ('uld', 'byte_kl'):
        return share['total']
    return (hyper.get('span_weight', 1.0) * share['span']
            + hyper.get('token_weight', 1.0) * share['token'])
