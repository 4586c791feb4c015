"""Relational losses: relations between the examples of a batch; one scalar per batch.

Only relations are compared, so the student's and the teacher's embedding widths may differ
(no projection). Both are registered ``relational`` and ``batch_level``.
"""

from __future__ import annotations

import jax.numpy as jnp
import optax
from jax import Array
from jax.typing import ArrayLike

from jaxdistill.errors import ConfigError
from jaxdistill.losses.core import _TINY, _masked_mean, _safe_norm, upcast
from jaxdistill.losses.registry import NON_NEGATIVE, Doc, check_values, register


def rkd(student_embeddings: ArrayLike, teacher_embeddings: ArrayLike, *,
        distance_weight: float = 25.0, angle_weight: float = 50.0,
        where: ArrayLike | None = None) -> Array:
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> x = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])
      >>> print(f'{losses.rkd(x, 3.0 * x):.4f}')  # scale-free relations: the same geometry
      0.0000
      >>> print(f'{losses.rkd(x, x * jnp.array([1.0, 0.5])):.4f}')  # squashed: other angles
      1.5484

    References:
      Park, Kim, Lu, Cho, `Relational Knowledge Distillation
      <https://arxiv.org/abs/1904.05068>`_, CVPR 2019.
    """
    check_values('rkd', dict(distance_weight=distance_weight, angle_weight=angle_weight))
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


def similarity_mse(student_embeddings: ArrayLike, teacher_embeddings: ArrayLike, *,
                   where: ArrayLike | None = None) -> Array:
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

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> x_s = jnp.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
      >>> x_t = jnp.array([[1.0, 0.0, 0.0], [2.0, 0.0, 0.0], [1.0, 0.0, 0.0]])
      >>> print(f'{losses.similarity_mse(x_s, x_t):.4f}')  # (1 + 2 (1 - 0.7071)^2) / 3
      0.3905

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




register('rkd', rkd, kind='relational', batch_level=True,
         rules={'distance_weight': NON_NEGATIVE, 'angle_weight': NON_NEGATIVE}, doc=Doc(
             '**scalar** `w_D·mean_{i≠j} Huber(ψ_D^s − ψ_D^t) + '
             'w_A·mean_{i,j,k distinct} Huber(ψ_A^s − ψ_A^t)`',
             'transfer the geometry of an embedding batch; widths may differ',
             'Park et al. 2019, [arXiv:1904.05068](https://arxiv.org/abs/1904.05068)',
             'distances normalised by their mean; `w_D = 25`, `w_A = 50` as in the paper; '
             'memory `N²d + N³`'))
register('similarity_mse', similarity_mse, kind='relational', batch_level=True, doc=Doc(
    '**scalar** `mean_{i≠j} (cos(x^s_i, x^s_j) − cos(x^t_i, x^t_j))²`',
    'sentence embeddings: match which examples the teacher finds similar (what Spearman / '
    'nearest-neighbour evaluations score)',
    'after Tung & Mori 2019, [arXiv:1907.09682](https://arxiv.org/abs/1907.09682)',
    'no projection; bounded `[0, 4]`; memory `N²d`; `where=` an example mask `[N]`'))
