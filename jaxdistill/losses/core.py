"""What every loss shares: upcasting, shape and mask checks, masked (log-)softmaxes and sums.

Private to `jaxdistill.losses` except :func:`upcast`, :func:`check_same_vocab` and
:func:`check_logits`, which the package re-exports. ``_logsumexp`` is the one spelling of the
student's logsumexp that ``ce``, ``kd`` and ``topk_kl`` share, so that XLA computes it once
per step (benchmarks/NOTES.md 11); keep every loss going through it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import ConfigError

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

_TINY = 1e-12


def upcast(x: ArrayLike) -> Array:
    """Upcasts half precision (and integers) to float32; float64 stays float64.

    Every loss computes in at least float32: a bf16 softmax loses the small probabilities
    that KL divergences are made of.
    """
    x = jnp.asarray(x)
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def check_same_vocab(student_vocab: int, teacher_vocab: int) -> None:
    """Raises ConfigError when student and teacher do not share an output vocabulary."""
    if student_vocab != teacher_vocab:
        raise ConfigError(
            f'student vocab {student_vocab} != teacher vocab {teacher_vocab}: distill only '
            'between models that share a tokenizer, or project/align the teacher vocabulary '
            "onto the student's before calling the loss")


def _axis(axis: int, ndim: int) -> int:
    if not isinstance(axis, (int, np.integer)) or not -ndim <= axis < ndim:
        raise ConfigError(f'axis={axis!r} is not a valid axis for {ndim}-d logits: '
                          f'use an integer in [{-ndim}, {ndim - 1}]')
    return int(axis) % ndim


def check_logits(student: Array, teacher: Array, axis: int = -1) -> int:
    """Checks that student and teacher logits match; returns the normalised class axis.

    Raises ConfigError for different ranks, a different vocabulary (see
    :func:`check_same_vocab`) or different example/token shapes.
    """
    if student.ndim != teacher.ndim:
        raise ConfigError(f'student_logits shape {student.shape} and teacher_logits shape '
                          f'{teacher.shape} differ in rank: pass logits for the same tokens')
    axis = _axis(axis, student.ndim)
    check_same_vocab(student.shape[axis], teacher.shape[axis])
    if student.shape != teacher.shape:
        raise ConfigError(f'student_logits shape {student.shape} != teacher_logits shape '
                          f'{teacher.shape}: pass logits for the same examples and tokens')
    return axis


def _logit_inputs(student_logits: ArrayLike, teacher_logits: ArrayLike,
                  where: ArrayLike | None, axis: int) -> tuple[Array, Array, int, Array | None]:
    """Upcast, checked logits: ``(z_s, z_t, class axis, boolean mask of their shape or None)``."""
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    axis = check_logits(zs, zt, axis)
    return zs, zt, axis, _mask(where, zs.shape, axis)


def _mask(where: ArrayLike | None, shape: tuple[int, ...], axis: int) -> Array | None:
    """Turns a token mask or a vocabulary mask into a boolean mask of the logits shape."""
    if where is None:
        return None
    where = jnp.asarray(where).astype(bool)
    if where.ndim == len(shape) - 1:
        where = jnp.expand_dims(where, axis)
    elif where.ndim != len(shape):
        raise ConfigError(
            f'where has shape {where.shape} but logits have shape {shape}: pass a token mask '
            'of the logits shape without the class axis, or a vocabulary mask broadcastable '
            'to the logits shape')
    try:
        return jnp.broadcast_to(where, shape)
    except ValueError:
        raise ConfigError(f'where shape {where.shape} does not broadcast to logits shape '
                          f'{shape}: fix the mask shape') from None


def _logsumexp(x: Array, axis: int, mask: Array | None) -> Array:
    """Masked logsumexp (keepdims); rows with no valid entry give 0 (callers mask them out).

    Written by hand rather than with ``jax.nn.logsumexp(where=)`` so that empty rows stay
    finite in value *and* gradient.
    """
    if mask is None:  # one spelling for every loss (ce, kd, topk_kl): XLA computes it once
        return jnp.expand_dims(jax.nn.logsumexp(x, axis=axis), axis)
    shift = jnp.max(jnp.where(mask, x, -jnp.inf), axis=axis, keepdims=True)
    shift = jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))
    sumexp = jnp.sum(jnp.exp(jnp.where(mask, x - shift, -jnp.inf)), axis=axis, keepdims=True)
    return shift + jnp.log(jnp.where(sumexp > 0, sumexp, 1.0))


def _log_softmax(x: Array, axis: int, mask: Array | None) -> tuple[Array, Array]:
    """Returns ``(log p, p)`` over the valid entries; masked entries have ``log p = p = 0``.

    Masked entries get a *finite* log-probability so that every ``p * (log p - log q)`` term is
    ``0 * finite`` there: no NaN in values or gradients, and ``0 log 0 = 0`` holds for
    underflowed probabilities too (extreme logits).
    """
    logp = x - _logsumexp(x, axis, mask)
    if mask is None:
        return logp, jnp.exp(logp)
    logp = jnp.where(mask, logp, 0.0)
    return logp, jnp.where(mask, jnp.exp(logp), 0.0)


def _masked_sum(terms: Array, axis: int, mask: Array | None) -> Array:
    if mask is not None:
        terms = jnp.where(mask, terms, 0.0)
    return jnp.sum(terms, axis=axis)


def _masked_mean(x: Array, axis: int | None, mask: Array | None) -> Array:
    """Mean over the valid entries along ``axis`` (all axes for None); 0 where none is valid."""
    if mask is None:
        return jnp.mean(x, axis=axis)
    return _masked_sum(x, axis, mask) / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def _zero_empty_rows(out: Array, mask: Array | None, axis: int) -> Array:
    """Exactly 0 (value and gradient) for rows without a valid entry: padding tokens."""
    return out if mask is None else jnp.where(jnp.any(mask, axis=axis), out, 0.0)


def _is_concrete(value: Any) -> bool:
    return isinstance(value, (int, float, np.number)) and not isinstance(value, bool)


def _log_mix(logp_a: Array, logp_b: Array, w: ArrayLike) -> Array:
    """``log(w * a + (1 - w) * b)`` from log-probabilities: mixes probabilities, not logits.

    ``logaddexp`` (stable, cheap, and it takes ``w`` of 0 or 1 traced). Where ``a == b`` the
    value is snapped to exactly ``log a`` (through ``stop_gradient``, so gradients stay those of
    ``logaddexp``): identical inputs give exactly 0 rather than a rounding residue of ~1e-7.
    """
    if _is_concrete(w) and w == 0:
        return logp_b
    if _is_concrete(w) and w == 1:
        return logp_a
    w = jnp.asarray(w, logp_a.dtype)
    mix = jnp.logaddexp(jnp.log(w) + logp_a, jnp.log1p(-w) + logp_b)
    return mix + jax.lax.stop_gradient(jnp.where(logp_a == logp_b, logp_a - mix, 0.0))


def _tempered(z: Array, temperature) -> Array:
    """``z / T``, and ``z`` itself at a constant ``T = 1``: then the KD term's student
    logsumexp is the very op the cross-entropy computes, and XLA computes it once."""
    return z if _is_concrete(temperature) and temperature == 1 else z / temperature


def _one_hot_mask(labels: ArrayLike, shape: tuple[int, ...], axis: int) -> Array:
    """Boolean ``labels == class`` of the logits shape; out-of-range labels match nothing."""
    labels = jnp.asarray(labels)
    if labels.shape != shape[:axis] + shape[axis + 1:]:
        raise ConfigError(f'labels shape {labels.shape} != logits shape {shape} without the '
                          f'class axis {axis}: pass one integer label per example')
    classes = jax.lax.broadcasted_iota(jnp.int32, shape, axis)
    return jnp.expand_dims(labels, axis) == classes


def _safe_norm(x: Array, axis: int) -> Array:
    """L2 norm with a zero (not NaN) gradient at the zero vector."""
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)
