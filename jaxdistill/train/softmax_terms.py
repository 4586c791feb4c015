"""The softmax terms of a chunk (``ce``, ``kd``, ``forward_kl``) with their student-logit
gradient in closed form: one pass per softmax, one ``[N, V]`` cotangent for all terms.

`hidden_logits._fused` takes each chunk's gradient in its forward scan. Autodiff of the
terms' own code (`Objective._term`) is exact but, at a real vocabulary, lays out more passes
over the chunk's ``[N, V]`` logits than the terms need: XLA materialised ``log p_s``,
``log p_t`` and ``p_t`` separately, computed the teacher's exponentials twice (once inside a
reduction, where XLA:CPU does not vectorise them) and the student's softmax twice (once for
the cross-entropy, once for the KL). Here (benchmarks/NOTES.md 16):

* each softmax is ``e = exp(z - max z)`` formed once and its row sum ``s`` (``p = e / s``,
  ``logsumexp = max + log s``), the student's shared by every term at the same temperature;
* ``KL(p_t || p_s) = sum p_t (z_t - z_s) - lse_t + lse_s`` (as ``sum p_t = 1``), with
  ``p_t = exp(z_t - lse_t)`` formed again from ``z_t`` inside the product: no
  log-probabilities formed, once per temperature (``kd`` and ``forward_kl`` at the same
  temperature share it); its row sum is a matrix-vector product with ones over the written
  product (`_rowsum`): XLA:CPU's reduction of the fused three-array product cost more than
  writing it and summing it by a dot (benchmarks/NOTES.md 16);
* the gradient of ``sum_i w_i sum_n m_in value_in`` with respect to the student's logits is
  ``sum_T c_T e_sT - sum_T c'_T e_tT - onehot(y) * c_ce``, per-token coefficients times the
  exponentials above, written once: ``ce`` gives ``p_s - onehot(y)``, ``kd`` at temperature
  ``T`` gives ``T (p_sT - p_tT)``, ``forward_kl`` ``(p_sT - p_tT) / T``.

Values and gradients equal the autodiff ones to float32 rounding (tests/test_softmax_terms.py,
against `hidden_logits._chunk_sums` and float64 numpy); identical student and teacher logits
give exactly 0 for the KL terms, in value and gradient, as the dense path's do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

NAMES = ('ce', 'kd', 'forward_kl')
BLOCK = 4096  # the longest run of a row sum accumulated in sequence (`_rowsum`)
MIN_BLOCK = 256


def plan(objective, order, step) -> tuple[tuple[str, float], ...] | None:
    """``[(name, temperature)]`` for the terms ``order`` when every one of them has a closed
    form here (a constant temperature, no other hyper-parameter), else None."""
    from jaxdistill.objective import _at

    out = []
    for i in order:
        term = objective.terms[i]
        if term.name not in NAMES or term.hyper or callable(term.temperature):
            return None
        temperature = 1.0 if term.temperature is None else _at(term.temperature, step)
        if term.name == 'ce' and temperature != 1.0:
            return None
        out.append((term.name, float(temperature)))
    return tuple(out)


def _shift(z: jax.Array) -> jax.Array:
    """``[N, 1]`` row maxima of ``z``; a row of ``-inf`` shifts by 0 (as `jax.nn.logsumexp`)."""
    shift = jnp.max(z, axis=-1, keepdims=True)
    return jax.lax.stop_gradient(jnp.where(jnp.isfinite(shift), shift, 0.0))


def _softmax(z: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
    """``(e, s, lse)``: ``e = exp(z - max z)`` (the one ``[N, V]`` array kept), its row sum
    ``s`` and the logsumexp, ``[N, 1]`` each."""
    shift = _shift(z)
    e = jnp.exp(z - shift)
    s = jnp.sum(e, axis=-1, keepdims=True)
    return e, s, shift + jnp.log(s)


def _kl(zt: jax.Array, zs: jax.Array, lse_t: jax.Array, lse_s: jax.Array) -> jax.Array:
    """``[N]`` ``KL(softmax(zt) || softmax(zs)) = sum p_t (zt - zs) - lse_t + lse_s``, with
    ``p_t = exp(zt - lse_t)`` formed again inside the product from ``zt`` (read anyway)
    rather than read from the teacher's ``e``: one ``[N, V]`` read less (bytes accessed
    8.05 -> 7.92 GB at the benchmark's shapes; benchmarks/NOTES.md 16)."""
    return (_rowsum(jnp.exp(zt - lse_t) * (zt - zs)) - lse_t + lse_s)[:, 0]


def _rowsum(x: jax.Array) -> jax.Array:
    """``[N, 1]`` sums of the rows of ``x`` ``[N, V]`` as matrix-vector products with ones, in
    blocks of at most `BLOCK` entries (then a sum over the blocks).

    For the KL's ``p_t (z_t - z_s)``, writing the product and summing it by a dot costs less
    than XLA:CPU's fused reduction of it (KD + CE chunk at ``[256, 128256]``: 131 -> 121 ms
    CPU; benchmarks/NOTES.md 16). The softmaxes' own sums stay reductions (there the dot was
    3 ms slower in place). One dot over a whole row accumulates 128k terms in sequence
    (relative error 1.8e-5 against float64; the reduction's 1e-7); blocks of 4,008 keep it at
    4e-7 for the same time. A vocabulary with no divisor from `MIN_BLOCK` up to `BLOCK` (a
    large prime) takes the reduction.
    """
    n, vocab = x.shape
    block = next(b for b in range(min(vocab, BLOCK), 0, -1) if vocab % b == 0)
    if block < min(vocab, MIN_BLOCK):
        return jnp.sum(x, axis=-1, keepdims=True)
    partial = jnp.dot(x.reshape(n, vocab // block, block), jnp.ones((block,), x.dtype),
                      precision=jax.lax.Precision.HIGHEST)
    return jnp.sum(partial, axis=-1, keepdims=True)


def _tempered(z: jax.Array, temperature: float) -> jax.Array:
    return z if temperature == 1.0 else z / temperature


def _add(coefs: dict, key, value: jax.Array) -> None:
    coefs[key] = coefs[key] + value if key in coefs else value


def chunk(terms: tuple[tuple[str, float], ...], zs: jax.Array, zt: Any, targets: jax.Array,
          masks: jax.Array, weights: jax.Array) -> tuple[jax.Array, jax.Array]:
    """``(sums, grad)``: ``sums[j]`` = term ``j``'s sum over the chunk's valid tokens
    (``masks[:, j]``), ``grad`` = the gradient of ``weights @ sums`` with respect to the
    student's float32 logits ``zs`` ``[N, V]``. ``zt``: the teacher's logits ``[N, V]``
    (None when no term needs them); ``targets``: integer labels ``[N]``."""
    vocab = zs.shape[-1]
    student = {}  # temperature -> (e, s, lse): each softmax formed once
    teacher = {}  # temperature -> (e, s, KL(p_t || p_s)) [N]
    coefs = {}  # ('s' | 't', temperature) -> [N, 1]: the gradient is sum coef * e
    sums = []
    onehot = jnp.zeros(zs.shape[:-1], jnp.float32)
    for j, (name, temperature) in enumerate(terms):
        m = masks[:, j]
        zs_t = _tempered(zs, temperature)
        if temperature not in student:
            student[temperature] = _softmax(zs_t)
        es, ss, lse_s = student[temperature]
        if name == 'ce':  # lse(z) - z[y]; a label outside [0, V) selects nothing: 0
            m = m & (targets >= 0) & (targets < vocab)
            picked = jnp.take_along_axis(zs, jnp.where(m, targets, 0)[:, None], -1)
            value = (lse_s - picked)[:, 0]
            coef = jnp.where(m, weights[j], 0.0)
            _add(coefs, ('s', temperature), coef[:, None] / ss)
            onehot = onehot + coef
        else:
            if temperature not in teacher:
                zt_t = _tempered(zt, temperature)
                et, st, lse_t = _softmax(zt_t)
                teacher[temperature] = et, st, _kl(zt_t, zs_t, lse_t, lse_s)
            _, st, kl = teacher[temperature]
            scale = temperature ** 2 if name == 'kd' else 1.0
            value = scale * kl
            coef = jnp.where(m, weights[j] * scale / temperature, 0.0)[:, None]
            _add(coefs, ('s', temperature), coef / ss)
            _add(coefs, ('t', temperature), -coef / st)
        sums.append(jnp.sum(jnp.where(m, value, 0.0)))
    grad = sum(c * (student if side == 's' else teacher)[t][0] for (side, t), c in coefs.items())
    hit = jnp.arange(vocab)[None, :] == targets[:, None]
    grad = grad - jnp.where(hit, onehot[:, None], 0.0)
    return jnp.stack(sums), grad
