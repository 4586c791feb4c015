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


def term(spec, hyper: Mapping[str, Any], student_logits: jax.Array, targets: jax.Array,
         mask: jax.Array | None, teacher: CrossTeacher, vocab: CrossVocab) -> jax.Array:
    """The term's value: a mean over the global batch's aligned positions (and spans)."""
    if not isinstance(teacher, CrossTeacher) or vocab is None:
        raise ConfigError(f'loss {spec.name!r} compares two tokenizations: it needs '
                          "task='lm' with teacher.tokenizer set (distill.cross_tokenizer)")
    a = teacher.alignment
    if mask is not None:  # rows an evaluation pads with are masked out of every part
        a = a._replace(aligned=a.aligned & mask, same=a.same & mask,
                       span_mask=a.span_mask & jnp.any(mask, axis=-1, keepdims=True))
    logp, target_lp = teacher_logprobs(teacher, vocab)
    if spec.name == 'uld':
        return xl.uld_term(student_logits, logp, a, **hyper)['total']
    if spec.name == 'byte_kl':
        if mask is not None:
            a = a._replace(byte=a.byte & mask)
        return xbytes.byte_kl_term(student_logits, logp, a, vocab.bytes, **hyper)['total']
    return spec.fn(student_logits, targets, logp, target_lp, a, vocab, **hyper)['total']
