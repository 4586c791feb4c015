"""Losses made of named parts: DKD (target / non-target classes) and DIST (inter / intra).

Each has a ``*_parts`` function returning ``{part: value, ..., 'total': value}`` (registered
as the loss's ``parts``) and the loss itself, its ``'total'``.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxdistill.losses.core import (
    _log_softmax,
    _logit_inputs,
    _logsumexp,
    _masked_mean,
    _masked_sum,
    _one_hot_mask,
    _safe_norm,
    _tempered,
    _zero_empty_rows,
)
from jaxdistill.losses.registry import NON_NEGATIVE, Doc, check_values, register

# DIST's Pearson correlation adds this to the norm product (official code, kept for parity).
_DIST_EPS = 1e-8


def dkd_parts(student_logits: ArrayLike, teacher_logits: ArrayLike, *, labels: ArrayLike,
              temperature: float = 1.0, where: ArrayLike | None = None, axis: int = -1,
              alpha: float = 1.0, beta: float = 8.0) -> dict[str, Array]:
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> parts = losses.dkd_parts(zs, zt, labels=jnp.array([2, 1]), temperature=4.0)
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> for name in ('tckd', 'nckd', 'total'):  # LOSSES.md: tckd 0.095542 0.755401, nckd
      ...     print(name, parts[name])   # 0.004462 0.358360, total 0.131234 3.622279
      tckd [0.0955 0.7554]
      nckd [0.0045 0.3584]
      total [0.1312 3.6223]

    References:
      Zhao, Cui, Song, Qiu, Liang, `Decoupled Knowledge Distillation
      <https://arxiv.org/abs/2203.08679>`_, CVPR 2022.
    """
    check_values('dkd', dict(temperature=temperature, alpha=alpha, beta=beta))
    zs, zt, axis, mask = _logit_inputs(student_logits, teacher_logits, where, axis)
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


def dkd(student_logits: ArrayLike, teacher_logits: ArrayLike, *, labels: ArrayLike,
        temperature: float = 1.0, where: ArrayLike | None = None, axis: int = -1,
        alpha: float = 1.0, beta: float = 8.0) -> Array:
    r"""Decoupled KD :math:`\alpha \, TCKD + \beta \, NCKD` per example; see :func:`dkd_parts`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> labels = jnp.array([2, 1])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.dkd(zs, zt, labels=labels, temperature=4.0))  # 0.131234 3.622279
      [0.1312 3.6223]

    References:
      Zhao et al., Decoupled Knowledge Distillation, CVPR 2022.
    """
    return dkd_parts(student_logits, teacher_logits, labels=labels, temperature=temperature,
                     where=where, axis=axis, alpha=alpha, beta=beta)['total']


def _pearson(a: Array, b: Array, mask: Array, axis: int) -> Array:
    """Pearson correlation along ``axis`` over the masked entries, DIST's ``+ eps`` form."""
    n = jnp.maximum(jnp.sum(mask, axis=axis, keepdims=True), 1)
    a = jnp.where(mask, a - jnp.sum(jnp.where(mask, a, 0.0), axis, keepdims=True) / n, 0.0)
    b = jnp.where(mask, b - jnp.sum(jnp.where(mask, b, 0.0), axis, keepdims=True) / n, 0.0)
    return jnp.sum(a * b, axis=axis) / (_safe_norm(a, axis) * _safe_norm(b, axis) + _DIST_EPS)


def dist_parts(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
               where: ArrayLike | None = None, axis: int = -1, beta: float = 1.0,
               gamma: float = 1.0) -> dict[str, Array]:
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0, 0.3], [1.5, 0.2, -0.3, 0.9, -1.1],
      ...                 [0.0, 0.4, 0.8, -0.6, 1.2], [-0.7, 1.3, 0.2, 0.5, 0.0]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3, 0.0], [-0.2, 2.2, 0.1, 0.4, -0.8],
      ...                 [0.3, 0.1, 1.6, -1.0, 0.9], [-1.2, 0.8, 0.6, 1.1, -0.3]])
      >>> parts = losses.dist_parts(zs, zt)  # LOSSES.md: inter 0.512408, intra 0.601600
      >>> print(f"{parts['inter']:.4f} {parts['intra']:.4f} {parts['total']:.4f}")
      0.5124 0.6016 1.1140

    References:
      Huang, You, Wang, Qian, Xu, `Knowledge Distillation from A Stronger Teacher
      <https://arxiv.org/abs/2205.10536>`_, NeurIPS 2022.
    """
    check_values('dist', dict(temperature=temperature, beta=beta, gamma=gamma))
    zs, zt, axis, mask = _logit_inputs(student_logits, teacher_logits, where, axis)
    mask = jnp.ones(zs.shape, bool) if mask is None else mask
    vocab = zs.shape[axis]
    zs, zt, mask = (jnp.moveaxis(x, axis, -1).reshape(-1, vocab) for x in (zs, zt, mask))
    _, p_s = _log_softmax(_tempered(zs, temperature), -1, mask)
    _, p_t = _log_softmax(_tempered(zt, temperature), -1, mask)
    inter = _masked_mean(1.0 - _pearson(p_s, p_t, mask, -1), None, jnp.any(mask, axis=-1))
    intra = _masked_mean(1.0 - _pearson(p_s, p_t, mask, 0), None, jnp.any(mask, axis=0))
    total = temperature**2 * (beta * inter + gamma * intra)
    return {'inter': inter, 'intra': intra, 'total': total}


def dist(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
         where: ArrayLike | None = None, axis: int = -1, beta: float = 1.0,
         gamma: float = 1.0) -> Array:
    r"""DIST loss :math:`T^2 (\beta \, inter + \gamma \, intra)`: a scalar; see :func:`dist_parts`.

    Batch-level: it is *not* per example, so do not pass it through :func:`token_mean`, and
    note that its value depends on how the batch is split across micro-batches.

    Examples:
      >>> import jax
      >>> from jaxdistill import losses
      >>> zs, zt = jax.random.normal(jax.random.key(0), (2, 8, 10))  # 8 examples, 10 classes
      >>> total = losses.dist(zs, zt, temperature=4.0)
      >>> bool(total == losses.dist_parts(zs, zt, temperature=4.0)['total']), total.shape
      (True, ())
      >>> # LOSSES.md at T = 4 (its 4 x 5 logits; see dist_parts): 11.968483

    References:
      Huang et al., Knowledge Distillation from A Stronger Teacher, NeurIPS 2022.
    """
    return dist_parts(student_logits, teacher_logits, temperature=temperature, where=where,
                      axis=axis, beta=beta, gamma=gamma)['total']




register('dkd', dkd, needs_labels=True, parts=dkd_parts,
         rules={'alpha': NON_NEGATIVE, 'beta': NON_NEGATIVE}, doc=Doc(
             '`α·TCKD + β·NCKD`; `TCKD = T²·KL([p_t^y, 1−p_t^y] ‖ [p_s^y, 1−p_s^y])`, '
             '`NCKD = T²·KL(p̂_t ‖ p̂_s)` over non-target classes',
             'classification with labels, when KD under-uses the non-target "dark knowledge"',
             'Zhao et al. 2022, [arXiv:2203.08679](https://arxiv.org/abs/2203.08679)',
             'parts unweighted, with `T²`. At T = 1, `TCKD + (1−p_t^y)·NCKD = KD`. Paper uses '
             'T = 4 (β = 8 on CIFAR-100); default here is 1 like every loss'))
register('dist', dist, batch_level=True, parts=dist_parts,
         rules={'beta': NON_NEGATIVE, 'gamma': NON_NEGATIVE}, doc=Doc(
             '**scalar** `T²·(β·inter + γ·intra)`, `inter = mean_i (1 − ρ(P_s[i,:], P_t[i,:]))`, '
             '`intra = mean_j (1 − ρ(P_s[:,j], P_t[:,j]))`',
             'a much stronger teacher: match correlations, not values',
             'Huang et al. 2022, [arXiv:2205.10536](https://arxiv.org/abs/2205.10536)',
             '`ρ` = Pearson with the official `+1e-8` in the denominator'))
