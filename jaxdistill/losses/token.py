"""Memory-efficient token-level distillation for language models.

A naive token-level KD on ``[B, T, V]`` logits holds several ``B*T*V`` float32 arrays at once
(both log-softmaxes, the probabilities, the per-entry terms, then their cotangents). Two ways
around it, both numerically the same loss as :mod:`jaxdistill.losses` (to float32 rounding,
values and gradients), for every loss registered with per-entry ``terms``:

* **Chunked** (:func:`chunked_token_loss`, :func:`chunked_kd_from_hidden`): the flattened tokens
  are processed ``chunk_size`` at a time with ``lax.map``; each chunk body is wrapped in
  ``jax.checkpoint`` so the backward pass recomputes one chunk's softmax instead of storing all
  of them. From hidden states, the logits ``h @ W`` are recomputed per chunk, so no
  ``[B, T, V]`` array exists at all: peak memory is ``O(chunk_size * V)`` plus the inputs.
* **Vocabulary-sharded** (:func:`vocab_sharded_loss`): logits sharded along a mesh axis (tensor
  parallelism over the LM head). Each device computes on its ``V / n`` slice; only per-token
  statistics (max, sum of exponentials, the divergence's partial sums) cross devices through
  ``lax.pmax``/``lax.psum``. Full logits are never gathered.

Masks here are **token masks** (``where.shape == logits.shape[:-1]``): masked tokens give 0.
The vocabulary axis is the last one.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from jaxdistill.errors import ConfigError
from jaxdistill.losses import divergences  # noqa: F401  (registers the per-entry losses)
from jaxdistill.losses.core import check_logits, check_same_vocab, upcast
from jaxdistill.losses.registry import POINTWISE, check_hyper, get

Array = jax.Array
ArrayLike = jax.typing.ArrayLike

TOKEN_LOSSES = tuple(POINTWISE)
"""The built-in losses these paths support: every per-token sum over the vocabulary (kd, jsd,
...). A loss registered later with ``terms=`` is supported too (`registry.POINTWISE`)."""

_REDUCTIONS = ('none', 'sum')


def _check_config(loss: str, temperature: float, reduction: str, hyper: dict[str, Any]):
    check_hyper(loss, temperature=temperature, **hyper)
    if loss not in POINTWISE:
        raise ConfigError(f'loss {loss!r} has no chunked/vocab-sharded form: use one of '
                          f'{", ".join(POINTWISE)}')
    if reduction not in _REDUCTIONS:
        raise ConfigError(f'reduction={reduction!r} is invalid: use one of {_REDUCTIONS}')


def _token_mask(where: ArrayLike | None, token_shape: tuple[int, ...]) -> Array:
    if where is None:
        return jnp.ones(token_shape, bool)
    where = jnp.asarray(where, bool)
    if where.shape != token_shape:
        raise ConfigError(f'where shape {where.shape} != token shape {token_shape}: these '
                          'paths take a token mask (the logits shape without the vocabulary)')
    return where


def _reduce(per_token: Array, reduction: str) -> Array:
    return jnp.sum(per_token) if reduction == 'sum' else per_token


def _map_chunks(body, chunk_size: int, n_tokens: int, *arrays: Array) -> Array:
    """Applies ``body`` to ``chunk_size`` rows of each ``[n_tokens, ...]`` array at a time.

    ``body`` returns one value per row. It runs under ``jax.checkpoint``: the backward pass
    recomputes a chunk's intermediates rather than keeping every chunk's. Rows are padded to
    a multiple of ``chunk_size`` (a copy of the inputs: pick a divisor of ``B * T``).
    """
    if not isinstance(chunk_size, int) or chunk_size < 1:
        raise ConfigError(f'chunk_size={chunk_size!r} is invalid: use a positive integer '
                          '(e.g. 1024; memory grows with chunk_size * vocab)')
    chunk_size = min(chunk_size, n_tokens)
    n_chunks = -(-n_tokens // chunk_size)
    pad = n_chunks * chunk_size - n_tokens
    if pad:
        arrays = tuple(jnp.pad(a, [(0, pad)] + [(0, 0)] * (a.ndim - 1)) for a in arrays)
    chunks = tuple(a.reshape(n_chunks, chunk_size, *a.shape[1:]) for a in arrays)
    out = jax.lax.map(jax.checkpoint(lambda xs: body(*xs)), chunks)
    return out.reshape(-1)[:n_tokens]


def chunked_token_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *, loss: str = 'kd',
                       temperature: float = 1.0, where: ArrayLike | None = None,
                       chunk_size: int = 1024, reduction: str = 'none', **hyper: Any) -> Array:
    """A :data:`TOKEN_LOSSES` loss on ``[..., V]`` logits, ``chunk_size`` tokens at a time.

    The inputs (and the gradient w.r.t. the student logits) are ``B*T*V`` arrays anyway;
    what this saves is every intermediate of the naive path, which is then chunk-sized.

    Args:
      student_logits: ``[..., V]`` student logits (any float dtype; computed in float32).
      teacher_logits: ``[..., V]`` teacher logits.
      loss: a name in :data:`TOKEN_LOSSES` (``kd``, ``forward_kl``, ``reverse_kl``, ``jsd``, ...).
      temperature: softmax temperature, as in :mod:`jaxdistill.losses`.
      where: token mask, shape ``logits.shape[:-1]``; masked tokens give 0.
      chunk_size: tokens per chunk.
      reduction: ``'none'`` (per-token, ``logits.shape[:-1]``) or ``'sum'`` (masked sum; divide
        by the global valid-token count, e.g. with :func:`jaxdistill.losses.token_mean`).
      **hyper: the loss's hyper-parameters (``beta`` for ``jsd``, ``alpha`` for skew losses).
    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill.losses import token
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(token.chunked_token_loss(zs, zt, temperature=2.0, chunk_size=1))  # = losses.kd
      [0.1076 1.0258]
    """
    _check_config(loss, temperature, reduction, hyper)
    zs, zt = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
    check_logits(zs, zt)
    token_shape, vocab = zs.shape[:-1], zs.shape[-1]
    mask = _token_mask(where, token_shape).reshape(-1)
    fn = get(loss)

    def body(s, t, m):
        return fn(s, t, temperature=temperature, where=m, **hyper)

    n_tokens = mask.shape[0]
    out = _map_chunks(body, chunk_size, n_tokens, zs.reshape(-1, vocab), zt.reshape(-1, vocab),
                      mask)
    return _reduce(out.reshape(token_shape), reduction)


def chunked_kd_from_hidden(student_hidden: ArrayLike, student_w: ArrayLike,
                           teacher_hidden: ArrayLike, teacher_w: ArrayLike, *, loss: str = 'kd',
                           temperature: float = 1.0, where: ArrayLike | None = None,
                           chunk_size: int = 1024, reduction: str = 'none',
                           student_bias: ArrayLike | None = None,
                           teacher_bias: ArrayLike | None = None, **hyper: Any) -> Array:
    """Token-level KD from final hidden states and output projections, never forming logits.

    Per chunk of tokens: ``z = h @ W (+ b)`` in float32 (``preferred_element_type``, so bf16
    weights are not copied to float32), then the loss. Peak memory is ``O(chunk_size * V)``
    and does not grow with ``B * T``; gradients flow to ``student_hidden``, ``student_w`` and
    ``student_bias`` (and to the teacher's arguments only if you differentiate them; put the
    teacher under ``stop_gradient`` in the train step as usual).

    Args:
      student_hidden: ``[..., d_s]`` student final hidden states (after the final norm).
      student_w: ``[d_s, V]`` student output projection (unembedding; transpose a tied
        embedding table).
      teacher_hidden: ``[..., d_t]`` teacher hidden states, same leading shape.
      teacher_w: ``[d_t, V]`` teacher output projection.
      loss, temperature, where, chunk_size, reduction, **hyper: as in
        :func:`chunked_token_loss`.
      student_bias, teacher_bias: optional ``[V]`` output biases.

    Returns:
      Per-token losses of shape ``student_hidden.shape[:-1]``, or their masked sum.
    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill.losses import token
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> eye = jnp.eye(2)  # hidden states that pick the rows of W: the logits are W
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(token.chunked_kd_from_hidden(eye, zs, eye, zt, temperature=2.0, chunk_size=1))
      [0.1076 1.0258]
    """
    _check_config(loss, temperature, reduction, hyper)
    h_s, h_t = jnp.asarray(student_hidden), jnp.asarray(teacher_hidden)
    w_s, w_t = jnp.asarray(student_w), jnp.asarray(teacher_w)
    for side, h, w in (('student', h_s, w_s), ('teacher', h_t, w_t)):
        if w.ndim != 2 or h.shape[-1] != w.shape[0]:
            raise ConfigError(f'{side}_hidden {h.shape} does not match {side}_w {w.shape}: '
                              'pass the [d_model, vocab] output projection')
    check_same_vocab(w_s.shape[1], w_t.shape[1])
    if h_s.shape[:-1] != h_t.shape[:-1]:
        raise ConfigError(f'student_hidden {h_s.shape} and teacher_hidden {h_t.shape} differ '
                          'in their token shape: pass hidden states of the same tokens')
    token_shape = h_s.shape[:-1]
    mask = _token_mask(where, token_shape).reshape(-1)
    fn = get(loss)
    dtype = jnp.promote_types(jnp.result_type(h_s, w_s), jnp.float32)
    project = functools.partial(jnp.dot, preferred_element_type=dtype)

    def body(hs, ht, m):
        zs, zt = project(hs, w_s), project(ht, w_t)
        if student_bias is not None:
            zs = zs + student_bias
        if teacher_bias is not None:
            zt = zt + teacher_bias
        return fn(zs, zt, temperature=temperature, where=m, **hyper)

    out = _map_chunks(body, chunk_size, mask.shape[0], h_s.reshape(-1, h_s.shape[-1]),
                      h_t.reshape(-1, h_t.shape[-1]), mask)
    return _reduce(out.reshape(token_shape), reduction)


def _sharded_log_softmax(z: Array, axis_name: str) -> tuple[Array, Array]:
    """``(log p, p)`` of the local vocabulary slice; statistics reduced across ``axis_name``."""
    local_max = jax.lax.stop_gradient(jnp.max(z, axis=-1, keepdims=True))
    shift = jax.lax.pmax(local_max, axis_name)
    sumexp = jax.lax.psum(jnp.sum(jnp.exp(z - shift), axis=-1, keepdims=True), axis_name)
    logp = z - shift - jnp.log(sumexp)
    return logp, jnp.exp(logp)


def vocab_sharded_loss(student_logits: ArrayLike, teacher_logits: ArrayLike, *, mesh: Mesh,
                       vocab_axis: str = 'tensor', token_axis: str | tuple[str, ...] | None = None,
                       loss: str = 'kd', temperature: float = 1.0, where: ArrayLike | None = None,
                       reduction: str = 'none', **hyper: Any) -> Array:
    """A :data:`TOKEN_LOSSES` loss on logits whose vocabulary is sharded over ``vocab_axis``.

    Runs under ``jax.shard_map``: each device holds ``[tokens..., V / n]``; the softmax max
    (``lax.pmax``, no gradient needed), the sum of exponentials and the divergence's per-token
    partial sums (``lax.psum``) are the only cross-device traffic, ``O(tokens)`` per call.
    Call it inside ``jax.jit`` with logits already sharded that way to avoid resharding. With
    an all-``Explicit`` mesh (``jax.make_mesh``'s default in jax 0.10) call the jitted function
    under ``jax.set_mesh(mesh)``, as jax requires for explicit sharding; ``Auto`` meshes need
    no context.

    Args:
      student_logits: ``[..., V]`` logits, ``V`` divisible by the size of ``vocab_axis``.
      teacher_logits: same shape.
      mesh: the device mesh (explicit, never looked up from context).
      vocab_axis: mesh axis the vocabulary is split over.
      token_axis: mesh axis (or axes) the leading (batch) dimension is split over, e.g.
        ``'data'``; None keeps it replicated.
      loss, temperature, where, reduction, **hyper: as in :func:`chunked_token_loss`.

    Returns:
      Per-token losses ``logits.shape[:-1]`` (sharded like the logits' leading axis), or
      their masked sum.
    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill.losses import token
      >>> zs = jnp.array([[0.5, -1.0, 2.0, 0.0], [1.5, 0.2, -0.3, 0.9]])
      >>> zt = jnp.array([[1.0, -0.5, 1.5, 0.3], [-0.2, 2.2, 0.1, 0.4]])
      >>> import jax, numpy as np
      >>> mesh = jax.sharding.Mesh(np.array(jax.devices()[:1]), ('tensor',))  # one shard
      >>> jnp.set_printoptions(precision=4, suppress=True)
      >>> print(token.vocab_sharded_loss(zs, zt, mesh=mesh, temperature=2.0))
      [0.1076 1.0258]
    """
    _check_config(loss, temperature, reduction, hyper)
    zs, zt = jnp.asarray(student_logits), jnp.asarray(teacher_logits)
    check_logits(zs, zt)
    if vocab_axis not in mesh.shape:
        raise ConfigError(f'vocab_axis={vocab_axis!r} is not a mesh axis: use one of '
                          f'{tuple(mesh.shape)}')
    n_shards = mesh.shape[vocab_axis]
    if zs.shape[-1] % n_shards:
        raise ConfigError(f'vocab {zs.shape[-1]} is not divisible by mesh axis {vocab_axis!r} '
                          f'of size {n_shards}: change the mesh, or use an output layer whose '
                          f'size is a multiple of {n_shards}')
    mask = _token_mask(where, zs.shape[:-1])
    token_spec = PartitionSpec(token_axis, *([None] * (zs.ndim - 2)))
    logit_spec = PartitionSpec(*token_spec, vocab_axis)
    terms_fn = POINTWISE[loss]

    def local(s, t, m):
        logp_s, p_s = _sharded_log_softmax(upcast(s) / temperature, vocab_axis)
        logp_t, p_t = _sharded_log_softmax(upcast(t) / temperature, vocab_axis)
        terms = terms_fn(logp_s, p_s, logp_t, p_t, temperature=temperature, **hyper)
        per_token = jax.lax.psum(jnp.sum(terms, axis=-1), vocab_axis)
        return jnp.where(m, per_token, 0.0)

    if all(t == AxisType.Explicit for t in mesh.axis_types):
        # Explicit axes (jax.make_mesh's default) need inputs already laid out as in_specs;
        # Auto axes are resharded by shard_map itself. reshard is a no-op when they already are.
        zs, zt = (jax.reshard(x, NamedSharding(mesh, logit_spec)) for x in (zs, zt))
        mask = jax.reshard(mask, NamedSharding(mesh, token_spec))
    sharded = jax.shard_map(local, mesh=mesh, in_specs=(logit_spec, logit_spec, token_spec),
                            out_specs=token_spec)
    return _reduce(sharded(zs, zt, mask), reduction)
