"""Feature losses: tapped hidden states compared position by position.

``feature_mse`` and ``feature_cosine`` take a learned ``projection`` where the student's width
differs from the teacher's (registered ``projected``: the objective creates it);
``attention_transfer`` compares spatial attention maps, so channel counts may differ.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import Array
from jax.typing import ArrayLike

from jaxdistill.errors import ConfigError
from jaxdistill.losses.core import (
    _TINY,
    _axis,
    _mask,
    _masked_mean,
    _safe_norm,
    _zero_empty_rows,
    upcast,
)
from jaxdistill.losses.registry import POSITIVE, Doc, check_values, register


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


def feature_mse(student_features: ArrayLike, teacher_features: ArrayLike, *,
                projection: ArrayLike | None = None, where: ArrayLike | None = None,
                axis: int = -1) -> Array:
    r"""Hint loss :math:`\mathrm{mean}_d (P(h_s) - h_t)^2` per example/token (FitNets).

    Args:
      student_features: ``[..., d_s]`` student hidden states.
      teacher_features: ``[..., d_t]`` teacher hidden states.
      projection: ``[d_s, d_t]`` learned regressor :math:`P`, required when the widths
        differ; a parameter of the student, so it gets gradients through this loss.
      where: token mask (shape without ``axis``; masked rows give 0) or a mask of the feature
        shape (mean over the valid features).
      axis: the feature axis.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> h_s = jnp.array([[1.0, 2.0], [0.0, 0.0]])
      >>> h_t = jnp.array([[1.0, 0.0], [1.0, 1.0]])
      >>> print(losses.feature_mse(h_s, h_t))  # (0 + 4) / 2, (1 + 1) / 2
      [2. 1.]
      >>> wide = jnp.ones((2, 3))  # a [d_s, d_t] projection onto a 3-wide teacher
      >>> print(losses.feature_mse(h_s, jnp.zeros((2, 3)), projection=wide))  # (1 + 2)^2
      [9. 0.]

    References:
      Romero et al., `FitNets: Hints for Thin Deep Nets <https://arxiv.org/abs/1412.6550>`_,
      ICLR 2015.
    """
    h_s, h_t, mask, axis = _features(student_features, teacher_features, projection, where,
                                     axis)
    return _masked_mean((h_s - h_t) ** 2, axis, mask)


def feature_cosine(student_features: ArrayLike, teacher_features: ArrayLike, *,
                   projection: ArrayLike | None = None, where: ArrayLike | None = None,
                   axis: int = -1, eps: float = 1e-8) -> Array:
    r"""Cosine embedding loss :math:`1 - \cos(P(h_s), h_t)` per example/token (DistilBERT).

    Scale-free, unlike :func:`feature_mse`: only the direction of the hidden state is
    matched. ``cos = <a, b> / max(|a| |b|, eps)``; a zero vector gives loss 1, not NaN.
    Arguments as in :func:`feature_mse`.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> h_s = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 0.0]])
      >>> h_t = jnp.array([[0.0, 1.0], [3.0, 0.0], [1.0, 0.0]])
      >>> print(losses.feature_cosine(h_s, h_t))  # orthogonal, parallel, a zero vector
      [1. 0. 1.]

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


def attention_transfer(student_features: ArrayLike, teacher_features: ArrayLike, *, p: float = 2.0,
                       channel_axis: int = -1, where: ArrayLike | None = None) -> Array:
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> h_s = jnp.array([[[1.0], [0.0]]])            # [B=1, 2 positions, 1 channel]
      >>> h_t = jnp.array([[[0.0, 0.0], [1.0, 1.0]]])  # 2 channels: only the maps meet
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.attention_transfer(h_s, h_t))  # |[1, 0] - [0, 1]|
      [1.4142]

    References:
      Zagoruyko, Komodakis, `Paying More Attention to Attention
      <https://arxiv.org/abs/1612.03928>`_, ICLR 2017.
    """
    check_values('attention_transfer', dict(p=p))
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




register('feature_mse', feature_mse, kind='feature', projected=True, doc=Doc(
    '`mean_d (P(h_s) − h_t)²`', 'FitNets hints on hidden states',
    'Romero et al. 2015, [arXiv:1412.6550](https://arxiv.org/abs/1412.6550)'))
register('feature_cosine', feature_cosine, kind='feature', projected=True,
         rules={'eps': POSITIVE}, doc=Doc(
             '`1 − cos(P(h_s), h_t)`', "DistilBERT's hidden-state alignment; scale-free",
             'Sanh et al. 2019, [arXiv:1910.01108](https://arxiv.org/abs/1910.01108)'))
register('attention_transfer', attention_transfer, kind='feature', rules={'p': POSITIVE},
         doc=Doc('`‖ a_s/‖a_s‖ − a_t/‖a_t‖ ‖₂`, `a = vec(mean_c \\|h\\|^p)`',
                 'CNN feature maps; channel counts may differ',
                 'Zagoruyko & Komodakis 2017, [arXiv:1612.03928](https://arxiv.org/abs/1612.03928)',
                 "NHWC, `channel_axis=-1`; the paper's norm (the reference code uses the mean of "
                 'squares); `where=` an example mask `[B]`'))
