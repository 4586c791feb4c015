"""The objective's cross-tokenizer terms: ``uld`` and ``aligned_kl`` from a `CrossTeacher`.

The teacher arrives as its logits on its own tokens (``online``: the step ran it on
``CrossTeacher.inputs``) or as its cached top-k per teacher token (``cached``: widened by
`dense_logprobs`, with the exact log-probability of each actual teacher token stored beside).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jax
import jax.numpy as jnp

from jaxdistill.crosstok import losses as xl
from jaxdistill.crosstok.data import CrossTeacher, CrossVocab
from jaxdistill.errors import ConfigError, closest

HYPER = {'uld': ('temperature',), 'aligned_kl': ('temperature', 'span_weight', 'token_weight')}


def validate(name: str, hyper: Mapping[str, Any], key: str) -> None:
    """Config-time checks of a cross-tokenizer term's hyper-parameters (one line each)."""
    known = HYPER[name]
    for k, v in hyper.items():
        if k not in known:
            raise ConfigError(f'{key}: loss {name!r} has no hyper-parameter {k!r}: '
                              f'{closest(k, known)} (hyper-parameters: {", ".join(known)})')
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            raise ConfigError(f'{key}.{k}={v!r} must be a number')
        if k == 'temperature' and not v > 0:
            raise ConfigError(f'{key}.temperature={v} must be > 0 (e.g. 1.0)')
        if k.endswith('_weight') and not v >= 0:
            raise ConfigError(f'{key}.{k}={v} must be >= 0')


def teacher_logprobs(teacher: CrossTeacher, vocab: CrossVocab) -> tuple[jax.Array, jax.Array]:
    """``([B, U, V_t] log-probabilities, [B, U] log-probability of each teacher target)``."""
    from jaxdistill.objective import dense_logprobs

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


def term(name: str, hyper: Mapping[str, Any], student_logits: jax.Array, targets: jax.Array,
         mask: jax.Array | None, teacher: CrossTeacher, vocab: CrossVocab) -> jax.Array:
    """The term's value: a mean over the global batch's aligned positions (and spans)."""
    a = teacher.alignment
    if mask is not None:  # rows an evaluation pads with are masked out of every part
        a = a._replace(aligned=a.aligned & mask, same=a.same & mask,
                       span_mask=a.span_mask & jnp.any(mask, axis=-1, keepdims=True))
    logp, target_lp = teacher_logprobs(teacher, vocab)
    t = hyper.get('temperature', 1.0)
    if name == 'uld':
        return xl.uld_term(student_logits, logp, a, temperature=t)['total']
    return xl.aligned_kl_term(
        student_logits, targets, logp, target_lp, a, shared_student=vocab.shared_student,
        shared_teacher=vocab.shared_teacher, fold=vocab.fold, temperature=t,
        span_weight=hyper.get('span_weight', 1.0),
        token_weight=hyper.get('token_weight', 1.0))['total']
