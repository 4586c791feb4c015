"""The label term: softmax cross-entropy with integer labels (and label probabilities).

``ce`` is the ``(1 - alpha) * ce`` term of the combined objective. Its logsumexp is
`_logsumexp`'s, the op ``kd`` and ``topk_kl`` use too, so XLA computes it once per step.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jax import Array
from jax.typing import ArrayLike

from jaxdistill.errors import ConfigError
from jaxdistill.losses.core import (
    _axis,
    _log_softmax,
    _logsumexp,
    _mask,
    _masked_sum,
    _one_hot_mask,
    _zero_empty_rows,
    upcast,
)
from jaxdistill.losses.registry import Doc, register


def softmax_cross_entropy(logits: ArrayLike, labels: ArrayLike, *, where: ArrayLike | None = None,
                          axis: int = -1) -> Array:
    r"""Cross-entropy with integer labels, :math:`-\log \mathrm{softmax}(z)_y`, per example.

    The ``(1 - alpha) * ce`` term of the combined objective (``alpha`` weights the
    distillation term). Same ``where`` convention as the distillation losses: masked rows
    (padding) give exactly 0. A label outside ``[0, V)`` (e.g. -100 padding) selects no
    class, so its row is meaningless: mask such rows with ``where``.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
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




def soft_cross_entropy(logits: ArrayLike, label_probs: ArrayLike) -> Array:
    r"""Cross-entropy with label probabilities (one-hot or mixed by mixup), per example.

    :math:`-\sum_c y_c \log \mathrm{softmax}(z)_c` in float32 over the last axis; what the
    objective's ``ce`` term computes when the targets are ``[B, C]`` probabilities.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> logits = jnp.array([[1.2, -0.8, -0.5], [0.9, -1.2, 1.1]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(losses.soft_cross_entropy(logits, jnp.array([[1.0, 0, 0], [0, 1.0, 0]])))
      [0.2761 2.9518]
    """
    return optax.softmax_cross_entropy(jnp.asarray(logits).astype(jnp.float32),
                                       jnp.asarray(label_probs).astype(jnp.float32))


register('ce', softmax_cross_entropy, kind='label', needs_labels=True,
         soft_labels=soft_cross_entropy, doc=Doc(
             '`−log softmax(z)_y`', 'the `(1 − α)` label term',
             notes='alias `softmax_cross_entropy(logits, labels, *, where=None, axis=-1)`, '
             'integer labels; label probabilities (mixup) through `soft_cross_entropy`'))
