"""Cross-tokenizer distillation losses: ``uld`` and ``aligned_kl``.

The teacher and the student tokenize the same text differently (`crosstok.align`), so their
positions and vocabularies differ. Each loss here is a pure per-position (or per-span)
function in float32 with a mask (``where``); `terms` builds the two configurable losses from
a batch's alignment arrays and reduces them over the valid positions of the global batch.

* `uld` (Boizard et al. 2024, "Towards Cross-Tokenizer Distillation: the Universal Logit
  Distillation Loss for LLMs", arXiv 2402.12030): the Wasserstein-1 distance between the
  teacher's and the student's next-token probability vectors, each sorted in decreasing
  order, the shorter one padded with zeros: ``sum_i |sort(p_s)_i - sort(p_t)_i|``. It needs
  no vocabulary correspondence, only positions that have read the same text.
* `span_kl` (Minixhofer et al. 2025, "Cross-Tokenizer Distillation via Approximate
  Likelihood Matching", arXiv 2503.20083): for each span of text that both tokenizations cut
  identically, the likelihood ``p`` of the span's actual text under each model (the product
  of its token probabilities) is matched by the binary KL of ``(p_t, 1 - p_t)`` against
  ``(p_s, 1 - p_s)``, with ``p = exp(log p / T)``.
* `vocab_kl` (GOLD's vocabulary mapping, as in TRL's GOLD trainer): at positions whose next
  token is the same string in both vocabularies, ``T^2 KL`` between the next-token
  distributions over the shared vocabulary (ids mapped by string), the mass outside the
  shared set folded into one bucket on each side. Where one side has no id outside the
  shared set (a byte-level student under a byte-level BPE teacher: every byte is a teacher
  token), its bucket would be empty and the KL infinite; then both distributions are
  renormalised over the shared set instead (``fold=False``). With identical tokenizers the
  shared set is the whole vocabulary, both buckets are empty, and `vocab_kl` is ``kd``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.crosstok.positions import at_positions
from jaxdistill.crosstok.positions import batch_mean as _mean

Array = jax.Array


def _masked(value: Array, where: Array | None) -> Array:
    return value if where is None else jnp.where(where, value, 0.0)


def uld(student_logits: Array, teacher_logits: Array, *, temperature: float = 1.0,
        where: Array | None = None) -> Array:
    """Universal Logit Distillation: W1 between sorted probability vectors, per position.

    Args:
      student_logits: ``[..., V_s]``.
      teacher_logits: ``[..., V_t]`` (logits or log-probabilities) of the aligned positions;
        ``V_t`` may differ from ``V_s``: the shorter sorted vector is padded with zeros.
      temperature: both distributions are ``softmax(z / T)``.
      where: ``[...]`` valid positions; the others give exactly 0 (and zero gradient).

    Returns:
      ``[...]`` float32, in ``[0, 2]``.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = jnp.log(jnp.array([[0.7, 0.2, 0.1]]))
      >>> t = jnp.log(jnp.array([[0.1, 0.1, 0.6, 0.2]]))  # another vocabulary, another order
      >>> print(f'{float(uld(s, t)[0]):.2f}')  # |.7-.6| + |.2-.2| + |.1-.1| + |0-.1|
      0.20
    """
    p_s = jax.nn.softmax(student_logits.astype(jnp.float32) / temperature, axis=-1)
    p_t = jax.nn.softmax(teacher_logits.astype(jnp.float32) / temperature, axis=-1)
    p_s, p_t = -jnp.sort(-p_s, axis=-1), -jnp.sort(-p_t, axis=-1)  # decreasing
    v = max(p_s.shape[-1], p_t.shape[-1])
    pad = lambda p: jnp.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, v - p.shape[-1])])
    return _masked(jnp.sum(jnp.abs(pad(p_s) - pad(p_t)), axis=-1), where)


def _log1mexp(x: Array) -> Array:
    """``log(1 - exp(x))`` for ``x < 0``, stable at both ends (x is clamped below 0)."""
    x = jnp.minimum(x, -1e-7)
    return jnp.where(x > -0.6931472, jnp.log(-jnp.expm1(x)), jnp.log1p(-jnp.exp(x)))


def span_kl(student_logprob: Array, teacher_logprob: Array, *, temperature: float = 1.0,
            where: Array | None = None) -> Array:
    """Binary KL of span likelihoods (approximate likelihood matching), per span.

    Args:
      student_logprob / teacher_logprob: ``[...]`` log-likelihood of each span's text under
        each model (the sum of its tokens' log-probabilities, `span_logprobs`).
      temperature: ``p = exp(log p / T)``: T > 1 softens likely spans' ``1 - p``.
      where: ``[...]`` valid spans; the others give exactly 0.

    Returns:
      ``[...]`` float32: ``p_t log(p_t / p_s) + (1 - p_t) log((1 - p_t) / (1 - p_s))``.

    Examples:
      >>> import jax.numpy as jnp
      >>> s, t = jnp.log(jnp.array([0.5, 0.9])), jnp.log(jnp.array([0.5, 0.6]))
      >>> print(jnp.round(span_kl(s, t), 4))  # .6 log(.6/.9) + .4 log(.4/.1) = 0.3112
      [0.     0.3112]
    """
    ls = student_logprob.astype(jnp.float32) / temperature
    lt = teacher_logprob.astype(jnp.float32) / temperature
    ls, lt = jnp.minimum(ls, 0.0), jnp.minimum(lt, 0.0)
    value = jnp.exp(lt) * (lt - ls) + jnp.exp(_log1mexp(lt)) * (_log1mexp(lt) - _log1mexp(ls))
    return _masked(value, where)


def span_logprobs(token_logprobs: Array, span_ids: Array, num_spans: int) -> Array:
    """``[B, S]`` sums of ``[B, L]`` token log-probabilities by span id (``>= S``: none)."""
    b, length = token_logprobs.shape
    ids = jnp.where(span_ids < num_spans, jnp.arange(b)[:, None] * num_spans + span_ids,
                    b * num_spans)
    sums = jax.ops.segment_sum(token_logprobs.reshape(-1).astype(jnp.float32),
                               ids.reshape(-1), num_segments=b * num_spans + 1)
    return sums[:-1].reshape(b, num_spans)


def vocab_kl(student_logits: Array, teacher_logits: Array, *, shared_student: Array,
             shared_teacher: Array, temperature: float = 1.0, fold: bool = True,
             where: Array | None = None) -> Array:
    """``T^2 KL`` over the shared vocabulary plus one bucket, per position (GOLD mapping).

    Args:
      student_logits: ``[..., V_s]``; teacher_logits: ``[..., V_t]`` (logits or
        log-probabilities) at the same positions.
      shared_student / shared_teacher: ``[K]`` ids of the same strings in each vocabulary.
      fold: True: each side's mass outside its shared ids is one extra category; False:
        both are renormalised over the shared ids (use it where a side has no outside id).
      where: ``[...]`` valid positions; the others give exactly 0.

    Returns:
      ``[...]`` float32.

    Examples:
      >>> import jax.numpy as jnp
      >>> s = jnp.log(jnp.array([[0.5, 0.3, 0.2]]))        # student: 'a' 'b' 'ab'
      >>> t = jnp.log(jnp.array([[0.2, 0.4, 0.4]]))        # teacher: 'b' 'a' 'ba'
      >>> kl = vocab_kl(s, t, shared_student=jnp.array([0, 1]),
      ...               shared_teacher=jnp.array([1, 0]))  # 'a', 'b' in both; buckets .2, .4
      >>> print(f'{float(kl[0]):.4f}')  # .4 log(.4/.5) + .2 log(.2/.3) + .4 log(.4/.2)
      0.1069
    """
    ls, lt = _log_softmax(student_logits, temperature), _log_softmax(teacher_logits, temperature)
    ls_k, lt_k = ls[..., shared_student], lt[..., shared_teacher]
    if fold:
        ls_k = jnp.concatenate([ls_k, _outside(ls, shared_student)], axis=-1)
        lt_k = jnp.concatenate([lt_k, _outside(lt, shared_teacher)], axis=-1)
    else:
        ls_k = jax.nn.log_softmax(ls_k, axis=-1)
        lt_k = jax.nn.log_softmax(lt_k, axis=-1)
    p_t = jnp.exp(lt_k)
    # 0 * log 0 = 0: an empty bucket (-inf) contributes nothing and no NaN gradient
    finite = jnp.isfinite(lt_k) & jnp.isfinite(ls_k)
    terms = jnp.where(finite, p_t * (jnp.where(finite, lt_k, 0.0) - jnp.where(finite, ls_k, 0.0)),
                      jnp.where(p_t > 0, jnp.inf, 0.0))
    return _masked(temperature ** 2 * jnp.sum(terms, axis=-1), where)


def _log_softmax(z: Array, temperature) -> Array:
    # spelled as `losses.kd` spells it (z / T - logsumexp), so identical vocabularies give
    # kd's float32 value, not one a rounding away
    z = z.astype(jnp.float32)
    z = z if isinstance(temperature, (int, float)) and temperature == 1 else z / temperature
    return z - jax.nn.logsumexp(z, axis=-1, keepdims=True)


def _outside(logp: Array, shared: Array) -> Array:
    """``[..., 1]`` log of the mass outside ``shared`` (-inf when every id is shared)."""
    inside = jnp.zeros(logp.shape[-1], bool).at[shared].set(True)
    rest = jnp.where(inside, -jnp.inf, logp)
    m = jnp.max(rest, axis=-1, keepdims=True)
    m_safe = jnp.where(jnp.isfinite(m), m, 0.0)
    total = jnp.sum(jnp.exp(rest - m_safe), axis=-1, keepdims=True)
    return jnp.where(total > 0, m_safe + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)


class Alignment(NamedTuple):
    """A batch's alignment arrays (`crosstok.align.Aligner.rows`), on device."""

    pos: Array  # [B, T] int32: the teacher position aligned with each student position
    aligned: Array  # [B, T] bool
    same: Array  # [B, T] bool
    span: Array  # [B, T] int32 span of each student target (S: none)
    teacher_span: Array  # [B, U] int32
    span_mask: Array  # [B, S] bool
    # `byte_kl` (`crosstok.bytes`): per student position, the teacher position whose next
    # token holds the student's next byte, that byte's depth in it, the rank range of the
    # teacher tokens extending the bytes before it, and whether the position is supervised
    byte_pos: Array | None = None  # [B, T] int32
    byte_depth: Array | None = None  # [B, T] int32
    byte_lo: Array | None = None  # [B, T] int32
    byte_hi: Array | None = None  # [B, T] int32
    byte: Array | None = None  # [B, T] bool


class CrossTeacher(NamedTuple):
    """What a cross-tokenizer batch gives the step about the teacher (`StepInputs.teacher`).

    The step runs the teacher on ``inputs`` and fills ``logits`` (``online``); a cached
    teacher comes as ``sparse`` top-k with the exact ``target_logprobs`` instead.
    """

    inputs: Any  # [B, U] teacher token ids
    targets: Any  # [B, U]
    mask: Any  # [B, U]
    alignment: Alignment
    logits: Any = None  # [B, U, V_t], filled inside the step
    sparse: Any = None  # a `losses.SparseTeacher` from the cache
    target_logprobs: Any = None  # [B, U] from the cache


@dataclasses.dataclass(frozen=True, eq=False)
class CrossVocab:
    """The static side of the alignment that the objective needs (closed over by the step)."""

    shared_student: np.ndarray
    shared_teacher: np.ndarray
    student_to_teacher: np.ndarray  # [tokenizer vocab] teacher id of each student id, or -1
    student_vocab: int  # model output sizes
    teacher_vocab: int
    bytes: Any = None  # `crosstok.bytes.ByteVocab`, for `byte_kl`

    @property
    def fold(self) -> bool:
        """One bucket for the outside mass, unless exactly one side has no outside id."""
        out_s = self.student_vocab > len(self.shared_student)
        out_t = self.teacher_vocab > len(self.shared_teacher)
        return out_s == out_t


def target_logprobs(logits: Array, targets: Array) -> Array:
    """``[B, L]`` log-probability (T = 1) of each target token."""
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return jnp.take_along_axis(logp, targets[..., None].astype(jnp.int32), axis=-1)[..., 0]


def uld_term(student_logits: Array, teacher_logprobs: Array, alignment: Alignment, *,
             temperature: float = 1.0) -> dict[str, Array]:
    """``uld`` averaged over the batch's aligned positions (``{'total': scalar}``)."""
    value = uld(student_logits, at_positions(teacher_logprobs, alignment.pos),
                temperature=temperature, where=alignment.aligned)
    return {'total': _mean(value, alignment.aligned)}


def aligned_kl(student_logits: Array, student_targets: Array, teacher_logprobs: Array,
               teacher_target_logprobs: Array, alignment: Alignment, vocab: Any, *,
               temperature: float = 1.0, span_weight: float = 1.0,
               token_weight: float = 1.0) -> dict[str, Array]:
    """Aligned KL: ``span_weight * mean span_kl + token_weight * mean vocab_kl``.

    Args:
      student_logits: ``[B, T, V_s]``; student_targets: ``[B, T]``.
      teacher_logprobs: ``[B, U, V_t]`` teacher log-probabilities (T = 1) on its own tokens;
        teacher_target_logprobs: ``[B, U]``, those of its actual next tokens.
      alignment: the batch's `Alignment`; vocab: the shared ids (``shared_student``,
        ``shared_teacher``) and ``fold`` (`crosstok.data.CrossVocab`).
      temperature, span_weight, token_weight: the hyper-parameters.

    Returns:
      ``{'total', 'span', 'token'}`` scalars: ``span`` averages over the batch's valid spans,
      ``token`` over its same-string positions (0 where there are none).

    Examples:
      >>> import types
      >>> import jax.numpy as jnp
      >>> z = jnp.log(jnp.array([[[0.6, 0.4], [0.5, 0.5]]]))  # one row, two positions
      >>> a = Alignment(pos=jnp.array([[0, 1]]), aligned=jnp.array([[True, True]]),
      ...               same=jnp.array([[True, True]]), span=jnp.array([[0, 1]]),
      ...               teacher_span=jnp.array([[0, 1]]), span_mask=jnp.array([[True, True]]))
      >>> v = types.SimpleNamespace(shared_student=jnp.arange(2), shared_teacher=jnp.arange(2),
      ...                           fold=True)
      >>> targets = jnp.array([[0, 1]])
      >>> out = aligned_kl(z, targets, z, target_logprobs(z, targets), a, v)
      >>> float(out['total'])  # the teacher is the student: nothing to learn
      0.0
    """
    num_spans = alignment.span_mask.shape[-1]
    ll_s = span_logprobs(target_logprobs(student_logits, student_targets), alignment.span,
                         num_spans)
    ll_t = span_logprobs(teacher_target_logprobs, alignment.teacher_span, num_spans)
    span = _mean(span_kl(ll_s, ll_t, temperature=temperature, where=alignment.span_mask),
                 alignment.span_mask)
    token = _mean(vocab_kl(student_logits, at_positions(teacher_logprobs, alignment.pos),
                           shared_student=vocab.shared_student,
                           shared_teacher=vocab.shared_teacher, temperature=temperature,
                           fold=vocab.fold, where=alignment.same),
                  alignment.same)
    return {'total': span_weight * span + token_weight * token, 'span': span, 'token': token}


def _register() -> None:
    from jaxdistill.crosstok import bytes as xbytes
    from jaxdistill.losses.registry import NON_NEGATIVE, Doc, register

    register('uld', uld, kind='cross_token', doc=Doc(
        '`Σ_i \\|sort↓(p_s)_i − sort↓(p_t)_i\\|` at positions that have read the same text, the '
        'shorter vocabulary padded with zeros',
        'teacher and student tokenize differently; nothing about the vocabularies is known',
        'Boizard et al. 2024, arXiv 2402.12030 (ULD)',
        notes='per aligned position (`crosstok.align`); averaged over the batch\'s aligned '
              'positions; with `ce` as in the paper'))
    register('aligned_kl', aligned_kl, kind='cross_token',
             rules={'span_weight': NON_NEGATIVE, 'token_weight': NON_NEGATIVE}, doc=Doc(
                 '(a) per span cut identically by both tokenizers, binary KL of `(p_t, 1 − p_t)` '
                 'vs `(p_s, 1 − p_s)`, `p = exp(log p(span text) / T)`; (b) at positions whose '
                 'next token is one string in both vocabularies, `T² KL` over the shared '
                 'vocabulary (mapped by string) plus one bucket for the mass outside it',
                 'teacher and student tokenize differently and share many token strings',
                 'Minixhofer et al. 2025, arXiv 2503.20083 (ALM); GOLD vocabulary mapping '
                 '(TRL)',
                 notes='`span_weight·(a) + token_weight·(b)`, (a) averaged over valid spans, (b) '
                       'over same-string positions; with identical tokenizers (b) is `kd`; '
                       'where only one side has ids outside the shared set, (b) renormalises '
                       'over the shared ids instead of folding'))
    register('byte_kl', xbytes.byte_kl, kind='cross_token', doc=Doc(
        '`T² KL` between the next-byte distributions at every student position: the teacher\'s '
        'next-token distribution projected by string prefix (`p(b \\| w)` = mass of its tokens '
        'starting with `w + b` / mass of those strictly extending `w`, `w` the bytes of its '
        'current token already read), the student\'s grouped by first byte',
        'teacher and student tokenize differently, above all a byte-level student: dense '
        'supervision at every byte',
        'Phan et al. 2024, arXiv 2410.09303 (exact byte-level probabilities from tokenized '
        'LMs)',
        notes='per student position (`crosstok.bytes`), averaged over the supervised '
              'positions; exact for the teacher\'s actual tokenization (not summed over other '
              'tokenizations); categories: 256 bytes, EOS, other specials'))


_register()
