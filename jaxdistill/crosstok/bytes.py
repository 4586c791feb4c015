"""``byte_kl``: the teacher's next-token distribution projected onto the next *byte*.

Whatever the two tokenizers, both models define a distribution over the next byte of the
text. At a byte where a teacher token starts, the teacher's next-byte probability of ``b`` is
the mass of its tokens whose bytes start with ``b``; inside a teacher token, after the prefix
``w`` of it has been read, ``p(b | w) = mass(tokens starting with w + b) / mass(tokens
strictly extending w)``, all from the teacher's distribution at that token's start (Phan et
al. 2024, "Exact Byte-Level Probabilities from Tokenized Language Models for FIM-Tasks and
Model Ensembles", arXiv 2410.09303, the prefix-covering construction; exact for the actual
(canonical) tokenization, i.e. up to tokenization ambiguity). The student's next-byte
distribution at each of its positions is its tokens' mass grouped by first byte (for a
byte-level student, its whole distribution), and ``byte_kl`` is ``T^2 KL(teacher || student)``
over the next byte at every student position: dense supervision at every byte, where
``aligned_kl``'s vocabulary mapping sees only positions whose next token is one string in
both vocabularies.

The categories are the 256 byte values, end of document (``EOS``) and ``OTHER`` (the other
special tokens). Sorted by their bytes, the teacher tokens extending a prefix are one
contiguous range (`PrefixTrie`), so the host finds, per student position, the teacher
position, the depth inside its token and that range (`Aligner.rows`, on the prefetch thread);
inside the jitted step the projection is a comparison with the ranks and one segment sum.
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.crosstok.positions import at_positions
from jaxdistill.crosstok.positions import batch_mean as _mean

Array = jax.Array

EOS, OTHER, NONE = 256, 257, 258  # categories beyond the byte values; NONE: no next byte
CATEGORIES = 258
_BIG = np.iinfo(np.int32).max


@dataclasses.dataclass(frozen=True, eq=False)
class PrefixTrie:
    """The teacher vocabulary as a prefix trie, in byte-sorted order (host tables).

    ``rank[i]``: id ``i``'s place among the byte-sorted surfaces (specials last); the tokens
    starting with token ``i``'s first ``k`` bytes are those ranked ``node_lo[start[i] + k] ..
    node_hi[start[i] + k]`` (k = 0: every id); ``cats[k, i]``: id ``i``'s byte ``k``
    (``EOS``/``OTHER`` for a special at depth 0, ``NONE`` past its end).
    """

    rank: np.ndarray  # [V] int32
    cats: np.ndarray  # [K, V] int16
    start: np.ndarray  # [V] int64 offset of id i's nodes
    length: np.ndarray  # [V] int32 number of nodes of id i (its byte length; 1 for specials)
    node_lo: np.ndarray  # [N] int32
    node_hi: np.ndarray  # [N] int32

    @property
    def max_depth(self) -> int:
        return int(self.cats.shape[0])


def _successor(prefix: bytes) -> bytes | None:
    """The smallest byte string above every string starting with ``prefix`` (None: none)."""
    p = prefix.rstrip(b'\xff')
    return None if not p else p[:-1] + bytes([p[-1] + 1])


def prefix_trie(surfaces: list[bytes | None], eos_id: int | None,
                max_depth: int = 32) -> PrefixTrie:
    """The `PrefixTrie` of a vocabulary given each id's bytes (None: a special token).

    Positions deeper than ``max_depth`` bytes inside a teacher token are not supervised (a
    bound on the ``[K, V]`` category table for vocabularies with very long tokens).
    """
    v = len(surfaces)
    real = [i for i, s in enumerate(surfaces) if s]
    order = sorted(real, key=lambda i: surfaces[i])
    order += [i for i in range(v) if not surfaces[i]]
    rank = np.empty(v, np.int32)
    rank[order] = np.arange(v, dtype=np.int32)
    keys = [surfaces[i] for i in order[:len(real)]]
    length = np.array([len(s) if s else 1 for s in surfaces], np.int32)
    depth = max(1, min(int(length.max(initial=1)), max_depth))
    cats = np.full((depth, v), NONE, np.int16)
    for i, s in enumerate(surfaces):
        if s:
            row = np.frombuffer(s[:depth], np.uint8)
            cats[:len(row), i] = row
        else:
            cats[0, i] = EOS if i == eos_id else OTHER
    start = np.concatenate([[0], np.cumsum(length)[:-1]]).astype(np.int64)
    lo = np.zeros(int(length.sum()), np.int32)
    hi = np.full(int(length.sum()), _BIG, np.int32)
    cache: dict[bytes, tuple[int, int]] = {}
    for i in real:
        s = surfaces[i]
        for k in range(1, len(s)):
            w = s[:k]
            if w not in cache:
                nxt = _successor(w)
                cache[w] = (bisect.bisect_left(keys, w),
                            len(keys) if nxt is None else bisect.bisect_left(keys, nxt))
            lo[start[i] + k], hi[start[i] + k] = cache[w]
    return PrefixTrie(rank, cats, start, length, lo, hi)


def student_categories(surfaces: list[bytes | None], eos_id: int | None,
                       vocab: int) -> np.ndarray:
    """``[vocab]`` int32 category of each student id: its first byte, ``EOS`` or ``OTHER``
    (specials and ids past the tokenizer's vocabulary)."""
    out = np.full(vocab, OTHER, np.int32)
    for i, s in enumerate(surfaces[:vocab]):
        if s:
            out[i] = s[0]
        elif i == eos_id:
            out[i] = EOS
    return out


@dataclasses.dataclass(frozen=True, eq=False)
class ByteVocab:
    """What the step needs (closed over): the teacher's ranks and categories padded to its
    model's output size, and the student's category of each of its output ids."""

    rank: np.ndarray  # [V_t] int32
    cats: np.ndarray  # [K, V_t] int32
    student: np.ndarray  # [V_s] int32
    student_has: np.ndarray  # [CATEGORIES] bool: the categories some student id is in


def byte_vocab(trie: PrefixTrie, student_cats: np.ndarray, teacher_vocab: int) -> ByteVocab:
    """Pads ``trie`` to ``teacher_vocab`` ids (extra ids: ``OTHER`` at depth 0, ranked last)."""
    v = len(trie.rank)
    extra = max(teacher_vocab - v, 0)
    rank = np.concatenate([trie.rank[:teacher_vocab], v + np.arange(extra)]).astype(np.int32)
    pad = np.full((trie.max_depth, extra), NONE, np.int32)
    pad[0] = OTHER
    cats = np.concatenate([trie.cats[:, :teacher_vocab].astype(np.int32), pad], axis=1)
    has = np.zeros(CATEGORIES, bool)
    has[student_cats] = True
    return ByteVocab(rank, cats, student_cats.astype(np.int32), has)


def node_ranges(trie: PrefixTrie, ids: np.ndarray, depth: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
    """Host: the rank range of the tokens extending the first ``depth`` bytes of ``ids``
    (``depth`` must be below each id's length)."""
    node = trie.start[ids] + depth
    return trie.node_lo[node], trie.node_hi[node]


def teacher_next_byte(teacher_logits: Array, depth: Array, lo: Array, hi: Array,
                      vocab: ByteVocab, *, temperature: float = 1.0) -> Array:
    """``[..., CATEGORIES]`` the teacher's next-byte log-probabilities.

    Args:
      teacher_logits: ``[..., V_t]`` logits or log-probabilities at the start of the teacher
        token that holds the next byte.
      depth: ``[...]`` bytes of that token already read; lo / hi: ``[...]`` the rank range of
        the tokens that extend them (`node_ranges`).
      vocab: the `ByteVocab`.
      temperature: the teacher's token distribution is ``softmax(z / T)`` before projection.

    Returns:
      ``log p(b | prefix)``, ``-inf`` where no extending token starts with ``b``; categories
      no student id is in are left out (the rest renormalised).
    """
    z = teacher_logits.astype(jnp.float32) / temperature
    lp = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)
    rank = jnp.asarray(vocab.rank)
    inside = (rank >= lo[..., None]) & (rank < hi[..., None])
    cats = jnp.asarray(vocab.cats)[jnp.clip(depth, 0, vocab.cats.shape[0] - 1)]
    has = jnp.concatenate([jnp.asarray(vocab.student_has), jnp.zeros(1, bool)])
    keep = inside & has[cats]
    m = jnp.max(jnp.where(keep, lp, -jnp.inf), axis=-1, keepdims=True)
    m = jnp.where(jnp.isfinite(m), m, 0.0)
    w = jnp.where(keep, jnp.exp(lp - m), 0.0)
    lead = w.shape[:-1]
    n = int(np.prod(lead))
    ids = jnp.arange(n, dtype=jnp.int32).reshape(lead + (1,)) * (CATEGORIES + 1) \
        + jnp.where(keep, cats, NONE)
    mass = jax.ops.segment_sum(w.reshape(-1), ids.reshape(-1), num_segments=n * (CATEGORIES + 1))
    mass = mass.reshape(lead + (CATEGORIES + 1,))[..., :CATEGORIES]
    total = jnp.sum(mass, axis=-1, keepdims=True)
    return jnp.where(mass > 0, jnp.log(jnp.where(mass > 0, mass, 1.0))
                     - jnp.log(jnp.maximum(total, 1e-37)), -jnp.inf)


def student_next_byte(student_logits: Array, vocab: ByteVocab, *,
                      temperature: float = 1.0) -> Array:
    """``[..., CATEGORIES]`` the student's next-byte log-probabilities: its tokens' mass
    grouped by first byte (``-inf`` for a category no student id is in)."""
    z = student_logits.astype(jnp.float32) / temperature
    lp = z - jax.nn.logsumexp(z, axis=-1, keepdims=True)
    cats = jnp.asarray(vocab.student)
    flat = jnp.moveaxis(lp, -1, 0).reshape(lp.shape[-1], -1)  # [V_s, N]
    top = jax.lax.stop_gradient(jax.ops.segment_max(flat, cats, num_segments=CATEGORIES))
    top = jnp.where(jnp.isfinite(top), top, 0.0)
    total = jax.ops.segment_sum(jnp.exp(flat - top[cats]), cats, num_segments=CATEGORIES)
    out = jnp.where(total > 0, top + jnp.log(jnp.where(total > 0, total, 1.0)), -jnp.inf)
    return jnp.moveaxis(out.reshape((CATEGORIES,) + lp.shape[:-1]), 0, -1)


def next_byte_kl(student_logprobs: Array, teacher_logprobs: Array, *,
                 where: Array | None = None) -> Array:
    """``KL(p_t || p_s)`` over next-byte categories (``[..., C]`` log-probabilities, ``-inf``
    allowed where the teacher has no mass: ``0 log 0 = 0``), per position."""
    p_t = jnp.exp(teacher_logprobs)
    ok = p_t > 0
    terms = jnp.where(ok, p_t * (jnp.where(ok, teacher_logprobs, 0.0)
                                 - jnp.where(ok, student_logprobs, 0.0)), 0.0)
    value = jnp.sum(terms, axis=-1)
    return value if where is None else jnp.where(where, value, 0.0)


def byte_kl(student_logits: Array, teacher_logits: Array, depth: Array, lo: Array, hi: Array,
            vocab: ByteVocab, /, *, temperature: float = 1.0,
            where: Array | None = None) -> Array:
    """Next-byte ``T^2 KL(teacher || student)`` per student position (see the module doc).

    Args:
      student_logits: ``[..., V_s]`` at each student position.
      teacher_logits: ``[..., V_t]`` the teacher's at the start of the teacher token holding
        the student's next byte (gathered to the student's positions).
      depth, lo, hi: ``[...]`` that byte's depth inside the teacher token and the rank range
        of the teacher tokens extending the bytes before it (`node_ranges`).
      vocab: a `ByteVocab`.
      temperature: both token distributions are ``softmax(z / T)`` before projection.
      where: ``[...]`` valid positions; the others give exactly 0.

    Returns:
      ``[...]`` float32, >= 0.

    Examples:
      >>> import jax.numpy as jnp
      >>> import numpy as np
      >>> surf = [None, b'a', b'ab', b'b']               # teacher: EOS 'a' 'ab' 'b'
      >>> trie = prefix_trie(surf, eos_id=0)
      >>> v = byte_vocab(trie, student_categories([None, b'a', b'b'], 0, 3), 4)
      >>> t = jnp.log(jnp.array([[0.1, 0.2, 0.6, 0.1]]))  # after 'a' was read: 'ab' extends it
      >>> lo, hi = node_ranges(trie, np.array([2]), np.array([1]))
      >>> s = jnp.log(jnp.array([[0.1, 0.1, 0.8]]))       # student: EOS 'a' 'b'
      >>> print(f'{float(byte_kl(s, t, jnp.array([1]), lo, hi, v)[0]):.4f}')  # 1 log(1/.8)
      0.2231
    """
    p_s = student_next_byte(student_logits, vocab, temperature=temperature)
    p_t = teacher_next_byte(teacher_logits, depth, lo, hi, vocab, temperature=temperature)
    return temperature ** 2 * next_byte_kl(p_s, jax.lax.stop_gradient(p_t), where=where)


def byte_kl_term(student_logits: Array, teacher_logprobs: Array, alignment: Any,
                 vocab: ByteVocab, *, temperature: float = 1.0) -> dict[str, Array]:
    """``byte_kl`` averaged over the batch's supervised student positions (``{'total'}``)."""

    a = alignment
    value = byte_kl(student_logits, at_positions(teacher_logprobs, a.byte_pos), a.byte_depth,
                    a.byte_lo, a.byte_hi, vocab, temperature=temperature, where=a.byte)
    return {'total': _mean(value, a.byte)}


def byte_rows(trie: PrefixTrie, s: Any, t: Any, gc: np.ndarray, real_s: np.ndarray,
              first: np.ndarray, count: np.ndarray, teacher_len: int) -> dict[str, np.ndarray]:
    """Host, per batch (`align.Aligner.rows`): where ``byte_kl`` reads the teacher.

    Args:
      trie: the teacher's `PrefixTrie`; s / t: the student's and teacher's `align.Stream`.
      gc: ``[B, T + 1]`` the rows' student stream indices (clipped), real_s: which are real.
      first / count: ``[B, 1]`` each row's first teacher stream index and teacher tokens.
      teacher_len: ``U``.

    Returns:
      ``xt_byte_pos`` (the row's teacher position whose next token ``j`` holds the first
      byte of the student's next token), ``xt_byte_depth`` (that byte's offset in ``j``),
      ``xt_byte_lo`` / ``xt_byte_hi`` (the rank range of the tokens extending ``j``'s bytes
      before it), and ``xt_byte``: supervised (both tokens real and unchanged by
      normalisation, ``j``'s predicting position in the row, the depth within the trie).
    """
    x = s.start[gc[:, 1:]]  # the first byte of each student target (virtual coordinate)
    n_t = len(t.ids)
    if n_t == 0:
        j = np.zeros_like(x)
        ok = np.zeros(x.shape, bool)
    else:
        j = np.minimum(np.searchsorted(t.end, x, side='right'), n_t - 1)
        ok = (t.start[j] <= x) & (x < t.end[j])
    depth = np.where(ok, x - t.start[j], 0) if n_t else np.zeros_like(x)
    ids = t.ids[j] if n_t else np.zeros(x.shape, np.int32)
    r = j - first  # row-local index of token j (a target of position r - 1)
    ok &= (real_s[:, 1:] & (r >= 1) & (r < count) & (r <= teacher_len)
           & ~s.changed[gc[:, 1:]] & (depth < trie.length[ids]) & (depth < trie.max_depth))
    if n_t:
        ok &= ~t.changed[j]
    depth = np.where(ok, depth, 0)
    lo, hi = node_ranges(trie, ids, depth)
    return {'xt_byte_pos': np.where(ok, r - 1, 0).astype(np.int32),
            'xt_byte_depth': depth.astype(np.int32), 'xt_byte_lo': lo.astype(np.int32),
            'xt_byte_hi': hi.astype(np.int32), 'xt_byte': ok}
