"""Alignment of two tokenizations by byte offsets, on hand-made strings with known spans."""

from __future__ import annotations

import json
import types
import warnings

import numpy as np
import pytest

from jaxdistill.crosstok import align
from jaxdistill.data.text import pack
from jaxdistill.data.tokenizer import BPETokenizer, ByteTokenizer
from jaxdistill.errors import ConfigError

SPECIALS = ('<pad>', '<bos>', '<eos>')


class GreedyTokenizer:
    """A tokenizers-like backend: greedy longest match over ``pieces`` (plus every single
    character of the text), character offsets, optional lower-casing 'normalisation'."""

    pad_id, bos_id, eos_id = 0, 1, 2

    def __init__(self, pieces, lower=False, docs=()):
        self.vocab = {t: i for i, t in enumerate(SPECIALS)}
        for p in [*pieces, *sorted(set(''.join(docs)))]:
            self.vocab.setdefault(p, len(self.vocab))
        self.lower, self.vocab_size = lower, len(self.vocab)

    def _piece(self, text, i):
        for n in range(len(text) - i, 0, -1):
            if text[i:i + n] in self.vocab:
                return text[i:i + n]
        raise KeyError(text[i])

    def encode_batch(self, docs, add_special_tokens=False):
        out = []
        for text in docs:
            norm = text.lower() if self.lower else text
            ids, offsets, i = [], [], 0
            while i < len(norm):
                p = self._piece(norm, i)
                ids.append(self.vocab[p])
                offsets.append((i, i + len(p)))
                i += len(p)
            out.append(types.SimpleNamespace(ids=ids, offsets=offsets))
        return out

    def get_vocab(self, with_added_tokens=True):
        return dict(self.vocab)

    def get_added_tokens_decoder(self):
        return {i: types.SimpleNamespace(content=t, special=True) for i, t in enumerate(SPECIALS)}

    def to_str(self):
        return json.dumps({'decoder': None})

    def pieces(self, ids):
        inverse = {i: t for t, i in self.vocab.items()}
        return [inverse[int(i)] for i in ids]


def _aligner(student, teacher, docs, seq_len, teacher_len):
    vm = align.vocab_map(student, teacher)
    s = align.encode_stream(student, docs, 'data.tokenizer')
    t = align.encode_stream(teacher, docs)
    return align.Aligner(s, t, seq_len, teacher_len, vm), s, t


def test_known_spans_longer_and_shorter_tokens():
    # student: 'ab' ' ' 'cd' ; teacher: 'a' 'b ' 'cd': the student's 'ab' is longer than the
    # teacher's 'a', its ' ' shorter than 'b '; the boundaries coincide after 'ab ' and 'cd'.
    student = GreedyTokenizer(['ab', ' ', 'cd'])
    teacher = GreedyTokenizer(['a', 'b ', 'cd'])
    al, s, t = _aligner(student, teacher, ['ab cd'], seq_len=4, teacher_len=4)
    assert student.pieces(s.ids[1:-1]) == ['ab', ' ', 'cd']
    assert teacher.pieces(t.ids[1:-1]) == ['a', 'b ', 'cd']
    np.testing.assert_array_equal(s.end, [1, 3, 4, 6, 7])  # BOS, ab, ' ', cd, EOS
    np.testing.assert_array_equal(t.end, [1, 2, 4, 6, 7])
    r = al.rows(np.array([0]))
    # student row: BOS ab ' ' cd EOS (targets ab ' ' cd EOS); teacher: BOS a 'b ' cd | EOS
    assert teacher.pieces(r['teacher_inputs'][0]) == ['<bos>', 'a', 'b ', 'cd']
    assert r['teacher_mask'][0].tolist() == [True] * 4
    # spans: (BOS, 'ab '] = student [ab, ' '] / teacher [a, 'b '];  ('ab ', cd]; (cd, EOS]
    assert r['xt_span'][0].tolist() == [0, 0, 1, 2]
    assert r['xt_teacher_span'][0].tolist() == [0, 0, 1, 2]
    assert r['xt_span_mask'][0].tolist() == [True, True, True, False]
    # aligned positions: after BOS (0 <-> 0), after 'ab ' (2 <-> 2), after cd (3 <-> 3)
    assert r['xt_aligned'][0].tolist() == [True, False, True, True]
    assert r['xt_pos'][0].tolist()[:1] + r['xt_pos'][0].tolist()[2:] == [0, 2, 3]
    # the same next string: 'cd' after 'ab ', and EOS after 'cd'; not 'ab' vs 'a'
    assert r['xt_same'][0].tolist() == [False, False, True, True]


def test_unicode_bytes_against_characters():
    docs = ['né 日本', 'x']
    teacher = GreedyTokenizer(['né', ' 日本'], docs=docs)
    al, s, t = _aligner(ByteTokenizer(), teacher, docs, seq_len=16, teacher_len=8)
    r = al.rows(np.arange(al.num_rows))
    # 'né' is 3 bytes, ' 日本' 7: the cuts are after BOS, after 'né', after ' 日本', EOS ...
    row = r['xt_span'][0]
    counts = np.bincount(row[row < 16], minlength=3)
    assert counts[:3].tolist() == [3, 7, 1]  # bytes of 'né', of ' 日本', then EOS
    assert r['xt_span_mask'][0][:3].tolist() == [True, True, True]
    _check_spans_cover_same_bytes(al, ByteTokenizer(), teacher, docs)


def test_whitespace_merges():
    docs = ['a  b\n\n\nc']
    teacher = GreedyTokenizer(['  ', '\n\n\n', 'a', 'b', 'c'])
    student = GreedyTokenizer([' ', '\n', '\n\n', 'a', 'b', 'c'])
    al, s, t = _aligner(student, teacher, docs, seq_len=12, teacher_len=8)
    assert teacher.pieces(t.ids[1:-1]) == ['a', '  ', 'b', '\n\n\n', 'c']
    assert student.pieces(s.ids[1:-1]) == ['a', ' ', ' ', 'b', '\n\n', '\n', 'c']
    r = al.rows(np.array([0]))
    # the two spaces are one span (2 student tokens, 1 teacher token), as are the newlines
    assert r['xt_span'][0][:8].tolist() == [0, 1, 1, 2, 3, 3, 4, 5]
    assert r['xt_teacher_span'][0][:6].tolist() == [0, 1, 2, 3, 4, 5]
    assert r['xt_same'][0][:8].tolist() == [True, False, False, True, False, False, True, True]
    _check_spans_cover_same_bytes(al, student, teacher, docs)


def test_normalisation_changes_are_counted_and_skipped():
    docs = ['AB cd', 'ef']
    teacher = GreedyTokenizer(['ab', ' ', 'cd', 'ef'], lower=True)
    with pytest.warns(align.NormalisationWarning, match='changes 2 characters in 1 of 2'):
        al, s, t = _aligner(ByteTokenizer(), teacher, docs, seq_len=16, teacher_len=8)
    assert t.changed.sum() == 1 and t.changed_chars == 2
    r = al.rows(np.array([0]))
    # spans: 'AB' (changed: skipped), ' ', 'cd', EOS, then the second document's
    assert r['xt_span_mask'][0][:4].tolist() == [False, True, True, True]
    assert not r['xt_aligned'][0][0]  # BOS -> 'A' vs BOS -> 'ab': the next token changed
    with warnings.catch_warnings():
        warnings.simplefilter('error')  # unchanged text: no warning
        align.encode_stream(teacher, ['ab cd'])


def test_tokenizer_without_offsets_is_one_line_error():
    class NoOffsets:
        name, vocab_size, pad_id, bos_id, eos_id = 'mine', 10, 0, 1, 2

        def encode(self, text):
            return [3]

    with pytest.raises(ConfigError, match=r"teacher.tokenizer: NoOffsets gives no character "
                                          r"offsets") as e:
        align.vocab_map(ByteTokenizer(), NoOffsets())
    assert '\n' not in str(e.value)


def test_identical_tokenizers_align_every_position():
    docs = _corpus()
    bpe = BPETokenizer.train(docs, 320)
    al, s, t = _aligner(bpe, bpe, docs, seq_len=24, teacher_len=24)
    r = al.rows(np.arange(al.num_rows))
    mask = al.student_rows(np.arange(al.num_rows))['mask']
    np.testing.assert_array_equal(r['xt_same'], mask)
    np.testing.assert_array_equal(r['xt_aligned'], mask)
    # the first row starts at a BOS, so its teacher row is the student row itself
    np.testing.assert_array_equal(r['teacher_inputs'][0], al.student_rows([0])['inputs'][0])
    np.testing.assert_array_equal(r['xt_pos'][0], np.arange(24))


def test_bpe_teacher_byte_student_on_real_text():
    docs = _corpus()
    bpe, byte = BPETokenizer.train(docs, 400), ByteTokenizer()
    al, s, t = _aligner(byte, bpe, docs, seq_len=32, teacher_len=32)
    # the student rows are exactly what packing makes
    packed = pack([byte.encode(d) for d in docs], 32)
    got = al.student_rows(np.arange(al.num_rows))
    for k in packed:
        np.testing.assert_array_equal(got[k], packed[k])
    # the teacher's tokens are its own encoding of the documents
    np.testing.assert_array_equal(t.ids, pack([bpe.encode(d) for d in docs], len(t.ids) - 1)[
        'inputs'][0].tolist() + [t.ids[-1]])
    r = al.rows(np.arange(al.num_rows))
    assert r['xt_span_mask'].sum() > 0.2 * got['mask'].sum() / 4
    _check_spans_cover_same_bytes(al, byte, bpe, docs)


def _check_spans_cover_same_bytes(al, student, teacher, docs):
    """Independent check: every valid span's student and teacher tokens decode to the same
    bytes, and aligned positions have read up to the same byte."""
    s_surf = align.vocab_surfaces(student, 'data.tokenizer')
    t_surf = align.vocab_surfaces(teacher)
    rows = np.arange(al.num_rows)
    r, sr = al.rows(rows), al.student_rows(rows)
    role = {0: b'<pad>', 1: b'<bos>', 2: b'<eos>'}
    surf = lambda table, i: table[i] if table[i] is not None else role[int(i)]
    for b in rows:
        for span in np.flatnonzero(r['xt_span_mask'][b]):
            s_bytes = b''.join(surf(s_surf, i) for i in sr['targets'][b][r['xt_span'][b] == span])
            t_bytes = b''.join(surf(t_surf, i) for i in
                               r['teacher_targets'][b][r['xt_teacher_span'][b] == span])
            assert s_bytes == t_bytes, (b, span, s_bytes, t_bytes)
        for p in np.flatnonzero(r['xt_aligned'][b]):
            g = b * al.T + p
            q = al.t_first[b] + r['xt_pos'][b][p]
            assert al.s.end[g] == al.t.end[q]


def _corpus():
    return ['Hello, wörld! The quick brown fox — jumps over 12 lazy dogs.\n\n    def f(x):\n'
            '        return x ** 2  # 日本語のテキスト\n' * 3,
            'Another document: naïve café, résumé; tabs\tand   spaces.', 'x']
