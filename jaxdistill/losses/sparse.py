"""Losses against a sparse teacher: one known only by its top-k log-probabilities per token.

That is what a cache (`jaxdistill.signals.cache`) or an API gives. `topk_kl` is the exact KL
from such a teacher; `SparseTeacher` carries it through the train step, where ``kd`` and
``forward_kl`` use their registered ``sparse`` forms (built on `topk_kl`) and every other
logit loss sees `dense_logprobs`.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxdistill.errors import ConfigError
from jaxdistill.losses.core import (
    _axis,
    _log_softmax,
    _logsumexp,
    _mask,
    _tempered,
    _zero_empty_rows,
    upcast,
)
from jaxdistill.losses.registry import Choice, Doc, check_values, register

MODES = ('renormalise', 'tail')


class SparseTeacher(NamedTuple):
    """A teacher known only by its top-k log-probabilities per token (a cache or an API).

    ``logprobs`` are full-vocabulary log-probabilities at T = 1 (float32 ``[..., k]``),
    ``ids`` their vocabulary ids. ``kd``, ``forward_kl`` and ``topk_kl`` use them exactly
    (`topk_kl`, top-k renormalised unless ``topk_kl`` says ``mode='tail'``); any other logit
    loss sees `dense_logprobs`: the top-k, and the remaining mass spread evenly over the
    other ids.
    """

    ids: jax.Array
    logprobs: jax.Array


def dense_logprobs(teacher: SparseTeacher, vocab_size: int) -> jax.Array:
    """``[..., V]`` log-probabilities: the top-k, and ``log(r / (V - k))`` elsewhere, where
    ``r = 1 - sum(top-k)`` (a floor of -1e4 when ``r`` is ~0, so no entry is -inf).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> teacher = losses.SparseTeacher(ids=jnp.array([[2, 0]]),
      ...                                logprobs=jnp.log(jnp.array([[0.5, 0.3]])))
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(jnp.exp(losses.dense_logprobs(teacher, vocab_size=4)))
      [[0.3 0.1 0.5 0.1]]
    """
    lp = teacher.logprobs.astype(jnp.float32)
    k = lp.shape[-1]
    rest = jnp.clip(1.0 - jnp.sum(jnp.exp(lp), axis=-1, keepdims=True), 0.0, 1.0)
    fill = jnp.where(rest > 0, jnp.log(jnp.maximum(rest, 1e-30) / max(vocab_size - k, 1)), -1e4)
    dense = jnp.broadcast_to(jnp.maximum(fill, -1e4), lp.shape[:-1] + (vocab_size,))
    return jnp.put_along_axis(dense, teacher.ids.astype(jnp.int32), lp, axis=-1, inplace=False)


def topk_kl(student_logits: ArrayLike, teacher_topk_logprobs: ArrayLike,
            teacher_topk_ids: ArrayLike, *, mode: str = 'renormalise', temperature: float = 1.0,
            where: ArrayLike | None = None, axis: int = -1) -> Array:
    r"""KL from a sparse teacher that kept only its top-k log-probabilities (cached/API).

    The student's log-probabilities come from its **full** log-softmax, gathered at the
    teacher's ids. With :math:`p_t^k` the teacher's top-k probabilities:

    * ``'renormalise'``: :math:`\sum_k \tilde p_t (\log \tilde p_t - \log p_s)`,
      :math:`\tilde p_t = p_t^k / \sum_k p_t^k` (the top-k renormalised to sum to 1);
    * ``'tail'``: :math:`\sum_k p_t^k (\log p_t^k - \log p_s) + r_t (\log r_t - \log r_s)`,
      :math:`r = 1 - \sum_k p`: the rest of the mass is one extra "tail" class. ``r_s`` is a
      logsumexp over the student's non-top-k entries, so it stays exact when it is tiny.

    Args:
      student_logits: ``[..., V]`` student logits.
      teacher_topk_logprobs: ``[..., k]`` teacher log-probabilities *at temperature 1* (what
        an API or a cache stores), full-vocabulary normalised; ``-inf`` entries are allowed.
      teacher_topk_ids: ``[..., k]`` integer vocabulary ids of those log-probabilities.
      mode: ``'renormalise'`` or ``'tail'``.
      temperature: divides the student logits; the teacher's top-k are re-tempered exactly
        (``softmax(log p / T)`` over the k entries). ``'tail'`` needs the teacher's full
        distribution to re-temper its tail mass, so it requires ``temperature == 1``.
      where: token mask (logits shape without ``axis``) or vocabulary mask of the student
        logits (the teacher's ids must be valid entries).
      axis: the class axis of the student logits and the k axis of the teacher arrays.

    Returns:
      Per-token loss, ``student_logits.shape`` without ``axis``.

    Examples:
      >>> import jax, jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> logprobs, ids = jax.lax.top_k(jax.nn.log_softmax(zt), 2)  # the teacher's top 2
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.topk_kl(zs, logprobs, ids))  # LOSSES.md: 0.245813 1.478841
      [0.2458 1.4788]
      >>> print(losses.topk_kl(zs, logprobs, ids, mode='tail'))  # 0.108064 0.901960
      [0.1081 0.902 ]

    References:
      Hinton et al., 2015 (see :func:`kd`); the sparse form is what cached or API teachers
      provide (top-k log-probabilities per token).
    """
    check_values('topk_kl', dict(temperature=temperature, mode=mode))
    zs = upcast(student_logits)
    lt = upcast(teacher_topk_logprobs)
    ids = jnp.asarray(teacher_topk_ids)
    axis = _axis(axis, zs.ndim)
    mask = _mask(where, zs.shape, axis)
    zs, lt, ids = (jnp.moveaxis(x, axis, -1) for x in (zs, lt, ids))
    mask = None if mask is None else jnp.moveaxis(mask, axis, -1)
    if lt.shape != ids.shape or lt.shape[:-1] != zs.shape[:-1] or lt.shape[-1] > zs.shape[-1]:
        raise ConfigError(
            f'teacher_topk_logprobs {lt.shape} / teacher_topk_ids {ids.shape} do not match '
            f'student_logits {zs.shape}: pass [..., k] arrays with k <= vocab on axis {axis}')
    zs = _tempered(zs, temperature)
    if mask is None:  # gather the k logits, no [..., V] log-softmax (benchmarks/NOTES.md)
        lse = _logsumexp(zs, -1, None)
        logp_s_k = jnp.take_along_axis(zs, ids, axis=-1) - lse
    else:
        logp_s, _ = _log_softmax(zs, -1, mask)
        logp_s_k = jnp.take_along_axis(logp_s, ids, axis=-1)
    if mode == 'renormalise':
        lt = jax.nn.log_softmax(_tempered(lt, temperature), axis=-1)
    p_t = jnp.exp(lt)
    present = p_t > 0
    lt = jnp.where(present, lt, 0.0)  # -inf teacher entries: 0 * log 0 = 0, no NaN.
    out = jnp.sum(jnp.where(present, p_t * (lt - logp_s_k), 0.0), axis=-1)
    if mode == 'tail':
        valid = jnp.ones(zs.shape, bool) if mask is None else mask
        if mask is None:
            logp_s = zs - lse
        in_topk = jnp.put_along_axis(jnp.zeros(zs.shape, bool), ids, True, axis=-1,
                                     inplace=False)
        log_r_s = jnp.squeeze(_logsumexp(logp_s, -1, valid & ~in_topk), -1)
        r_t = jnp.clip(1.0 - jnp.sum(p_t, axis=-1), 0.0, 1.0)
        safe_r_t = jnp.where(r_t > 0, r_t, 1.0)
        out = out + jnp.where(r_t > 0, r_t * (jnp.log(safe_r_t) - log_r_s), 0.0)
    return _zero_empty_rows(out, mask, -1)




def _check_tail(hyper: dict[str, Any]) -> None:
    if hyper.get('mode') == 'tail' and hyper.get('temperature', 1) != 1:
        raise ConfigError(f"temperature={hyper['temperature']!r} is invalid for loss 'topk_kl' "
                          "with mode='tail': the teacher's tail mass is only known at T=1; "
                          "use temperature=1.0 or mode='renormalise'")


def _topk_sparse(student_logits: ArrayLike, teacher: SparseTeacher, *,
                 mode: str = 'renormalise', temperature: float = 1.0) -> Array:
    """`topk_kl` against a `SparseTeacher`."""
    return topk_kl(student_logits, teacher.logprobs, teacher.ids, mode=mode,
                   temperature=temperature)


register('topk_kl', topk_kl, kind='sparse', sparse=_topk_sparse,
         rules={'mode': Choice(MODES)}, check=_check_tail, doc=Doc(
             '`renormalise`: `Σ_k p̃_t (log p̃_t − log p_s)`, `p̃_t = p_t^k / Σ_k p_t^k`; '
             '`tail`: `Σ_k p_t^k (log p_t^k − log p_s) + r_t (log r_t − log r_s)`, '
             '`r = 1 − Σ_k p`',
             'the teacher is cached or an API: only its top-k log-probs exist',
             notes='signature `topk_kl(student_logits, teacher_topk_logprobs, teacher_topk_ids, '
             "*, mode='renormalise', temperature=1.0, where=None, axis=-1)`; `log p_s` from the "
             "student's **full** log-softmax; teacher log-probs are at T = 1 and re-tempered "
             'exactly in `renormalise`; `tail` requires T = 1'))
