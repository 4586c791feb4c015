"""Distillation losses: pure functions, per-example output, no hidden reduction.

Every logit loss has the signature::

    fn(student_logits, teacher_logits, *, temperature=1.0, where=None, axis=-1, **hyper)

and returns one value per example (per token): the input shape without ``axis``. Reduction is
the caller's, explicit and documented (see :func:`token_mean`). Inputs are upcast to at least
float32 before any arithmetic (bf16/fp16 logits give float32 losses; float64 stays float64), so
a bf16 teacher and an fp32 student are compared in one precision.

Masks (``where``), the same convention for every logit loss:

* ``where.shape == logits.shape`` without ``axis`` (a **token mask**, e.g. ``[B, T]`` for
  ``[B, T, V]`` logits): rows where it is False are padding; their output is exactly 0 and they
  get zero gradient. Any per-token loss on a token-masked batch equals the loss on the batch with
  those rows sliced out, with zeros in their place.
* ``where.ndim == logits.ndim`` (a **vocabulary mask**, broadcast to the logits shape, e.g.
  ``[1, V]`` or ``[B, V]``): entries where it is False are removed from *both* distributions
  before the softmax, exactly as if those columns were sliced out. Rows with no valid entry give 0.

Do not mask with ``-inf`` logits; pass ``where`` instead (``-inf`` makes ``0 * inf`` terms).

The table of losses, with formulas, papers and conventions: ``docs/losses.md``; the reference
values they are checked against: ``tests/test_losses.py``. The combined objective
``alpha * distill + (1 - alpha) * ce`` is the train loop's: ``alpha`` always weights the
*distillation* term (Tunix/NeMo convention; torchdistill uses the opposite).
"""

from __future__ import annotations

import functools
import inspect
import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jaxdistill.errors import ConfigError, closest

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

# DIST's Pearson correlation adds this to the norm product (official code, kept for parity).
_DIST_EPS = 1e-8
_TINY = 1e-12


# ----------------------------------------------------------------------------- shared helpers
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


# ------------------------------------------------------------------ per-entry divergence terms
# Each maps (log p_s, p_s, log p_t, p_t) at temperature T to per-vocabulary-entry terms whose
# sum over the vocabulary is the loss. token_losses sums them over chunks or vocabulary shards.
def _kd_terms(logp_s, p_s, logp_t, p_t, *, temperature):
    return temperature**2 * p_t * (logp_t - logp_s)


def _forward_kl_terms(logp_s, p_s, logp_t, p_t, *, temperature):
    del temperature
    return p_t * (logp_t - logp_s)


def _reverse_kl_terms(logp_s, p_s, logp_t, p_t, *, temperature):
    del temperature
    return p_s * (logp_s - logp_t)


def _jsd_terms(logp_s, p_s, logp_t, p_t, *, temperature, beta=0.5):
    kls = (logp_s, p_s, logp_t, p_t)
    if _is_concrete(beta) and beta in (0, 1):  # TRL's end points: the KLs, not 0
        return (_reverse_kl_terms if beta else _forward_kl_terms)(*kls, temperature=temperature)
    log_m = _log_mix(logp_t, logp_s, beta)
    mix = beta * p_t * (logp_t - log_m) + (1 - beta) * p_s * (logp_s - log_m)
    if _is_concrete(beta):
        return mix
    fkl = _forward_kl_terms(*kls, temperature=temperature)
    rkl = _reverse_kl_terms(*kls, temperature=temperature)
    return jnp.where(beta == 0, fkl, jnp.where(beta == 1, rkl, mix))


def _skew_kl_terms(logp_s, p_s, logp_t, p_t, *, temperature, alpha=0.1):
    del temperature
    return p_t * (logp_t - _log_mix(logp_t, logp_s, alpha))


def _skew_rkl_terms(logp_s, p_s, logp_t, p_t, *, temperature, alpha=0.1):
    del temperature
    return p_s * (logp_s - _log_mix(logp_s, logp_t, alpha))


def _tvd_terms(logp_s, p_s, logp_t, p_t, *, temperature):
    del temperature
    return 0.5 * jnp.abs(p_t - p_s)


POINTWISE: dict[str, Callable[..., Array]] = {
    'kd': _kd_terms,
    'forward_kl': _forward_kl_terms,
    'reverse_kl': _reverse_kl_terms,
    'jsd': _jsd_terms,
    'skew_kl': _skew_kl_terms,
    'skew_rkl': _skew_rkl_terms,
    'tvd': _tvd_terms,
}
"""Divergences that are a sum over the vocabulary of per-entry terms of the two log-softmaxes.

These are the losses :mod:`jaxdistill.token_losses` can evaluate chunk by chunk or with the
vocabulary sharded across devices.
"""


def _tempered(z: Array, temperature) -> Array:
    """``z / T``, and ``z`` itself at a constant ``T = 1``: then the KD term's student
    logsumexp is the very op the cross-entropy computes, and XLA computes it once."""
    return z if _is_concrete(temperature) and temperature == 1 else z / temperature


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _dense_forward_kl(zs: Array, zt: Array, axis: int) -> Array:
    """``KL(softmax(zt) || softmax(zs))`` over ``axis``, no mask: the per-entry form's value
    with a hand-written derivative.

    Autodiff of ``sum p_t (log p_t - log p_s)`` spends one more reduction over the vocabulary
    on ``sum p_t``, which is 1; the derivative here uses that, so the student's gradient is
    ``p_s - p_t`` alone. The student's logsumexp is `_logsumexp`'s (shared with the
    cross-entropy). Identical inputs give exactly 0 in value and gradient.
    """
    (logp_s, _), (logp_t, p_t) = _log_softmax(zs, axis, None), _log_softmax(zt, axis, None)
    return jnp.sum(_forward_kl_terms(logp_s, None, logp_t, p_t, temperature=1), axis=axis)


@_dense_forward_kl.defjvp
def _dense_forward_kl_jvp(axis, primals, tangents):
    zs, zt = primals
    dzs, dzt = tangents
    (logp_s, p_s), (logp_t, p_t) = _log_softmax(zs, axis, None), _log_softmax(zt, axis, None)
    kl = jnp.sum(_forward_kl_terms(logp_s, p_s, logp_t, p_t, temperature=1), axis=axis)
    d_teacher = p_t * (logp_t - logp_s - jnp.expand_dims(kl, axis))
    return kl, jnp.sum((p_s - p_t) * dzs + d_teacher * dzt, axis=axis)


def _divergence(name, student_logits, teacher_logits, temperature, where, axis, **hyper):
    _check_values(name, dict(temperature=temperature, **hyper))
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    axis = check_logits(zs, zt, axis)
    mask = _mask(where, zs.shape, axis)
    if mask is None and name in ('kd', 'forward_kl'):
        kl = _dense_forward_kl(_tempered(zs, temperature), _tempered(zt, temperature), axis)
        return temperature**2 * kl if name == 'kd' else kl
    logp_s, p_s = _log_softmax(_tempered(zs, temperature), axis, mask)
    logp_t, p_t = _log_softmax(_tempered(zt, temperature), axis, mask)
    terms = POINTWISE[name](logp_s, p_s, logp_t, p_t, temperature=temperature, **hyper)
    return _masked_sum(terms, axis, mask)


# ------------------------------------------------------------------------- logit divergences
def kd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Hinton knowledge distillation: :math:`T^2 \, KL(p_t \| p_s)`, ``p = softmax(z / T)``.

    The :math:`T^2` factor keeps the gradient scale independent of the temperature, so the
    distillation weight need not be retuned when ``T`` changes (Hinton et al., 2015, sec. 2).

    Args:
      student_logits: ``[..., V]`` unnormalised student log-probabilities (any float dtype).
      teacher_logits: same shape as ``student_logits``.
      temperature: softmax temperature ``T > 0``.
      where: token mask (logits shape without ``axis``; masked rows give 0) or vocabulary mask
        (logits shape; masked entries leave both softmaxes). See the module docstring.
      axis: the class (vocabulary) axis.

    Returns:
      Per-example loss, float32 (float64 for float64 inputs), shape ``logits.shape`` without
      ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> jnp.set_printoptions(precision=4)
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> print(losses.kd(zs, zt, temperature=2.0))
      [0.1076 1.0258]

    References:
      Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
      <https://arxiv.org/abs/1503.02531>`_, 2015.
    """
    return _divergence('kd', student_logits, teacher_logits, temperature, where, axis)


def forward_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Forward KL :math:`KL(p_t \| p_s) = \sum_v p_t (\log p_t - \log p_s)`, mode-covering.

    Same as :func:`kd` without the :math:`T^2` factor. Arguments and masks as in :func:`kd`.

    References:
      Kullback, Leibler, `On Information and Sufficiency
      <https://doi.org/10.1214/aoms/1177729694>`_, 1951.
    """
    return _divergence('forward_kl', student_logits, teacher_logits, temperature, where, axis)


def reverse_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Reverse KL :math:`KL(p_s \| p_t)`, mode-seeking (MiniLLM).

    The student is penalised for mass where the teacher has little, not for missing teacher
    modes: preferred for generative LMs whose student cannot cover the teacher. Arguments and
    masks as in :func:`kd`; no :math:`T^2` factor.

    References:
      Gu, Dong, Wei, Huang, `MiniLLM: Knowledge Distillation of Large Language Models
      <https://arxiv.org/abs/2306.08543>`_, ICLR 2024.
    """
    return _divergence('reverse_kl', student_logits, teacher_logits, temperature, where, axis)


def jsd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    beta: float = 0.5,
) -> Array:
    r"""Generalised Jensen-Shannon divergence (GKD), TRL's ``beta`` convention.

    .. math::
      JSD_\beta = \beta \, KL(p_t \| m) + (1 - \beta) \, KL(p_s \| m),
      \quad m = \beta p_t + (1 - \beta) p_s

    The mixture is of *probabilities*: ``log m = logaddexp(log beta + log p_t,
    log(1 - beta) + log p_s)``, never a mixture of log-probabilities. As in TRL's
    ``generalized_jsd_loss``, the end points are special-cased: ``beta == 0`` gives
    :math:`KL(p_t \| p_s)` (forward KL) and ``beta == 1`` gives :math:`KL(p_s \| p_t)` (reverse
    KL), although the formula itself tends to 0 there. Symmetric in its arguments only at
    ``beta = 0.5``. No :math:`T^2` factor. Other arguments as in :func:`kd`.

    Args:
      beta: mixture weight of the teacher, in ``[0, 1]``.

    References:
      Agarwal et al., `On-Policy Distillation of Language Models: Learning from Self-Generated
      Mistakes <https://arxiv.org/abs/2306.13649>`_ (GKD), ICLR 2024.
    """
    return _divergence('jsd', student_logits, teacher_logits, temperature, where, axis,
                       beta=beta)


def skew_kl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    alpha: float = 0.1,
) -> Array:
    r"""Skew KL (DistiLLM): :math:`KL(p_t \| \alpha p_t + (1 - \alpha) p_s)`.

    A true KL divergence (not the cross-entropy form, which differs by the teacher entropy):
    it is 0 for identical inputs. Mixing in a little of the teacher bounds the loss and its
    gradient where the student puts no mass. ``alpha = 0`` is :func:`forward_kl`.

    Args:
      alpha: skew coefficient in ``[0, 1]`` (paper default 0.1).

    References:
      Ko, Kim, Chen, Yun, `DistiLLM: Towards Streamlined Distillation for Large Language
      Models <https://arxiv.org/abs/2402.03898>`_, ICML 2024.
    """
    return _divergence('skew_kl', student_logits, teacher_logits, temperature, where, axis,
                       alpha=alpha)


def skew_rkl(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    alpha: float = 0.1,
) -> Array:
    r"""Skew reverse KL (DistiLLM): :math:`KL(p_s \| (1 - \alpha) p_t + \alpha p_s)`.

    ``alpha = 0`` is :func:`reverse_kl`. Arguments as in :func:`skew_kl`.

    References:
      Ko et al., DistiLLM, ICML 2024 (see :func:`skew_kl`).
    """
    return _divergence('skew_rkl', student_logits, teacher_logits, temperature, where, axis,
                       alpha=alpha)


def tvd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Total variation distance :math:`\tfrac12 \sum_v |p_t - p_s|`, bounded in ``[0, 1]``.

    References:
      Wen et al., `f-Divergence Minimization for Sequence-Level Knowledge Distillation
      <https://arxiv.org/abs/2307.15190>`_, ACL 2023.
    """
    return _divergence('tvd', student_logits, teacher_logits, temperature, where, axis)


def logit_mse(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Logit regression :math:`\mathrm{mean}_v ((z_s - z_t) / T)^2` over the valid entries.

    Matches raw logits, so it also transfers the teacher's logit offsets that a softmax
    ignores. ``temperature`` only rescales (default 1: plain logit matching, as in the paper).
    A vocabulary mask averages over the valid entries only.

    References:
      Ba, Caruana, `Do Deep Nets Really Need to be Deep?
      <https://arxiv.org/abs/1312.6184>`_, NeurIPS 2014.
    """
    _check_values('logit_mse', dict(temperature=temperature))
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    axis = check_logits(zs, zt, axis)
    mask = _mask(where, zs.shape, axis)
    return _masked_mean(((zs - zt) / temperature) ** 2, axis, mask)


# ------------------------------------------------------------------------------------ DKD
def _one_hot_mask(labels: ArrayLike, shape: tuple[int, ...], axis: int) -> Array:
    """Boolean ``labels == class`` of the logits shape; out-of-range labels match nothing."""
    labels = jnp.asarray(labels)
    if labels.shape != shape[:axis] + shape[axis + 1:]:
        raise ConfigError(f'labels shape {labels.shape} != logits shape {shape} without the '
                          f'class axis {axis}: pass one integer label per example')
    classes = jax.lax.broadcasted_iota(jnp.int32, shape, axis)
    return jnp.expand_dims(labels, axis) == classes


def dkd_parts(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    labels: ArrayLike,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> dict[str, Array]:
    r"""Decoupled KD parts: ``{'tckd', 'nckd', 'total'}``, each per example.

    .. math::
      TCKD = T^2 \, KL([p_t^y, 1 - p_t^y] \,\|\, [p_s^y, 1 - p_s^y]), \quad
      NCKD = T^2 \, KL(\hat p_t \| \hat p_s), \quad total = \alpha \, TCKD + \beta \, NCKD

    where :math:`\hat p` is the softmax over the non-target classes (the target logit removed
    before the softmax). ``tckd`` and ``nckd`` are unweighted (they include :math:`T^2`). At
    ``T = 1``, :math:`TCKD + (1 - p_t^y) NCKD = KL(p_t \| p_s)`: KD couples NCKD to the
    teacher's confidence, DKD decouples them.

    Args:
      labels: integer targets, logits shape without ``axis``. Rows whose label is out of range
        (e.g. -100 padding) must be masked with ``where``.
      temperature: the paper uses ``T = 4`` on CIFAR-100; the default here is 1 like every
        other loss.
      alpha: TCKD weight (paper: 1). beta: NCKD weight (paper: 8 on CIFAR-100).
      Others as in :func:`kd`.

    References:
      Zhao, Cui, Song, Qiu, Liang, `Decoupled Knowledge Distillation
      <https://arxiv.org/abs/2203.08679>`_, CVPR 2022.
    """
    _check_values('dkd', dict(temperature=temperature, alpha=alpha, beta=beta))
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    axis = check_logits(zs, zt, axis)
    mask = _mask(where, zs.shape, axis)
    valid = jnp.ones(zs.shape, bool) if mask is None else mask
    target = _one_hot_mask(labels, zs.shape, axis) & valid
    others = valid & ~target

    def decouple(z):
        """Target and rest log-masses, and the log-softmax over the non-target classes."""
        logp, p = _log_softmax(_tempered(z, temperature), axis, mask)
        logp_y = jnp.sum(jnp.where(target, logp, 0.0), axis=axis)
        p_y = jnp.sum(jnp.where(target, p, 0.0), axis=axis)
        # log(1 - p_y) as a logsumexp over the other classes: stays finite when p_y -> 1.
        log_rest = _logsumexp(logp, axis, others)
        rest = jnp.sum(jnp.where(others, p, 0.0), axis=axis)
        # Renormalising p over the non-target classes is the softmax with the target removed.
        log_hat = jnp.where(others, logp - log_rest, 0.0)
        log_rest = jnp.squeeze(log_rest, axis)
        return logp_y, p_y, log_rest, rest, log_hat, jnp.where(others, jnp.exp(log_hat), 0.0)

    logp_sy, _, log_s_rest, _, log_hat_s, _ = decouple(zs)
    logp_ty, p_ty, log_t_rest, t_rest, log_hat_t, p_hat_t = decouple(zt)
    t2 = temperature**2
    tckd = t2 * (p_ty * (logp_ty - logp_sy) + t_rest * (log_t_rest - log_s_rest))
    nckd = t2 * _masked_sum(p_hat_t * (log_hat_t - log_hat_s), axis, others)
    tckd, nckd = _zero_empty_rows(tckd, mask, axis), _zero_empty_rows(nckd, mask, axis)
    return {'tckd': tckd, 'nckd': nckd, 'total': alpha * tckd + beta * nckd}


def dkd(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    labels: ArrayLike,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    alpha: float = 1.0,
    beta: float = 8.0,
) -> Array:
    r"""Decoupled KD :math:`\alpha \, TCKD + \beta \, NCKD` per example; see :func:`dkd_parts`.

    References:
      Zhao et al., Decoupled Knowledge Distillation, CVPR 2022.
    """
    return dkd_parts(student_logits, teacher_logits, labels=labels, temperature=temperature,
                     where=where, axis=axis, alpha=alpha, beta=beta)['total']


# ----------------------------------------------------------------------------------- DIST
def _safe_norm(x: Array, axis: int) -> Array:
    """L2 norm with a zero (not NaN) gradient at the zero vector."""
    sq = jnp.sum(x * x, axis=axis)
    positive = sq > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, sq, 1.0)), 0.0)


def _pearson(a: Array, b: Array, mask: Array, axis: int) -> Array:
    """Pearson correlation along ``axis`` over the masked entries, DIST's ``+ eps`` form."""
    n = jnp.maximum(jnp.sum(mask, axis=axis, keepdims=True), 1)
    a = jnp.where(mask, a - jnp.sum(jnp.where(mask, a, 0.0), axis, keepdims=True) / n, 0.0)
    b = jnp.where(mask, b - jnp.sum(jnp.where(mask, b, 0.0), axis, keepdims=True) / n, 0.0)
    return jnp.sum(a * b, axis=axis) / (_safe_norm(a, axis) * _safe_norm(b, axis) + _DIST_EPS)


def dist_parts(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> dict[str, Array]:
    r"""DIST parts ``{'inter', 'intra', 'total'}``, each a **scalar** (batch-level loss).

    With ``P_s, P_t`` the ``[N, V]`` matrices of ``softmax(z / T)`` rows (every axis but
    ``axis`` flattened into rows):

    .. math::
      inter = \mathrm{mean}_i (1 - \rho(P_s[i, :], P_t[i, :])), \quad
      intra = \mathrm{mean}_j (1 - \rho(P_s[:, j], P_t[:, j])), \quad
      total = T^2 (\beta \, inter + \gamma \, intra)

    ``rho`` is Pearson's correlation ``<a, b> / (|a| |b| + 1e-8)`` of the centred vectors, as in
    the official code. Matching correlations instead of values relaxes KL's exact match, which
    helps when the teacher is much stronger than the student. A token mask drops rows from both
    statistics; a vocabulary mask drops classes. ``inter``/``intra`` exclude :math:`T^2`.

    References:
      Huang, You, Wang, Qian, Xu, `Knowledge Distillation from A Stronger Teacher
      <https://arxiv.org/abs/2205.10536>`_, NeurIPS 2022.
    """
    _check_values('dist', dict(temperature=temperature, beta=beta, gamma=gamma))
    zs, zt = upcast(student_logits), upcast(teacher_logits)
    axis = check_logits(zs, zt, axis)
    mask = _mask(where, zs.shape, axis)
    mask = jnp.ones(zs.shape, bool) if mask is None else mask
    vocab = zs.shape[axis]
    zs, zt, mask = (jnp.moveaxis(x, axis, -1).reshape(-1, vocab) for x in (zs, zt, mask))
    _, p_s = _log_softmax(_tempered(zs, temperature), -1, mask)
    _, p_t = _log_softmax(_tempered(zt, temperature), -1, mask)
    inter = _masked_mean(1.0 - _pearson(p_s, p_t, mask, -1), None, jnp.any(mask, axis=-1))
    intra = _masked_mean(1.0 - _pearson(p_s, p_t, mask, 0), None, jnp.any(mask, axis=0))
    total = temperature**2 * (beta * inter + gamma * intra)
    return {'inter': inter, 'intra': intra, 'total': total}


def dist(
    student_logits: ArrayLike,
    teacher_logits: ArrayLike,
    *,
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
    beta: float = 1.0,
    gamma: float = 1.0,
) -> Array:
    r"""DIST loss :math:`T^2 (\beta \, inter + \gamma \, intra)`: a scalar; see :func:`dist_parts`.

    Batch-level: it is *not* per example, so do not pass it through :func:`token_mean`, and
    note that its value depends on how the batch is split across micro-batches.

    References:
      Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022.
    """
    return dist_parts(student_logits, teacher_logits, temperature=temperature, where=where,
                      axis=axis, beta=beta, gamma=gamma)['total']


# ------------------------------------------------------------------------------- top-k KL
def topk_kl(
    student_logits: ArrayLike,
    teacher_topk_logprobs: ArrayLike,
    teacher_topk_ids: ArrayLike,
    *,
    mode: str = 'renormalise',
    temperature: float = 1.0,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
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

    References:
      Hinton et al., 2015 (see :func:`kd`); the sparse form is what cached or API teachers
      provide (top-k log-probabilities per token).
    """
    _check_values('topk_kl', dict(temperature=temperature, mode=mode))
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


# ---------------------------------------------------------------------------- cross-entropy
def softmax_cross_entropy(
    logits: ArrayLike,
    labels: ArrayLike,
    *,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Cross-entropy with integer labels, :math:`-\log \mathrm{softmax}(z)_y`, per example.

    The ``(1 - alpha) * ce`` term of the combined objective (``alpha`` weights the
    distillation term). Same ``where`` convention as the distillation losses: masked rows
    (padding) give exactly 0. A label outside ``[0, V)`` (e.g. -100 padding) selects no
    class, so its row is meaningless: mask such rows with ``where``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> jnp.set_printoptions(precision=4)
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> print(losses.softmax_cross_entropy(logits, jnp.array([0, 1])))
      [0.2761 2.9518]

    References:
      Same as ``optax.losses.softmax_cross_entropy_with_integer_labels``, in float32 and with
      jaxdistill's mask convention.
    """
    z = upcast(logits)
    axis = _axis(axis, z.ndim)
    if where is None or jnp.ndim(where) == z.ndim - 1:
        return _ce_gather(z, labels, where, axis)
    mask = _mask(where, z.shape, axis)  # a vocabulary mask
    logp, _ = _log_softmax(z, axis, mask)
    target = _one_hot_mask(labels, z.shape, axis)
    return _zero_empty_rows(-_masked_sum(jnp.where(target, logp, 0.0), axis, mask), mask, axis)


def _ce_gather(z: Array, labels: ArrayLike, token_mask: ArrayLike | None, axis: int) -> Array:
    """``logsumexp(z) - z[label]`` with the label's logit gathered: no one-hot of ``z``'s shape.

    The same values as the one-hot form (out-of-range labels and masked rows give 0), but
    the only array of the logits' shape left is the gradient: on XLA CPU this halved an LM
    student's train step at vocabulary 8192 (benchmarks/NOTES.md).
    """
    labels = jnp.asarray(labels)
    if labels.shape != z.shape[:axis] + z.shape[axis + 1:]:
        raise ConfigError(f'labels shape {labels.shape} != logits shape {z.shape} without the '
                          f'class axis {axis}: pass one integer label per example')
    valid = (labels >= 0) & (labels < z.shape[axis])
    if token_mask is not None:
        valid = valid & jnp.asarray(token_mask).astype(bool)
    index = jnp.expand_dims(jnp.where(valid, labels, 0), axis)
    picked = jnp.squeeze(jnp.take_along_axis(z, index, axis), axis)
    lse = jnp.squeeze(_logsumexp(z, axis, None), axis)  # the op kd and topk_kl use: shared
    return jnp.where(valid, lse - picked, 0.0)


ce = softmax_cross_entropy


# --------------------------------------------------------------------------- feature losses
def _project(h_s: Array, h_t: Array, projection: ArrayLike | None, axis: int) -> Array:
    """Applies the learned ``[d_s, d_t]`` projection to the student features, if any."""
    if projection is not None:
        projection = upcast(projection)
        if projection.shape != (h_s.shape[axis], h_t.shape[axis]):
            raise ConfigError(
                f'projection shape {projection.shape} != (student width {h_s.shape[axis]}, '
                f'teacher width {h_t.shape[axis]}): pass a [d_student, d_teacher] matrix')
        h_s = jnp.moveaxis(jnp.moveaxis(h_s, axis, -1) @ projection, -1, axis)
    if h_s.shape[axis] != h_t.shape[axis]:
        raise ConfigError(
            f'student width {h_s.shape[axis]} != teacher width {h_t.shape[axis]}: pass '
            f'projection= a [{h_s.shape[axis]}, {h_t.shape[axis]}] matrix trained with the '
            'student (FitNets regressor)')
    if h_s.shape != h_t.shape:
        raise ConfigError(f'student features {h_s.shape} != teacher features {h_t.shape}: '
                          'pass features of the same examples and positions')
    return h_s


def _features(student, teacher, projection, where, axis):
    h_s, h_t = upcast(student), upcast(teacher)
    if h_s.ndim != h_t.ndim:
        raise ConfigError(f'student features {h_s.shape} and teacher features {h_t.shape} '
                          'differ in rank: pass features of the same examples and positions')
    axis = _axis(axis, h_s.ndim)
    h_s = _project(h_s, h_t, projection, axis)
    return h_s, h_t, _mask(where, h_s.shape, axis), axis


def feature_mse(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    projection: ArrayLike | None = None,
    where: ArrayLike | None = None,
    axis: int = -1,
) -> Array:
    r"""Hint loss :math:`\mathrm{mean}_d (P(h_s) - h_t)^2` per example/token (FitNets).

    Args:
      student_features: ``[..., d_s]`` student hidden states.
      teacher_features: ``[..., d_t]`` teacher hidden states.
      projection: ``[d_s, d_t]`` learned regressor :math:`P`, required when the widths
        differ; a parameter of the student, so it gets gradients through this loss.
      where: token mask (shape without ``axis``; masked rows give 0) or a mask of the feature
        shape (mean over the valid features).
      axis: the feature axis.

    References:
      Romero et al., `FitNets: Hints for Thin Deep Nets <https://arxiv.org/abs/1412.6550>`_,
      ICLR 2015.
    """
    h_s, h_t, mask, axis = _features(student_features, teacher_features, projection, where,
                                     axis)
    return _masked_mean((h_s - h_t) ** 2, axis, mask)


def feature_cosine(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    projection: ArrayLike | None = None,
    where: ArrayLike | None = None,
    axis: int = -1,
    eps: float = 1e-8,
) -> Array:
    r"""Cosine embedding loss :math:`1 - \cos(P(h_s), h_t)` per example/token (DistilBERT).

    Scale-free, unlike :func:`feature_mse`: only the direction of the hidden state is
    matched. ``cos = <a, b> / max(|a| |b|, eps)``; a zero vector gives loss 1, not NaN.
    Arguments as in :func:`feature_mse`.

    References:
      Sanh, Debut, Chaumond, Wolf, `DistilBERT, a distilled version of BERT
      <https://arxiv.org/abs/1910.01108>`_, 2019.
    """
    h_s, h_t, mask, axis = _features(student_features, teacher_features, projection, where,
                                     axis)
    if mask is not None:
        h_s, h_t = jnp.where(mask, h_s, 0.0), jnp.where(mask, h_t, 0.0)
    dot = jnp.sum(h_s * h_t, axis=axis)
    cos = dot / jnp.maximum(_safe_norm(h_s, axis) * _safe_norm(h_t, axis), eps)
    return _zero_empty_rows(1.0 - cos, mask, axis)


def attention_transfer(
    student_features: ArrayLike,
    teacher_features: ArrayLike,
    *,
    p: float = 2.0,
    channel_axis: int = -1,
    where: ArrayLike | None = None,
) -> Array:
    r"""Activation-based attention transfer, per example.

    .. math::
      a = \mathrm{vec}(\mathrm{mean}_c |h|^p), \quad
      loss = \left\| a_s / \|a_s\|_2 - a_t / \|a_t\|_2 \right\|_2

    The spatial attention map is compared, not the features, so the channel counts of the
    student and teacher may differ; their spatial shapes must match. The paper's loss is this
    norm (times beta/2); the reference code uses the mean of squares instead.

    Args:
      student_features: ``[B, *spatial, C_s]`` (NHWC; any number of spatial axes).
      teacher_features: ``[B, *spatial, C_t]``.
      p: exponent of the attention map (paper: 2).
      channel_axis: the channel axis (not 0, the batch axis).
      where: ``[B]`` example mask; masked examples give 0.

    References:
      Zagoruyko, Komodakis, `Paying More Attention to Attention
      <https://arxiv.org/abs/1612.03928>`_, ICLR 2017.
    """
    _check_values('attention_transfer', dict(p=p))
    h_s, h_t = upcast(student_features), upcast(teacher_features)

    def without_channels(h):
        c = _axis(channel_axis, h.ndim)
        if c == 0:
            raise ConfigError('channel_axis=0 is the batch axis: pass the channel axis')
        return c, h.shape[:c] + h.shape[c + 1:]

    def attention(h):
        c, _ = without_channels(h)
        a = jnp.mean(jnp.abs(h) ** p, axis=c).reshape(h.shape[0], -1)
        return a / jnp.maximum(_safe_norm(a, -1), _TINY)[:, None]

    (_, spatial_s), (_, spatial_t) = without_channels(h_s), without_channels(h_t)
    if spatial_s != spatial_t:
        raise ConfigError(f'student map {spatial_s} != teacher map {spatial_t} (without '
                          'channels): resize or pool one side to the same batch/spatial shape')
    out = _safe_norm(attention(h_s) - attention(h_t), -1)
    if where is not None:
        out = jnp.where(jnp.asarray(where, bool), out, 0.0)
    return out


def rkd(
    student_embeddings: ArrayLike,
    teacher_embeddings: ArrayLike,
    *,
    distance_weight: float = 25.0,
    angle_weight: float = 50.0,
    where: ArrayLike | None = None,
) -> Array:
    r"""Relational KD: distance + angle relations between the examples of a batch; a scalar.

    With :math:`\psi_D(i, j) = \|x_i - x_j\| / \mu` (``mu`` the mean distance over pairs) and
    :math:`\psi_A(i, j, k) = \langle e_{ij}, e_{ik} \rangle`,
    :math:`e_{ij} = (x_j - x_i) / \|x_j - x_i\|`:

    .. math::
      loss = w_D \, \mathrm{mean}_{i \ne j} \, \ell_1(\psi_D^s - \psi_D^t)
           + w_A \, \mathrm{mean}_{i, j, k \text{ distinct}} \, \ell_1(\psi_A^s - \psi_A^t)

    with :math:`\ell_1` the Huber (smooth-L1, delta 1) loss. Means run over distinct pairs and
    triplets (the reference code also averages the zero diagonal terms, which rescales by a
    constant). Embedding widths may differ: only relations are compared. Memory is
    ``N^2 d + N^3`` per model: use it on pooled embeddings of modest batches.

    Args:
      student_embeddings: ``[N, ...]`` (flattened to ``[N, d_s]``).
      teacher_embeddings: ``[N, ...]`` (flattened to ``[N, d_t]``).
      distance_weight: ``w_D`` (paper: 25). angle_weight: ``w_A`` (paper: 50).
      where: ``[N]`` example mask: masked examples take part in no pair or triplet.

    References:
      Park, Kim, Lu, Cho, `Relational Knowledge Distillation
      <https://arxiv.org/abs/1904.05068>`_, CVPR 2019.
    """
    _check_values('rkd', dict(distance_weight=distance_weight, angle_weight=angle_weight))
    x_s, x_t = upcast(student_embeddings), upcast(teacher_embeddings)
    n = x_s.shape[0]
    if x_t.shape[0] != n:
        raise ConfigError(f'student batch {n} != teacher batch {x_t.shape[0]}: pass '
                          'embeddings of the same examples')
    x_s, x_t = x_s.reshape(n, -1), x_t.reshape(n, -1)
    valid = jnp.ones(n, bool) if where is None else jnp.asarray(where, bool)
    eye = jnp.eye(n, dtype=bool)
    pairs = valid[:, None] & valid[None, :] & ~eye
    triplets = pairs[:, :, None] & pairs[:, None, :] & ~eye[None, :, :]

    def relations(x):
        diff = x[None, :, :] - x[:, None, :]  # diff[i, j] = x_j - x_i
        d = _safe_norm(diff, -1)
        d = d / jnp.maximum(_masked_mean(d, None, pairs), _TINY)
        e = diff / jnp.maximum(_safe_norm(diff, -1), _TINY)[..., None]
        return d, jnp.einsum('ijd,ikd->ijk', e, e)

    (d_s, a_s), (d_t, a_t) = relations(x_s), relations(x_t)
    loss_d = _masked_mean(optax.losses.huber_loss(d_s, d_t), None, pairs)
    loss_a = _masked_mean(optax.losses.huber_loss(a_s, a_t), None, triplets)
    return distance_weight * loss_d + angle_weight * loss_a


def similarity_mse(
    student_embeddings: ArrayLike,
    teacher_embeddings: ArrayLike,
    *,
    where: ArrayLike | None = None,
) -> Array:
    r"""MSE between the in-batch cosine-similarity matrices; a scalar.

    .. math::
      loss = \mathrm{mean}_{i \ne j} \left(\cos(x^s_i, x^s_j) - \cos(x^t_i, x^t_j)\right)^2

    What a sentence-embedding student is judged on is which sentences it finds similar, so
    this matches that directly: the similarity structure of a batch, not the vectors. Widths
    may differ (no projection), and the value is bounded (``[0, 4]``). Unlike `rkd` it
    compares cosines (scale-free) with a plain square, and costs ``N^2 d`` (no triplets).
    The diagonal (always 1) is left out; a zero vector has cosine 0 with everything.

    Args:
      student_embeddings: ``[N, ...]`` (flattened to ``[N, d_s]``).
      teacher_embeddings: ``[N, ...]`` (flattened to ``[N, d_t]``).
      where: ``[N]`` example mask: masked examples take part in no pair.

    References:
      Tung, Mori, `Similarity-Preserving Knowledge Distillation
      <https://arxiv.org/abs/1907.09682>`_, ICCV 2019 (the same idea on row-normalised
      Gram matrices of activations).
    """
    x_s, x_t = upcast(student_embeddings), upcast(teacher_embeddings)
    n = x_s.shape[0]
    if x_t.shape[0] != n:
        raise ConfigError(f'student batch {n} != teacher batch {x_t.shape[0]}: pass '
                          'embeddings of the same examples')
    valid = jnp.ones(n, bool) if where is None else jnp.asarray(where, bool)
    pairs = valid[:, None] & valid[None, :] & ~jnp.eye(n, dtype=bool)

    def cosines(x):
        x = x.reshape(n, -1)
        x = x / jnp.maximum(_safe_norm(x, -1), _TINY)[:, None]
        return x @ x.T

    return _masked_mean((cosines(x_s) - cosines(x_t)) ** 2, None, pairs)


# ------------------------------------------------------------------------------- reduction
def token_mean(
    per_token: ArrayLike,
    where: ArrayLike | None = None,
    *,
    normalizer: ArrayLike | None = None,
) -> Array:
    r"""Sum over valid tokens divided by the number of valid tokens, in float32.

    ``sum(per_token[where]) / max(count, 1)`` with ``count = sum(where)``, or divided by
    ``normalizer`` when given. Padding never enters the denominator, and an all-padding batch
    gives 0, not NaN.

    Global normalisation: call it on the *global* batch. Under ``jax.jit`` with arrays sharded
    over a mesh (``jax.Array`` with a ``NamedSharding``), the plain ``sum / count`` here *is*
    the global one: XLA inserts the cross-device reductions, so no per-device mean (which
    would weight devices with more padding more) is ever taken. With gradient accumulation,
    pass ``normalizer`` = the valid-token count of the whole accumulation window to every
    micro-batch and *sum* the results (or their gradients): that equals the full-batch mean
    exactly, however the window is split.

    Args:
      per_token: per-token losses, e.g. ``[B, T]``.
      where: boolean mask broadcastable to ``per_token``; None counts every entry.
      normalizer: explicit denominator (a token count), e.g. the window's total.

    Returns:
      A float32 scalar.
    """
    x = upcast(per_token)
    if where is None:
        total, count = jnp.sum(x), x.size
    else:
        mask = jnp.broadcast_to(jnp.asarray(where, bool), x.shape)
        total, count = jnp.sum(jnp.where(mask, x, 0.0)), jnp.sum(mask)
    denom = count if normalizer is None else normalizer
    return total / jnp.maximum(jnp.asarray(denom, x.dtype), 1.0)


# ------------------------------------------------------------------- registry and validation
REGISTRY: dict[str, Callable[..., Array]] = {
    'kd': kd,
    'forward_kl': forward_kl,
    'reverse_kl': reverse_kl,
    'jsd': jsd,
    'skew_kl': skew_kl,
    'skew_rkl': skew_rkl,
    'tvd': tvd,
    'logit_mse': logit_mse,
    'dkd': dkd,
    'dist': dist,
    'topk_kl': topk_kl,
    'ce': softmax_cross_entropy,
    'feature_mse': feature_mse,
    'feature_cosine': feature_cosine,
    'attention_transfer': attention_transfer,
    'rkd': rkd,
    'similarity_mse': similarity_mse,
}
"""Loss name (as written in configs) -> function."""

# Call-time data, not configuration: validate_hyper refuses them as hyper-parameters.
_DATA_ARGS = frozenset({'where', 'labels', 'projection'})


def _rule(check: Callable[[Any], bool], requirement: str, fix: str):
    return check, requirement, fix


_POSITIVE = _rule(lambda v: v > 0, 'must be > 0', 'use a positive number')
_UNIT = _rule(lambda v: 0 <= v <= 1, 'must be in [0, 1]', 'use a weight between 0 and 1')
_NON_NEGATIVE = _rule(lambda v: v >= 0, 'must be >= 0', 'use a non-negative weight')
_MODES = ('renormalise', 'tail')

_COMMON_RULES = {
    'temperature': _rule(lambda v: v > 0, 'must be > 0', 'use e.g. 1.0 (typical: 1 to 4)'),
}
_LOSS_RULES = {
    'jsd': {'beta': _UNIT},
    'skew_kl': {'alpha': _UNIT},
    'skew_rkl': {'alpha': _UNIT},
    'dkd': {'alpha': _NON_NEGATIVE, 'beta': _NON_NEGATIVE},
    'dist': {'beta': _NON_NEGATIVE, 'gamma': _NON_NEGATIVE},
    'rkd': {'distance_weight': _NON_NEGATIVE, 'angle_weight': _NON_NEGATIVE},
    'attention_transfer': {'p': _POSITIVE},
    'feature_cosine': {'eps': _POSITIVE},
}


def _check_values(name: str, hyper: dict[str, Any], strict: bool = False) -> None:
    """Checks hyper-parameter values. Traced values are skipped unless ``strict``."""
    rules = {**_COMMON_RULES, **_LOSS_RULES.get(name, {})}
    for key, value in hyper.items():
        if key == 'mode':
            if value not in _MODES:
                raise ConfigError(f'mode={value!r} is invalid for loss {name!r}: use one of '
                                  f'{_MODES} ({closest(str(value), _MODES)})')
            continue
        if key not in rules:
            continue
        if not _is_concrete(value):
            if strict:
                raise ConfigError(f'{key}={value!r} for loss {name!r} must be a number')
            continue
        check, requirement, fix = rules[key]
        if not math.isfinite(value) or not check(value):
            raise ConfigError(f'{key}={value!r} is invalid for loss {name!r}: {key} '
                              f'{requirement}; {fix}')
    if name == 'topk_kl' and hyper.get('mode') == 'tail' and hyper.get('temperature', 1) != 1:
        raise ConfigError(f"temperature={hyper['temperature']!r} is invalid for loss 'topk_kl' "
                          "with mode='tail': the teacher's tail mass is only known at T=1; "
                          "use temperature=1.0 or mode='renormalise'")


def get(name: str) -> Callable[..., Array]:
    """Returns the loss called ``name``; raises ConfigError with the closest names if unknown.

    Raises:
      ConfigError: e.g. ``unknown loss 'kdd': did you mean 'kd'? known: attention_transfer,
        ce, ...``.
    """
    try:
        return REGISTRY[name]
    except (KeyError, TypeError):
        known = ', '.join(sorted(REGISTRY))
        hint = closest(str(name), REGISTRY)
        message = f'unknown loss {name!r}: {hint}'
        if not hint.startswith('known:'):
            message += f' known: {known}'
        raise ConfigError(message) from None


def hyper_names(name: str) -> tuple[str, ...]:
    """The hyper-parameters (configurable keyword arguments) of loss ``name``."""
    params = inspect.signature(get(name)).parameters.values()
    return tuple(p.name for p in params
                 if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _DATA_ARGS)


def validate_hyper(name: str, **hyper: Any) -> None:
    """Checks a loss name and its hyper-parameters at config time, before anything compiles.

    Raises ConfigError naming the key for: an unknown loss, an unknown hyper-parameter name
    (with the closest known names), a non-numeric value, ``temperature <= 0``, JSD ``beta`` or
    skew ``alpha`` outside ``[0, 1]``, negative DKD/DIST/RKD weights, an unknown ``topk_kl``
    mode, or ``mode='tail'`` with ``temperature != 1``.

    Examples:
      >>> from jaxdistill import losses
      >>> losses.validate_hyper('jsd', temperature=2.0, beta=0.5)
      >>> losses.validate_hyper('jsd', beta=1.5)
      Traceback (most recent call last):
      ...
      jaxdistill.errors.ConfigError: beta=1.5 is invalid for loss 'jsd': beta must be in [0, 1]; use a weight between 0 and 1
    """  # noqa: E501
    check_hyper(name, **hyper)
    _check_values(name, hyper, strict=True)


def check_hyper(name: str, **hyper: Any) -> None:
    """:func:`validate_hyper` for call time: traced values (schedules under jit) pass unchecked.

    Names are always checked; values only where they are Python numbers or strings.
    """
    known = hyper_names(name)
    for key in hyper:
        if key not in known:
            raise ConfigError(f'loss {name!r} has no hyper-parameter {key!r}: '
                              f'{closest(key, known)} (hyper-parameters: {", ".join(known)})')
    _check_values(name, hyper)
