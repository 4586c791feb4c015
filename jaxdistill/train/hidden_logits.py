"""Token losses in training without ``[B, T, V]`` logits: ``distill.token_loss``.

A language model's logits are ``hidden @ W`` with ``hidden`` its final normed hidden state
``[B, T, d]`` and ``W`` its output projection ``[d, V]``. At a real vocabulary (V = 128k)
both models' float32 logits, their softmaxes and cotangents dominate a distillation step's
memory. ``distill.token_loss``:

* ``'dense'``: every term on the full logits (the models' own outputs);
* ``'chunked'``: the step taps both decoders' final hidden states (``final_norm``) and their
  output projections; the objective's logit terms are computed ``distill.chunk_size`` tokens
  at a time in one scan that also takes the student's gradients there (`_fused`, as Liger's
  fused linear cross-entropy does), so no ``[B, T, V]`` array is kept, no chunk's logits are
  formed twice (the backward pass only scales the stored gradients), and the models' own
  logit outputs are dead code that XLA drops. Each term is *the same function* as in the
  dense path (`Objective._term` on a chunk), summed over chunks and divided by the whole
  batch's valid-token count, so values and gradients equal the dense ones to float32
  rounding; every term's value is still reported.
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
from jaxdistill.losses import SparseTeacher
from jaxdistill.train import softmax_terms

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
    cross = [t.name for t in objective.terms if t.spec.kind == 'cross_token']
    if cross:  # positions of two tokenizations, gathered across the row
        return f'cross-tokenizer loss {cross[0]!r}'
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


def _chunked_inputs(student: HiddenLogits, teacher, targets, rows: dict, chunk_size: int):
    """Every per-token input split into ``[chunks, size, ...]`` (the last chunk padded with
    masked tokens), the teacher's kernel (None: the teacher's logits or signal are given) and
    the whole batch's per-term counts."""
    token_shape = tuple(student.hidden.shape[:-1])
    n = math.prod(token_shape)
    order = sorted(rows)
    masks = jnp.stack([jnp.ones(token_shape, bool) if rows[i] is None
                       else jnp.broadcast_to(rows[i], token_shape) for i in order], -1)
    flat = {'targets': targets.reshape(n), 'masks': masks.reshape(n, len(order))}
    teacher_kernel = None
    if isinstance(teacher, HiddenLogits):
        flat['teacher'], teacher_kernel = teacher.hidden.reshape(n, -1), teacher.kernel
    elif teacher is not None:
        flat['teacher'] = jax.tree.map(lambda x: x.reshape(n, *x.shape[len(token_shape):]),
                                       teacher)
    size = min(chunk_size, n)
    chunks = -(-n // size)

    def split(x):
        x = jnp.pad(x, [(0, chunks * size - n)] + [(0, 0)] * (x.ndim - 1))
        return x.reshape(chunks, size, *x.shape[1:])

    hidden = split(student.hidden.reshape(n, -1))  # differentiable: pad + reshape
    counts = jnp.sum(flat['masks'], axis=0, dtype=jnp.float32)
    return hidden, jax.tree.map(split, flat), teacher_kernel, counts


def _chunk_sums(objective, order, step, hidden, kernel, chunk, teacher_kernel):
    """``[terms]``: each logit term's sum over one chunk's valid tokens, by the dense path's
    own code (`Objective._term` on the chunk's logits: its mean, scaled back to a sum)."""
    zs = HiddenLogits(hidden, kernel).project(hidden)
    zt = chunk.get('teacher')
    if teacher_kernel is not None:
        zt = HiddenLogits(zt, teacher_kernel).project(zt)
    sums = []
    for j, i in enumerate(order):
        m = chunk['masks'][:, j]
        mean = objective._term(objective.terms[i], step, zs, zt, chunk['targets'], m)
        sums.append(mean * jnp.sum(m, dtype=jnp.float32))
    return jnp.stack(sums)


def _closed_form(terms, hidden, kernel, chunk, shared):
    """``(sums, (d_hidden, d_kernel))`` of one chunk by `softmax_terms.chunk`: the terms'
    values and one ``[N, V]`` logit cotangent for all of them, taken back through the
    student's head by the head's own VJP (the two matmuls autodiff would do)."""
    zs, head_vjp = jax.vjp(lambda h, k: HiddenLogits(h, k).project(h), hidden, kernel)
    zt = chunk.get('teacher')
    if zt is not None and shared.get('teacher_kernel') is not None:
        zt = HiddenLogits(zt, shared['teacher_kernel']).project(zt)
    elif zt is not None:
        zt = zt.astype(jnp.float32)
    sums, grad = softmax_terms.chunk(terms, zs, zt, chunk['targets'], chunk['masks'],
                                     shared['weights'])
    return sums, head_vjp(grad)


def _fused(objective, order):
    """``f(hidden, kernel, chunks, shared) -> (weighted, sums)`` over chunks, where
    ``weighted = shared['weights'] @ sums`` carries the gradient and ``sums`` (per term)
    must not be differentiated (`fused_means` stops it).

    The forward pass scans the chunks once: each chunk's logits (student and teacher) are
    formed, the terms evaluated, and the gradient of the chunk's weighted sum with respect
    to the chunk's hidden states and the student's kernel taken right there (as Liger's
    fused linear cross-entropy does): the kernel's gradient is summed in the scan's carry,
    the hidden states' gradient (``[N, d]``, small) kept. The backward pass only scales both
    by the incoming cotangent, so no chunk's logits are formed a second time.
    """

    def sums_of(hidden, kernel, chunk, shared):
        return _chunk_sums(objective, order, shared['step'], hidden, kernel, chunk,
                           shared.get('teacher_kernel'))

    @jax.custom_vjp
    def fused(hidden, kernel, chunks, shared):
        sums = jnp.sum(jax.lax.map(lambda xs: sums_of(xs[0], kernel, xs[1], shared),
                                   (hidden, chunks)), axis=0)
        return jnp.dot(shared['weights'], sums), sums

    def forward(hidden, kernel, chunks, shared):
        def weighted(h, k, chunk):
            sums = sums_of(h, k, chunk, shared)
            return jnp.dot(shared['weights'], sums), sums

        closed = softmax_terms.plan(objective, order, shared['step'])  # static: trace time
        if chunks['targets'].ndim != 2 or isinstance(chunks.get('teacher'), SparseTeacher):
            closed = None  # per-token integer labels and dense (or no) teacher logits only

        def body(grad_kernel, xs):
            h, chunk = xs
            if closed is not None:
                sums, (d_hidden, d_kernel) = _closed_form(closed, h, kernel, chunk, shared)
            else:
                (_, sums), (d_hidden, d_kernel) = jax.value_and_grad(
                    weighted, argnums=(0, 1), has_aux=True)(h, kernel, chunk)
            return grad_kernel + d_kernel.astype(jnp.float32), (sums, d_hidden)

        grad_kernel, (sums, d_hidden) = jax.lax.scan(
            body, jnp.zeros(kernel.shape, jnp.float32), (hidden, chunks))
        sums = jnp.sum(sums, axis=0)
        return ((jnp.dot(shared['weights'], sums), sums),
                (d_hidden, grad_kernel.astype(kernel.dtype)))

    def backward(residuals, cotangents):
        d_hidden, d_kernel = residuals
        g = cotangents[0]  # the weighted sum's; the per-term sums are not differentiated
        return (g.astype(d_hidden.dtype) * d_hidden, g.astype(d_kernel.dtype) * d_kernel,
                None, None)

    fused.defvjp(forward, backward)
    return fused


def fused_means(objective, step, student: HiddenLogits, teacher, targets, rows: dict,
                chunk_size: int, scales: dict[int, jax.Array]
                ) -> tuple[dict[int, jax.Array], jax.Array]:
    """``({term index: value}, weighted)`` for every logit term, ``chunk_size`` tokens at a
    time: the values (means over the whole batch's valid tokens, no gradient) and
    ``weighted = sum_i scales[i] * value[i]``, whose gradient (with respect to the student's
    hidden states and kernel) is that of the weighted values, computed in the forward pass
    (`_fused`). ``rows[i]`` is term ``i``'s row mask (None: every token).
    """
    order = sorted(rows)
    hidden, chunks, teacher_kernel, counts = _chunked_inputs(student, teacher, targets, rows,
                                                             chunk_size)
    scale = jnp.stack([jnp.asarray(scales[i], jnp.float32) for i in order])
    shared = {'step': step, 'weights': jax.lax.stop_gradient(scale / jnp.maximum(counts, 1.0))}
    if teacher_kernel is not None:
        shared['teacher_kernel'] = jax.lax.stop_gradient(teacher_kernel)
    chunks = jax.lax.stop_gradient(chunks)
    weighted, sums = _fused(objective, order)(hidden, student.kernel, chunks, shared)
    sums = jax.lax.stop_gradient(sums)
    return ({i: sums[j] / jnp.maximum(counts[j], 1.0) for j, i in enumerate(order)},
            weighted)


def chunked_objective(total_of, objective, step, student: HiddenLogits, teacher, targets,
                      rows: dict, chunk_size: int) -> tuple[jax.Array, dict[str, jax.Array]]:
    """``(loss, metrics)`` of ``total_of(precomputed) -> (loss, metrics)`` (the objective on
    this batch) with its logit terms computed by `fused_means`.

    The objective's loss is linear in the logit terms' values (their weights, possibly
    scheduled by step, and gradient accumulation's shares), so its gradient with respect to
    them gives each term's scale; the loss reported is the objective's own, and its gradient
    comes from the fused weighted sum.
    """
    zeros = {i: jnp.zeros((), jnp.float32) for i in rows}
    scales = jax.lax.stop_gradient(jax.grad(lambda v: total_of(v)[0])(zeros))
    values, weighted = fused_means(objective, step, student, teacher, targets, rows,
                                   chunk_size, scales)
    loss, metrics = total_of(values)
    return loss + (weighted - jax.lax.stop_gradient(weighted)), metrics


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
