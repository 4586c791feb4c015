"""Token losses in training without ``[B, T, V]`` logits: ``distill.token_loss``.

A language model's logits are ``hidden @ W`` with ``hidden`` its final normed hidden state
``[B, T, d]`` and ``W`` its output projection ``[d, V]``. At a real vocabulary (V = 128k)
both models' float32 logits, their softmaxes and cotangents dominate a distillation step's
memory. ``distill.token_loss``:

* ``'dense'``: every term on the full logits (the models' own outputs);
* ``'chunked'``: the step taps both decoders' final hidden states (``final_norm``) and their
  output projections; the objective's logit terms are computed ``distill.chunk_size`` tokens
  at a time under ``lax.map`` + ``jax.checkpoint`` (logits recomputed per chunk in the
  backward pass), so no ``[B, T, V]`` array is kept and the models' own logit outputs are
  dead code that XLA drops. Each term is *the same function* as in the dense path
  (`Objective._term` on a chunk), summed over chunks and divided by the whole batch's
  valid-token count, so values and gradients equal the dense ones to float32 rounding.
  A teacher that is not a plain decoder (an ensemble, a protected teacher) gives its dense
  logits (no gradient flows into them), chunked alongside; a cached sparse teacher too.
* ``'vocab_sharded'``: pointwise teacher terms (``kd``, ``jsd``, ...) through
  `jaxdistill.losses.token.vocab_sharded_loss`, the logits split over the mesh's ``tensor``
  axis (``mesh.tensor > 1``), only per-token statistics crossing devices; other terms dense.
* ``'auto'`` (default): ``'chunked'`` when the student is a decoder with a vocabulary of at
  least `AUTO_VOCAB` and every logit term can be chunked, else ``'dense'``.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill.errors import ConfigError

MODES = ('auto', 'dense', 'chunked', 'vocab_sharded')
AUTO_VOCAB = 32768
HIDDEN_TAP = 'final_norm'  # the Decoder's final RMSNorm: its output is the normed hidden state


class HiddenLogits(NamedTuple):
    """Logits ``hidden @ kernel`` that are never formed whole."""

    hidden: jax.Array  # [..., d]
    kernel: jax.Array  # [d, V]

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.hidden.shape[:-1]) + (self.kernel.shape[-1],)

    @property
    def ndim(self) -> int:
        return self.hidden.ndim

    def project(self, hidden: jax.Array) -> jax.Array:
        return jnp.dot(hidden, self.kernel.astype(hidden.dtype),
                       preferred_element_type=jnp.float32)


def head(model) -> Any:
    """The function ``params -> [d, V]`` output projection of a model whose final hidden
    state is tappable at `HIDDEN_TAP`, or None (not a decoder)."""
    from jaxdistill.models.decoder import Decoder, output_projection

    return output_projection if isinstance(getattr(model, 'module', None), Decoder) else None


def _chunkable(objective) -> str | None:
    """Why the objective's logit terms cannot be chunked, or None."""
    if objective.teacher_weights is not None:
        return "distill.ensemble='terms' (teacher logits stacked per teacher)"
    batch = [t.name for t in objective.terms if not t.taps and t.spec.batch_level]
    return f'batch-level loss {batch[0]!r}' if batch else None


def resolve(config, student, objective, vocab: int | None, mesh_shape: dict) -> str:
    """``distill.token_loss`` made concrete for this run (one-line errors for what cannot)."""
    mode = config.distill.token_loss
    if mode not in MODES:
        raise ConfigError(f'distill.token_loss={mode!r} is not one of {list(MODES)}')
    if config.distill.chunk_size < 1:
        raise ConfigError(f'distill.chunk_size={config.distill.chunk_size} must be positive '
                          '(tokens per chunk, e.g. 1024)')
    lm = config.task == 'lm'
    why = _chunkable(objective)
    if mode == 'auto':
        ok = lm and head(student) is not None and why is None and (vocab or 0) >= AUTO_VOCAB
        return 'chunked' if ok else 'dense'
    if mode == 'chunked':
        if not lm or head(student) is None:
            raise ConfigError("distill.token_loss='chunked' needs task='lm' and a decoder "
                              "student (its final hidden state and head); use 'dense'")
        if why:
            raise ConfigError(f"distill.token_loss='chunked' cannot split {why} by tokens: "
                              "use 'dense'")
    if mode == 'vocab_sharded':
        if not lm:
            raise ConfigError("distill.token_loss='vocab_sharded' needs task='lm'")
        if mesh_shape.get('tensor', 1) < 2:
            raise ConfigError("distill.token_loss='vocab_sharded' splits the vocabulary over "
                              "the mesh's tensor axis: set mesh.tensor > 1 (or use 'chunked')")
        if vocab and vocab % mesh_shape['tensor']:
            raise ConfigError(f'distill.token_loss=\'vocab_sharded\': the vocabulary {vocab} '
                              f'is not divisible by mesh.tensor={mesh_shape["tensor"]}')
    return mode


def chunked_means(objective, step, student: HiddenLogits, teacher, targets, rows: dict,
                  chunk_size: int) -> dict[int, jax.Array]:
    """``{term index: value}`` for every logit term, computed ``chunk_size`` tokens at a time.

    ``rows[i]`` is term ``i``'s row mask (None: every token). Each chunk evaluates
    ``objective._term`` (the dense path's own code) on its logits and scales the chunk's mean
    back to a sum; the sums over chunks divided by the whole batch's counts are the means.
    """
    token_shape = tuple(student.hidden.shape[:-1])
    n = math.prod(token_shape)
    order = sorted(rows)
    masks = jnp.stack([jnp.ones(token_shape, bool) if rows[i] is None
                       else jnp.broadcast_to(rows[i], token_shape) for i in order], -1)
    flat = {'hs': student.hidden.reshape(n, -1), 'targets': targets.reshape(n),
            'masks': masks.reshape(n, len(order))}
    teacher_kernel = None
    if isinstance(teacher, HiddenLogits):
        flat['teacher'], teacher_kernel = teacher.hidden.reshape(n, -1), teacher.kernel
    elif teacher is not None:
        flat['teacher'] = jax.tree.map(lambda x: x.reshape(n, *x.shape[len(token_shape):]),
                                       teacher)
    size = min(chunk_size, n)
    chunks = -(-n // size)
    pad = chunks * size - n
    flat = jax.tree.map(lambda x: jnp.pad(x, [(0, pad)] + [(0, 0)] * (x.ndim - 1))
                        .reshape(chunks, size, *x.shape[1:]), flat)

    def body(c):
        zs = student.project(c['hs'])
        zt = c.get('teacher')
        if teacher_kernel is not None:
            zt = jnp.dot(zt, teacher_kernel.astype(zt.dtype), preferred_element_type=jnp.float32)
        sums = []
        for j, i in enumerate(order):
            m = c['masks'][:, j]
            mean = objective._term(objective.terms[i], step, zs, zt, c['targets'], m)
            sums.append(mean * jnp.sum(m, dtype=jnp.float32))
        return jnp.stack(sums)

    totals = jnp.sum(jax.lax.map(jax.checkpoint(body), flat), axis=0)
    counts = jnp.sum(masks.reshape(n, len(order)), axis=0, dtype=jnp.float32)
    return {i: totals[j] / jnp.maximum(counts[j], 1.0) for j, i in enumerate(order)}


def sharded_means(objective, step, student_logits, teacher_logits, rows: dict, mesh
                  ) -> dict[int, jax.Array]:
    """``{term index: value}`` of the pointwise teacher terms on vocabulary-sharded logits."""
    from jaxdistill.losses import token as token_losses

    out = {}
    if not hasattr(teacher_logits, 'shape') or teacher_logits.ndim != student_logits.ndim:
        return out  # a sparse or stacked teacher: the dense path
    token_axis = tuple(a for a in ('data', 'fsdp') if a in mesh.shape) or None
    for i, mask in rows.items():
        term = objective.terms[i]
        if term.spec.terms is None:  # no per-entry form (any registered loss with one has)
            continue
        kwargs = dict(term.hyper)
        temperature = 1.0
        if term.temperature is not None:
            from jaxdistill.objective import _at
            temperature = _at(term.temperature, step)
        where = (jnp.ones(student_logits.shape[:-1], bool) if mask is None
                 else jnp.broadcast_to(mask, student_logits.shape[:-1]))
        total = token_losses.vocab_sharded_loss(
            student_logits, teacher_logits, mesh=mesh, vocab_axis='tensor',
            token_axis=token_axis, loss=term.name, temperature=temperature, where=where,
            reduction='sum', **kwargs)
        out[i] = total / jnp.maximum(jnp.sum(where, dtype=jnp.float32), 1.0)
    return out
