"""Divergences between the student's and the teacher's softmax, and logit regression.

Each per-token divergence is a sum over the vocabulary of per-entry terms of the two
log-softmaxes (``_*_terms``, registered as the loss's ``terms``): the token-level paths
(`jaxdistill.losses.token`) sum the same terms over chunks or vocabulary shards.

Without a mask, ``kd`` and ``forward_kl`` take a hand-written derivative
(`_dense_forward_kl`), and at a constant ``T = 1`` they use the logits themselves, so the
student's logsumexp is the cross-entropy's (benchmarks/NOTES.md 11-12).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import Array
from jax.custom_derivatives import SymbolicZero
from jax.typing import ArrayLike

from jaxdistill.losses.core import (
    _is_concrete,
    _log_mix,
    _log_softmax,
    _logit_inputs,
    _logsumexp,
    _masked_mean,
    _masked_sum,
    _tempered,
)
from jaxdistill.losses.registry import UNIT, Doc, check_values, register
from jaxdistill.losses.sparse import SparseTeacher, topk_kl


# ------------------------------------------------------------------ per-entry divergence terms
# Each maps (log p_s, p_s, log p_t, p_t) at temperature T to per-vocabulary-entry terms whose
# sum over the vocabulary is the loss. losses.token sums them over chunks or vocabulary shards.
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


def _kl_parts(zs: Array, zt: Array, axis: int) -> tuple[Array, Array, Array, Array]:
    """``(kl, p_t, lse_s, lse_t)``, with ``KL = sum p_t (z_t - z_s) - lse_t + lse_s`` (as
    ``sum p_t = 1``): no ``[..., V]`` log-probabilities are formed, only ``p_t`` (the
    logsumexps are the ones the cross-entropy shares)."""
    lse_s, lse_t = _logsumexp(zs, axis, None), _logsumexp(zt, axis, None)
    p_t = jnp.exp(zt - lse_t)
    kl = jnp.sum(p_t * ((zt - lse_t) - (zs - lse_s)), axis=axis)
    return kl, p_t, lse_s, lse_t


@functools.partial(jax.custom_jvp, nondiff_argnums=(2,))
def _dense_forward_kl(zs: Array, zt: Array, axis: int) -> Array:
    """``KL(softmax(zt) || softmax(zs))`` over ``axis``, no mask, with a hand-written
    derivative.

    Autodiff of ``sum p_t (log p_t - log p_s)`` spends one more reduction over the vocabulary
    on ``sum p_t``, which is 1; the derivative here uses that, so the student's gradient is
    ``p_s - p_t`` alone, and the value is `_kl_parts`'s (two fewer ``[..., V]`` arrays at a
    real vocabulary). The student's logsumexp is `_logsumexp`'s (shared with the
    cross-entropy). Identical inputs give exactly 0 in value and gradient.
    """
    return _kl_parts(zs, zt, axis)[0]


def _dense_forward_kl_jvp(axis, primals, tangents):
    # Symbolic zeros: a frozen teacher's logits (under stop_gradient) have no tangent, and
    # an instantiated zero one would still cost the teacher's derivative, over [..., V].
    zs, zt = primals
    dzs, dzt = tangents
    kl, p_t, lse_s, lse_t = _kl_parts(zs, zt, axis)
    tangent = jnp.zeros_like(kl)
    if not isinstance(dzs, SymbolicZero):
        tangent = tangent + jnp.sum((jnp.exp(zs - lse_s) - p_t) * dzs, axis=axis)
    if not isinstance(dzt, SymbolicZero):
        d_teacher = p_t * ((zt - lse_t) - (zs - lse_s) - jnp.expand_dims(kl, axis))
        tangent = tangent + jnp.sum(d_teacher * dzt, axis=axis)
    return kl, tangent


_dense_forward_kl.defjvp(_dense_forward_kl_jvp, symbolic_zeros=True)


def _divergence(name, terms_fn, student_logits, teacher_logits, temperature, where, axis,
                **hyper):
    """The per-entry ``terms_fn`` of the two (masked, tempered) log-softmaxes, summed."""
    check_values(name, dict(temperature=temperature, **hyper))
    zs, zt, axis, mask = _logit_inputs(student_logits, teacher_logits, where, axis)
    if mask is None and name in ('kd', 'forward_kl'):
        kl = _dense_forward_kl(_tempered(zs, temperature), _tempered(zt, temperature), axis)
        return temperature**2 * kl if name == 'kd' else kl
    logp_s, p_s = _log_softmax(_tempered(zs, temperature), axis, mask)
    logp_t, p_t = _log_softmax(_tempered(zt, temperature), axis, mask)
    terms = terms_fn(logp_s, p_s, logp_t, p_t, temperature=temperature, **hyper)
    return _masked_sum(terms, axis, mask)


# ------------------------------------------------------------------------- logit divergences
def kd(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
       where: ArrayLike | None = None, axis: int = -1) -> Array:
    r"""Hinton knowledge distillation: :math:`T^2 \, KL(p_t \| p_s)`, ``p = softmax(z / T)``.

    The :math:`T^2` factor keeps the gradient scale independent of the temperature, so the
    distillation weight need not be retuned when ``T`` changes (Hinton et al., 2015, sec. 2).

    Args:
      student_logits: ``[..., V]`` unnormalised student log-probabilities (any float dtype).
      teacher_logits: same shape as ``student_logits``.
      temperature: softmax temperature ``T > 0``.
      where: token mask (logits shape without ``axis``; masked rows give 0) or vocabulary mask
        (logits shape; masked entries leave both softmaxes). See the package docstring.
      axis: the class (vocabulary) axis.

    Returns:
      Per-example loss, float32 (float64 for float64 inputs), shape ``logits.shape`` without
      ``axis``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.kd(zs, zt, temperature=2.0))  # LOSSES.md: 0.107630 1.025817
      [0.1076 1.0258]

    References:
      Hinton, Vinyals, Dean, `Distilling the Knowledge in a Neural Network
      <https://arxiv.org/abs/1503.02531>`_, 2015.
    """
    return _divergence('kd', _kd_terms, student_logits, teacher_logits,
                       temperature, where, axis)


def _kd_sparse(student_logits: ArrayLike, teacher: SparseTeacher, *,
               temperature: float = 1.0) -> Array:
    """`kd` on a sparse teacher: :math:`T^2` times the renormalised top-k KL."""
    return topk_kl(student_logits, teacher.logprobs, teacher.ids, mode='renormalise',
                   temperature=temperature) * temperature * temperature


def _forward_kl_sparse(student_logits: ArrayLike, teacher: SparseTeacher, *,
                       temperature: float = 1.0) -> Array:
    """`forward_kl` on a sparse teacher: the renormalised top-k KL."""
    return topk_kl(student_logits, teacher.logprobs, teacher.ids, mode='renormalise',
                   temperature=temperature)


def forward_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
               where: ArrayLike | None = None, axis: int = -1) -> Array:
    r"""Forward KL :math:`KL(p_t \| p_s) = \sum_v p_t (\log p_t - \log p_s)`, mode-covering.

    Same as :func:`kd` without the :math:`T^2` factor. Arguments and masks as in :func:`kd`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.forward_kl(zs, zt))  # LOSSES.md (kd T=1): 0.108954 0.980049
      [0.109 0.98 ]

    References:
      Kullback, Leibler, `On Information and Sufficiency
      <https://doi.org/10.1214/aoms/1177729694>`_, 1951.
    """
    return _divergence('forward_kl', _forward_kl_terms, student_logits, teacher_logits,
                       temperature, where, axis)


def reverse_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
               where: ArrayLike | None = None, axis: int = -1) -> Array:
    r"""Reverse KL :math:`KL(p_s \| p_t)`, mode-seeking (MiniLLM).

    The student is penalised for mass where the teacher has little, not for missing teacher
    modes: preferred for generative LMs whose student cannot cover the teacher. Arguments and
    masks as in :func:`kd`; no :math:`T^2` factor.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.reverse_kl(zs, zt))  # LOSSES.md: 0.101419 1.020725
      [0.1014 1.0207]

    References:
      Gu, Dong, Wei, Huang, `MiniLLM: Knowledge Distillation of Large Language Models
      <https://arxiv.org/abs/2306.08543>`_, ICLR 2024.
    """
    return _divergence('reverse_kl', _reverse_kl_terms, student_logits, teacher_logits,
                       temperature, where, axis)


def jsd(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
        where: ArrayLike | None = None, axis: int = -1, beta: float = 0.5) -> Array:
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.jsd(zs, zt, beta=0.5))  # LOSSES.md: 0.026003 0.221266
      [0.026  0.2213]
      >>> print(losses.jsd(zs, zt, beta=0.1))  # LOSSES.md: 0.009695 0.084474
      [0.0097 0.0845]

    References:
      Agarwal et al., `On-Policy Distillation of Language Models: Learning from Self-Generated
      Mistakes <https://arxiv.org/abs/2306.13649>`_ (GKD), ICLR 2024.
    """
    return _divergence('jsd', _jsd_terms, student_logits, teacher_logits,
                       temperature, where, axis, beta=beta)


def skew_kl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
            where: ArrayLike | None = None, axis: int = -1, alpha: float = 0.1) -> Array:
    r"""Skew KL (DistiLLM): :math:`KL(p_t \| \alpha p_t + (1 - \alpha) p_s)`.

    A true KL divergence (not the cross-entropy form, which differs by the teacher entropy):
    it is 0 for identical inputs. Mixing in a little of the teacher bounds the loss and its
    gradient where the student puts no mass. ``alpha = 0`` is :func:`forward_kl`.

    Args:
      alpha: skew coefficient in ``[0, 1]`` (paper default 0.1).

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.skew_kl(zs, zt, alpha=0.1))  # LOSSES.md: 0.086320 0.733550
      [0.0863 0.7335]

    References:
      Ko, Kim, Chen, Yun, `DistiLLM: Towards Streamlined Distillation for Large Language
      Models <https://arxiv.org/abs/2402.03898>`_, ICML 2024.
    """
    return _divergence('skew_kl', _skew_kl_terms, student_logits, teacher_logits,
                       temperature, where, axis, alpha=alpha)


def skew_rkl(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
             where: ArrayLike | None = None, axis: int = -1, alpha: float = 0.1) -> Array:
    r"""Skew reverse KL (DistiLLM): :math:`KL(p_s \| (1 - \alpha) p_t + \alpha p_s)`.

    ``alpha = 0`` is :func:`reverse_kl`. Arguments as in :func:`skew_kl`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.skew_rkl(zs, zt, alpha=0.1))  # LOSSES.md: 0.082769 0.742415
      [0.0828 0.7424]

    References:
      Ko et al., DistiLLM, ICML 2024 (see :func:`skew_kl`).
    """
    return _divergence('skew_rkl', _skew_rkl_terms, student_logits, teacher_logits,
                       temperature, where, axis, alpha=alpha)


def tvd(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
        where: ArrayLike | None = None, axis: int = -1) -> Array:
    r"""Total variation distance :math:`\tfrac12 \sum_v |p_t - p_s|`, bounded in ``[0, 1]``.

    Arguments and masks as in :func:`kd`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.tvd(zs, zt))  # LOSSES.md: 0.220638 0.593888
      [0.2206 0.5939]

    References:
      Wen et al., `f-Divergence Minimization for Sequence-Level Knowledge Distillation
      <https://arxiv.org/abs/2307.15190>`_, ACL 2023.
    """
    return _divergence('tvd', _tvd_terms, student_logits, teacher_logits,
                       temperature, where, axis)


def logit_mse(student_logits: ArrayLike, teacher_logits: ArrayLike, *, temperature: float = 1.0,
              where: ArrayLike | None = None, axis: int = -1) -> Array:
    r"""Logit regression :math:`\mathrm{mean}_v ((z_s - z_t) / T)^2` over the valid entries.

    Matches raw logits, so it also transfers the teacher's logit offsets that a softmax
    ignores. ``temperature`` only rescales (default 1: plain logit matching, as in the paper).
    A vocabulary mask averages over the valid entries only.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.logit_mse(zs, zt))  # (0.25 * 3 + 0.09) / 4, (2.89 + 4 + ...) / 4
      [0.21  1.825]

    References:
      Ba, Caruana, `Do Deep Nets Really Need to be Deep?
      <https://arxiv.org/abs/1312.6184>`_, NeurIPS 2014.
    """
    check_values('logit_mse', dict(temperature=temperature))
    zs, zt, axis, mask = _logit_inputs(student_logits, teacher_logits, where, axis)
    return _masked_mean(((zs - zt) / temperature) ** 2, axis, mask)


# ---------------------------------------------------------------------------- registrations
register('kd', kd, terms=_kd_terms, sparse=_kd_sparse, doc=Doc(
    '`T² · KL(p_t ‖ p_s)`', 'the default: classification, LM token-level KD',
    'Hinton et al. 2015, [arXiv:1503.02531](https://arxiv.org/abs/1503.02531)',
    '`T²` keeps the gradient scale independent of `T`'))
register('forward_kl', forward_kl, terms=_forward_kl_terms, sparse=_forward_kl_sparse, doc=Doc(
    '`KL(p_t ‖ p_s) = Σ p_t (log p_t − log p_s)`',
    'mode-covering: the student should cover every teacher mode', notes='`kd` without `T²`'))
register('reverse_kl', reverse_kl, terms=_reverse_kl_terms, doc=Doc(
    '`KL(p_s ‖ p_t)`', 'mode-seeking, generative LMs with a much smaller student (MiniLLM)',
    'Gu et al. 2024, [arXiv:2306.08543](https://arxiv.org/abs/2306.08543)'))
register('jsd', jsd, terms=_jsd_terms, rules={'beta': UNIT}, doc=Doc(
    '`β·KL(p_t ‖ m) + (1−β)·KL(p_s ‖ m)`, `m = β p_t + (1−β) p_s`',
    'GKD / on-policy distillation; between forward and reverse KL',
    'Agarwal et al. 2024 (GKD), [arXiv:2306.13649](https://arxiv.org/abs/2306.13649)',
    "**TRL's β convention**: β = 0 is `KL(p_t‖p_s)`, β = 1 is `KL(p_s‖p_t)` (special-cased; "
    'the formula itself → 0 there). Symmetric only at β = 0.5'))
register('skew_kl', skew_kl, terms=_skew_kl_terms, rules={'alpha': UNIT}, doc=Doc(
    '`KL(p_t ‖ α p_t + (1−α) p_s)`',
    'DistiLLM: forward KL with a bounded gradient where `p_s ≈ 0`',
    'Ko et al. 2024, [arXiv:2402.03898](https://arxiv.org/abs/2402.03898)',
    'a true KL (0 for identical inputs), not the cross-entropy form'))
register('skew_rkl', skew_rkl, terms=_skew_rkl_terms, rules={'alpha': UNIT}, doc=Doc(
    '`KL(p_s ‖ (1−α) p_t + α p_s)`', "DistiLLM's reverse variant", 'Ko et al. 2024'))
register('tvd', tvd, terms=_tvd_terms, doc=Doc(
    '`½ Σ \\|p_t − p_s\\|`', 'a bounded (`[0, 1]`) symmetric distance',
    'Wen et al. 2023, [arXiv:2307.15190](https://arxiv.org/abs/2307.15190)'))
register('logit_mse', logit_mse, doc=Doc(
    '`mean_v ((z_s − z_t)/T)²`', 'match raw logits, offsets included',
    'Ba & Caruana 2014, [arXiv:1312.6184](https://arxiv.org/abs/1312.6184)',
    'a vocabulary mask averages over valid entries'))
