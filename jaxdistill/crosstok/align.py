"""Host-side alignment of two tokenizations of one text, by byte offsets.

Both tokenizers encode the same documents (`encode_stream`). Every token gets a byte span
``[start, end)`` in one *virtual* coordinate shared by both streams: document ``d`` occupies
``n_d + 2`` units, its BOS one unit, its UTF-8 bytes ``n_d``, its EOS one unit, so the two
streams' BOS and EOS tokens cover the same units and every byte has one address.

Spans come from the tokens' own bytes (the *surface* of each vocabulary entry,
`vocab_surfaces`): when a document's surfaces concatenate to exactly its bytes, the byte
offsets are their cumulative lengths (exact, even for a byte-level BPE token that holds half
of a character). Otherwise the tokenizer's normalisation changed characters: the document's
spans come from the tokenizer's character offsets, and every token whose surface differs from
the text it covers is marked *changed*; the spans holding such tokens are skipped by the
losses (counted, and warned about once).

A *cut* is a byte position where a token ends cleanly (the next token starts at or after it)
in both streams. Between consecutive cuts lie *spans* whose text both tokenizations cover
exactly; a student position is *aligned* with a teacher position when both have read the
same text up to the same cut (`Aligner.rows`). All of it is vectorised numpy: the streams
are matched once (`Aligner`), then each batch of rows is gathered and cumulated (used in the
data pipeline, on the prefetch thread).
"""

from __future__ import annotations

import dataclasses
import operator
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdistill.crosstok.bytes import byte_rows
from jaxdistill.errors import ConfigError


class NormalisationWarning(UserWarning):
    """A tokenizer's normalisation changed characters: those spans are skipped."""


# -- tokenizers -----------------------------------------------------------------------------

def _is_byte(tokenizer: Any) -> bool:
    return getattr(tokenizer, 'name', None) == 'byte'


def backend(tokenizer: Any, key: str = 'teacher.tokenizer') -> Any:
    """The ``tokenizers.Tokenizer`` behind ``tokenizer`` (None for the byte tokenizer).

    Raises ConfigError (one line naming ``key``) for a tokenizer that cannot give offsets.
    """
    if _is_byte(tokenizer):
        return None
    for candidate in (tokenizer, getattr(tokenizer, '_tok', None),
                      getattr(tokenizer, 'tokenizer', None), getattr(tokenizer, 'backend', None)):
        if candidate is not None and callable(getattr(candidate, 'encode_batch', None)) \
                and callable(getattr(candidate, 'get_vocab', None)):
            return candidate
    raise ConfigError(f'{key}: {type(tokenizer).__name__} gives no character offsets, which '
                      "cross-tokenizer alignment needs; use 'byte', 'bpe' or a Hugging Face "
                      'tokenizer.json (hf:DIR)')


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (byte-level BPE token strings)."""
    bs = list(range(ord('!'), ord('~') + 1)) + list(range(ord('¡'), ord('¬') + 1)) \
        + list(range(ord('®'), ord('ÿ') + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, (chr(c) for c in cs)))


def _surface(token: str, kind: str, unbyte: dict[str, int]) -> bytes | None:
    if kind == 'bytelevel':
        try:
            return bytes(unbyte[c] for c in token)
        except KeyError:
            return None
    if len(token) == 6 and token.startswith('<0x') and token.endswith('>'):
        try:
            return bytes([int(token[3:5], 16)])  # sentencepiece byte fallback
        except ValueError:
            pass
    return token.replace('\u2581', ' ').encode('utf-8')  # sentencepiece's word marker


def _decoder_kind(tok: Any) -> str:
    import json

    spec = json.loads(tok.to_str()).get('decoder') or {}
    kinds = [d.get('type') for d in spec.get('decoders', [spec])]
    return 'bytelevel' if 'ByteLevel' in kinds else 'text'


def vocab_surfaces(tokenizer: Any, key: str = 'teacher.tokenizer') -> list[bytes | None]:
    """The bytes each id stands for (None for special tokens), indexed by id."""
    if _is_byte(tokenizer):
        specials = tokenizer.vocab_size - 256
        return [None] * specials + [bytes([b]) for b in range(256)]
    tok = backend(tokenizer, key)
    vocab = tok.get_vocab(with_added_tokens=True)
    out: list[bytes | None] = [None] * (max(vocab.values()) + 1)
    kind = _decoder_kind(tok)
    unbyte = {c: b for b, c in _bytes_to_unicode().items()}
    special = {str(t.content) for t in tok.get_added_tokens_decoder().values() if t.special}
    for token, i in vocab.items():
        out[i] = None if token in special else _surface(token, kind, unbyte)
    return out


def _roles(tokenizer: Any) -> dict[str, int]:
    return {r: int(getattr(tokenizer, f'{r}_id')) for r in ('pad', 'bos', 'eos')
            if getattr(tokenizer, f'{r}_id', None) is not None}


@dataclasses.dataclass(frozen=True)
class VocabMap:
    """Ids that stand for the same string in both vocabularies (GOLD's vocabulary mapping).

    ``shared_student[i]`` and ``shared_teacher[i]`` are one string (or one special role: pad,
    BOS, EOS); ``student_to_teacher[s]`` is the teacher id of student id ``s`` or -1.
    """

    student_to_teacher: np.ndarray
    shared_student: np.ndarray
    shared_teacher: np.ndarray


def vocab_map(student: Any, teacher: Any) -> VocabMap:
    """Maps the vocabularies by string (the first id of a string wins on either side)."""
    s_surf = vocab_surfaces(student, 'data.tokenizer')
    t_surf = vocab_surfaces(teacher, 'teacher.tokenizer')
    t_index: dict[bytes, int] = {}
    for i, s in enumerate(t_surf):
        if s is not None and s not in t_index:
            t_index[s] = i
    s2t = np.full(len(s_surf), -1, np.int64)
    seen: set[bytes] = set()
    for i, s in enumerate(s_surf):
        if s is not None and s in t_index and s not in seen:
            s2t[i] = t_index[s]
            seen.add(s)
    t_roles = _roles(teacher)
    for role, i in _roles(student).items():
        if role in t_roles and i < len(s2t):
            s2t[i] = t_roles[role]
    shared = np.flatnonzero(s2t >= 0)
    return VocabMap(s2t.astype(np.int32), shared.astype(np.int32),
                    s2t[shared].astype(np.int32))


# -- streams --------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class Stream:
    """One tokenizer's tokens of a list of documents, each ``BOS doc EOS``, concatenated.

    ``start``/``end`` are virtual byte coordinates (see the module docstring); ``changed``
    marks tokens whose text the tokenizer's normalisation altered.
    """

    ids: np.ndarray  # int32 [N]
    start: np.ndarray  # int64 [N]
    end: np.ndarray  # int64 [N]
    changed: np.ndarray  # bool [N]
    changed_chars: int = 0  # characters covered by changed tokens
    changed_docs: int = 0
    doc_starts: np.ndarray = dataclasses.field(default_factory=lambda: np.zeros(0, np.int64))

    @property
    def clean(self) -> np.ndarray:
        """Token ``i`` ends cleanly: the next token starts at or after its end."""
        out = np.ones(len(self.ids), bool)
        out[:-1] = self.end[:-1] <= self.start[1:]
        return out


def _char_to_byte(text: str) -> np.ndarray:
    """``[len(text) + 1]`` byte offset of each character offset."""
    cps = np.frombuffer(text.encode('utf-32-le'), np.uint32)
    width = 1 + (cps >= 0x80) + (cps >= 0x800) + (cps >= 0x10000)
    return np.concatenate([[0], np.cumsum(width)]).astype(np.int64)


def _from_offsets(text: str, data: bytes, ids: np.ndarray, offsets: Sequence[tuple[int, int]],
                  surfaces: list[bytes | None]) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """Byte spans from character offsets, and which tokens' text changed (a slow path, only
    for documents whose normalisation alters characters)."""
    c2b = _char_to_byte(text)
    offs = np.asarray(offsets, np.int64).reshape(-1, 2)
    start, end = c2b[offs[:, 0]], c2b[offs[:, 1]]
    changed = np.zeros(len(ids), bool)
    chars = 0
    i = 0
    while i < len(ids):  # tokens sharing one character span (a split character) as a group
        j = i + 1
        while j < len(ids) and offs[j, 0] == offs[i, 0] and offs[j, 1] == offs[i, 1]:
            j += 1
        got = b''.join((surfaces[k] or b'') if k < len(surfaces) else b'' for k in ids[i:j])
        if got != data[start[i]:end[i]]:
            changed[i:j] = True
            chars += int(offs[i, 1] - offs[i, 0])
        i = j
    return start, end, changed, chars


class Encoder:
    """`encode_stream` a batch of documents at a time: ``encode(docs)`` gives the batch's
    ``(ids, start, end, changed, doc_starts)``, continuing the virtual coordinates and token
    count of the batches before it (so the batches' arrays, concatenated, are the stream of
    all the documents); ``warn()`` once at the end."""

    def __init__(self, tokenizer: Any, key: str = 'teacher.tokenizer',
                 surfaces: list[bytes | None] | None = None):
        self.tokenizer, self.key, self.tok = tokenizer, key, backend(tokenizer, key)
        self.surfaces = vocab_surfaces(tokenizer, key) if surfaces is None else surfaces
        self.lengths = np.array([len(x) if x is not None else 0 for x in self.surfaces],
                                np.int64)
        self.base = self.count = self.docs = self.changed_chars = self.changed_docs = 0

    def encode(self, docs: Sequence[str]) -> tuple[np.ndarray, ...]:
        tok, tokenizer, surfaces = self.tok, self.tokenizer, self.surfaces
        encodings = (tok.encode_batch(list(docs), add_special_tokens=False) if tok is not None
                     else None)
        bos, eos = int(tokenizer.bos_id), int(tokenizer.eos_id)
        ids_parts, start_parts, end_parts, changed_parts, doc_starts = [], [], [], [], []
        for d, text in enumerate(docs):
            data = text.encode('utf-8')
            if tok is None:
                ids = np.frombuffer(data, np.uint8).astype(np.int64) + (
                    tokenizer.vocab_size - 256)
            else:
                ids = np.asarray(encodings[d].ids, np.int64)
            width = self.lengths[ids] if len(ids) else np.zeros(0, np.int64)
            changed = np.zeros(len(ids), bool)
            exact = tok is None or _joined(surfaces, ids) == data
            if not exact and len(ids) and _joined(surfaces, ids) == b' ' + data:
                width = width.copy()  # a prefix space the tokenizer added (sentencepiece)
                width[0] -= 1
                exact = True
            if exact:
                end = np.cumsum(width)
                start = end - width
            else:
                start, end, changed, chars = _from_offsets(text, data, ids,
                                                           encodings[d].offsets, surfaces)
                self.changed_chars += chars
                self.changed_docs += bool(chars)
            base = self.base
            doc_starts.append(self.count)
            self.count += len(ids) + 2
            ids_parts += [[bos], ids, [eos]]
            start_parts += [[base], base + 1 + start, [base + 1 + len(data)]]
            end_parts += [[base + 1], base + 1 + end, [base + 2 + len(data)]]
            changed_parts += [[False], changed, [False]]
            self.base += len(data) + 2
        self.docs += len(docs)
        cat = (lambda parts, dt: np.concatenate([np.asarray(p, dt) for p in parts])
               if parts else np.zeros(0, dt))
        return (cat(ids_parts, np.int32), cat(start_parts, np.int64), cat(end_parts, np.int64),
                cat(changed_parts, bool), np.asarray(doc_starts, np.int64))

    def warn(self) -> None:
        if self.changed_chars:
            warnings.warn(f'{self.key}: normalisation changes {self.changed_chars} characters '
                          f'in {self.changed_docs} of {self.docs} documents; the spans holding '
                          'them are skipped by the cross-tokenizer losses', NormalisationWarning,
                          stacklevel=3)


def encode_stream(tokenizer: Any, docs: Sequence[str], key: str = 'teacher.tokenizer',
                  surfaces: list[bytes | None] | None = None) -> Stream:
    """Tokenizes ``docs`` as packing does (``BOS doc EOS`` each) with exact byte spans.

    Warns once (`NormalisationWarning`) with the count of characters whose tokens the
    tokenizer's normalisation changed; those tokens are marked in ``changed``. (A corpus
    larger than memory goes `Encoder` a batch at a time into `crosstok.streams`.)
    """
    enc = Encoder(tokenizer, key, surfaces)
    ids, start, end, changed, doc_starts = enc.encode(list(docs))
    enc.warn()
    return Stream(ids, start, end, changed, enc.changed_chars, enc.changed_docs, doc_starts)


def _joined(surfaces: list[bytes | None], ids: np.ndarray) -> bytes:
    if not len(ids):
        return b''
    got = operator.itemgetter(*ids.tolist())(surfaces)
    got = got if isinstance(got, tuple) else (got,)
    return b'' if any(g is None for g in got) else b''.join(got)


# -- rows -----------------------------------------------------------------------------------

ROW_KEYS = ('teacher_inputs', 'teacher_targets', 'teacher_mask', 'xt_pos', 'xt_aligned',
            'xt_same', 'xt_span', 'xt_teacher_span', 'xt_span_mask', 'xt_byte_pos',
            'xt_byte_depth', 'xt_byte_lo', 'xt_byte_hi', 'xt_byte')
"""What `Aligner.rows` adds to each packed student row (see its docstring)."""


class Aligner:
    """Aligns packed student rows with the teacher's tokens of the same text.

    Args:
      student: the student's `Stream`; row ``i`` is its tokens ``i*T .. i*T + T`` (T + 1
        tokens: inputs, then targets shifted by one), exactly as `data.text.pack` cuts it.
      teacher: the teacher's `Stream` of the same documents.
      seq_len: ``T``, the student row length.
      teacher_len: ``U``, the teacher row length (its inputs and targets).
      vocab: the `VocabMap` (for ``xt_same``).
      pad_id: the teacher's padding id.
      trie: the teacher vocabulary's `bytes.PrefixTrie` (None: no ``xt_byte*`` arrays).
    """

    def __init__(self, student: Stream, teacher: Stream, seq_len: int, teacher_len: int,
                 vocab: VocabMap, pad_id: int = 0, trie: Any = None,
                 matched: tuple[np.ndarray, np.ndarray] | None = None):
        if seq_len < 1 or teacher_len < 1:
            raise ConfigError(f'row lengths must be >= 1, got seq_len={seq_len}, '
                              f'teacher_len={teacher_len}')
        self.s, self.t, self.T, self.U = student, teacher, int(seq_len), int(teacher_len)
        self.s2t, self.pad_id, self.trie = vocab.student_to_teacher, int(pad_id), trie
        n_s = len(student.ids)
        self.num_rows = max(1, -(-(n_s - 1) // self.T))
        # Each student token's clean end matched with a teacher token's clean end (given:
        # `match_streams` stored on disk beside the streams, `crosstok.streams`).
        self.match, self.qmatch = match_streams(student, teacher) if matched is None else matched
        # The teacher tokens lying wholly inside each row's text.
        first = np.arange(self.num_rows) * self.T
        last = np.minimum(first + self.T, n_s - 1)
        self.t_first = np.searchsorted(teacher.start, student.start[first], side='left')
        after = np.searchsorted(teacher.end, student.end[last], side='right')
        self.t_count = np.clip(after - self.t_first, 0, self.U + 1)
        self.truncated = int(np.sum(after - self.t_first > self.U + 1))  # rows cut short

    def rows(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The teacher's tokens and the alignment of rows ``row_ids``, ``[B, ...]`` arrays:

        * ``teacher_inputs`` / ``teacher_targets`` ``[B, U]`` int32 and ``teacher_mask``
          ``[B, U]``: the teacher's row (padded with ``pad_id`` past its ``teacher_mask``);
        * ``xt_pos`` ``[B, T]`` int32: the teacher position that has read the same text as
          student position ``p`` (valid where ``xt_aligned``), for ``uld``;
        * ``xt_aligned`` ``[B, T]``: ``p`` and ``xt_pos`` end at one cut and both next tokens
          are real and unchanged by normalisation; ``xt_same``: besides, both next tokens
          are the same string (the mapped next-token distributions of ``aligned_kl``);
        * ``xt_span`` ``[B, T]`` / ``xt_teacher_span`` ``[B, U]`` int32: the span of each
          student / teacher target (``T``: none), and ``xt_span_mask`` ``[B, T]``: the spans
          whose tokens are all real and unchanged (``aligned_kl``'s likelihood term);
        * ``xt_byte_pos``, ``xt_byte_depth``, ``xt_byte_lo``, ``xt_byte_hi`` ``[B, T]`` int32
          and ``xt_byte`` ``[B, T]``: `bytes.byte_rows` (for ``byte_kl``), with a trie.
        """
        R = np.asarray(row_ids, np.int64).reshape(-1)
        B, T, U = len(R), self.T, self.U
        s, t = self.s, self.t
        n_s = len(s.ids)
        g = R[:, None] * T + np.arange(T + 1)[None, :]  # [B, T+1] stream indices
        real_s = g < n_s
        gc = np.minimum(g, n_s - 1)
        a, n = self.t_first[R][:, None], self.t_count[R][:, None]
        k = np.arange(U + 1)[None, :]
        tg = np.minimum(a + k, max(len(t.ids) - 1, 0))  # [B, U+1] teacher stream indices
        real_t = k < n
        t_ids = np.where(real_t, t.ids[tg] if len(t.ids) else 0, self.pad_id).astype(np.int32)
        # cuts: student token j ends where teacher token q (row-local) ends, both in the row
        q = self.qmatch[gc] - a
        cut_s = self.match[gc] & real_s & (q >= 0) & (q < n)
        cut_t = np.zeros((B, U + 1), bool)
        rows_b, cols_j = np.nonzero(cut_s)
        cut_t[rows_b, q[rows_b, cols_j]] = True
        # spans: target j lies in span (#cuts before j) - 1 if a cut follows it
        s_span, s_in = _spans(cut_s, real_s)
        t_span, t_in = _spans(cut_t, real_t)
        bad_s = (s.changed[gc[:, 1:]] | ~real_s[:, 1:]) & s_in
        bad_t = (t.changed[tg[:, 1:]] | ~real_t[:, 1:]) & t_in
        S = T
        flat = lambda span, inside, rows: np.where(inside, rows * S + span, B * S).ravel()
        rows_T, rows_U = np.repeat(np.arange(B), T), np.repeat(np.arange(B), U)
        s_flat = flat(s_span, s_in, rows_T.reshape(B, T))
        t_flat = flat(t_span, t_in, rows_U.reshape(B, U))
        count_s = np.bincount(s_flat, minlength=B * S + 1)[:B * S]
        count_t = np.bincount(t_flat, minlength=B * S + 1)[:B * S]
        bad = (np.bincount(s_flat, weights=bad_s.ravel(), minlength=B * S + 1)[:B * S]
               + np.bincount(t_flat, weights=bad_t.ravel(), minlength=B * S + 1)[:B * S])
        span_mask = ((count_s > 0) & (count_t > 0) & (bad == 0)).reshape(B, S)
        # positions: student p (predicting token p+1) vs teacher q (predicting q+1)
        qp = q[:, :T]
        qc = np.clip(qp, 0, U - 1)
        next_t = np.take_along_axis(tg, np.clip(qp + 1, 0, U), axis=1)
        aligned = (cut_s[:, :T] & real_s[:, 1:] & (qp + 1 < n) & (qp < U)
                   & ~s.changed[gc[:, 1:]] & ~t.changed[next_t])
        s_next = s.ids[gc[:, 1:]]
        mapped = self.s2t[np.clip(s_next, 0, len(self.s2t) - 1)]
        same = aligned & (mapped == t.ids[next_t]) & (s.end[gc[:, 1:]] == t.end[next_t]) \
            if len(t.ids) else aligned & False
        out = {} if self.trie is None else byte_rows(self.trie, s, t, gc, real_s, a, n, U)
        return {**out, 'teacher_inputs': t_ids[:, :U], 'teacher_targets': t_ids[:, 1:],
                'teacher_mask': real_t[:, 1:].copy(), 'xt_pos': qc.astype(np.int32),
                'xt_aligned': aligned, 'xt_same': same,
                'xt_span': np.where(s_in, s_span, S).astype(np.int32),
                'xt_teacher_span': np.where(t_in, t_span, S).astype(np.int32),
                'xt_span_mask': span_mask}

    def teacher_ends(self, row_ids: np.ndarray) -> np.ndarray:
        """``[B, U]`` byte end of each teacher input token from its row's first byte (-1:
        padding): what a teacher cache records to prove it was made from these tokens."""
        R = np.asarray(row_ids, np.int64).reshape(-1)
        k = np.arange(self.U)[None, :]
        tg = np.minimum(self.t_first[R][:, None] + k, max(len(self.t.ids) - 1, 0))
        origin = self.s.start[np.minimum(R * self.T, len(self.s.ids) - 1)][:, None]
        real = k < self.t_count[R][:, None]
        return np.where(real, self.t.end[tg] - origin, -1).astype(np.int32)

    def student_rows(self, row_ids: np.ndarray) -> dict[str, np.ndarray]:
        """The student's own packed rows (as `data.text.pack` makes them), for checks."""
        R = np.asarray(row_ids, np.int64).reshape(-1)
        g = R[:, None] * self.T + np.arange(self.T + 1)[None, :]
        real = g < len(self.s.ids)
        ids = np.where(real, self.s.ids[np.minimum(g, len(self.s.ids) - 1)], 0).astype(np.int32)
        return {'inputs': ids[:, :-1], 'targets': ids[:, 1:], 'mask': real[:, 1:]}


def _clean(stream: Stream, i: np.ndarray) -> np.ndarray:
    """`Stream.clean` at indices ``i`` only."""
    nxt = np.minimum(i + 1, len(stream.ids) - 1)
    return (stream.end[i] <= stream.start[nxt]) | (i == len(stream.ids) - 1)


def match_streams(student: Stream, teacher: Stream, out: tuple[np.ndarray, np.ndarray] | None
                  = None, chunk: int = 1 << 20) -> tuple[np.ndarray, np.ndarray]:
    """``(match, qmatch)``, ``[N_s]`` each: whether student token ``i``'s end is a cut (a
    teacher token ``qmatch[i]`` ends there too, both cleanly), ``chunk`` student tokens at a
    time (the streams may be memory-mapped; ``out``: arrays to fill, e.g. memory-mapped)."""
    n_s, n_t = len(student.ids), len(teacher.ids)
    match, qmatch = out if out is not None else (np.zeros(n_s, bool), np.zeros(n_s, np.int64))
    for a in range(0, n_s, chunk):
        i = np.arange(a, min(a + chunk, n_s))
        end = np.asarray(student.end[a:a + chunk])
        q = np.searchsorted(teacher.end, end, side='right') - 1
        qc = np.clip(q, 0, max(n_t - 1, 0))
        qmatch[a:a + chunk] = qc
        match[a:a + chunk] = ((q >= 0) & (np.asarray(teacher.end[qc]) == end)
                              & _clean(teacher, qc) & _clean(student, i)) if n_t else False
    return match, qmatch


def _spans(cut: np.ndarray, real: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Span id of every target (tokens 1..L-1 of ``[B, L]`` rows) and whether it is in one:
    after at least one cut, with a cut at or after it."""
    cum = np.cumsum(cut, axis=1)
    before = cum[:, :-1]  # cuts at tokens 0..j-1, for target j
    inside = (before >= 1) & (cum[:, -1:] > before) & real[:, 1:]
    return before - 1, inside
