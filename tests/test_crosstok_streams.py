"""Both tokenizations stored on disk and memory-mapped (`crosstok.streams`): the same streams,
matches and rows as the in-memory path, built once, reused, and nothing left by a failure."""

from __future__ import annotations

import os
import warnings

import numpy as np
import pytest

from jaxdistill.crosstok import align, streams
from jaxdistill.data.tokenizer import ByteTokenizer
from tests.test_crosstok_align import GreedyTokenizer

DOCS = {'train': [f'Doc {i}: ab cd ef, Ab CD {"x" * (i % 7)} done.' for i in range(40)],
        'test': ['ab CD ef', 'AB cd.']}


def _records():
    for i in range(40):  # the two splits interleaved, as a corpus pass yields them
        yield 'train', DOCS['train'][i]
        if i in (3, 30):
            yield 'test', DOCS['test'][i > 3]


def _tokenizers():
    # the teacher lower-cases: its normalisation changes characters (the slow path)
    student = ByteTokenizer()
    teacher = GreedyTokenizer(['ab', ' cd', 'ef', 'done', 'Doc '], lower=True,
                              docs=[d.lower() for d in DOCS['train'] + DOCS['test']])
    return {'student': (student, 'data.tokenizer', align.vocab_surfaces(student)),
            'teacher': (teacher, 'teacher.tokenizer', align.vocab_surfaces(teacher))}


def _build(root, monkeypatch, **kw):
    monkeypatch.setattr(streams, 'BATCH_BYTES', 200)  # several batches per split
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', align.NormalisationWarning)
        return streams.open_or_build(str(root), _records, _tokenizers(), 'f' * 64, **kw)


def test_disk_streams_equal_the_in_memory_ones(tmp_path, monkeypatch):
    out = _build(tmp_path, monkeypatch, say=lambda _: None)
    tok = _tokenizers()
    vm = align.vocab_map(tok['student'][0], tok['teacher'][0])
    for split, docs in DOCS.items():
        s_disk, t_disk, matched = out[split]
        assert isinstance(s_disk.ids, np.memmap) and isinstance(matched[1], np.memmap)
        with warnings.catch_warnings():
            warnings.simplefilter('ignore', align.NormalisationWarning)
            mem = [align.encode_stream(t, docs, k, surf) for t, k, surf in tok.values()]
        for disk, ref in zip((s_disk, t_disk), mem):
            for f in ('ids', 'start', 'end', 'changed', 'doc_starts'):
                np.testing.assert_array_equal(np.asarray(getattr(disk, f)), getattr(ref, f))
            assert (disk.changed_chars, disk.changed_docs) == (ref.changed_chars,
                                                               ref.changed_docs)
        assert mem[1].changed_chars > 0  # the lower-casing teacher took the slow path
        a_disk = align.Aligner(s_disk, t_disk, 16, 12, vm, matched=matched)
        a_mem = align.Aligner(*mem, 16, 12, vm)
        rows = np.arange(a_mem.num_rows)
        assert a_disk.num_rows == a_mem.num_rows
        got, want = a_disk.rows(rows), a_mem.rows(rows)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
        np.testing.assert_array_equal(a_disk.teacher_ends(rows), a_mem.teacher_ends(rows))


def test_match_in_chunks_equals_whole():
    tok = _tokenizers()
    with warnings.catch_warnings():
        warnings.simplefilter('ignore', align.NormalisationWarning)
        s, t = (align.encode_stream(x, DOCS['train'], k, surf) for x, k, surf in tok.values())
    whole = align.match_streams(s, t, chunk=1 << 20)
    for chunk in (1, 7, 64):
        for a, b in zip(align.match_streams(s, t, chunk=chunk), whole):
            np.testing.assert_array_equal(a, b)
    # the reference: every student end that a teacher token also ends at, both cleanly
    ends = {int(e): i for i, e in enumerate(t.end) if t.clean[i]}
    want = np.array([bool(c) and int(e) in ends for e, c in zip(s.end, s.clean)])
    np.testing.assert_array_equal(whole[0], want)
    assert 0 < want.sum() < len(want)


def test_built_once_then_reused_and_a_failure_leaves_nothing(tmp_path, monkeypatch):
    said = []
    _build(tmp_path, monkeypatch, say=said.append)
    assert len(said) == 2 and 'once' in said[0]

    def no_pass():
        raise AssertionError('the text was read again')

    again = streams.open_or_build(str(tmp_path), no_pass, _tokenizers(), 'f' * 64)
    assert len(again['train'][0].ids) > 0
    # another teacher tokenizer: a directory of its own; a failure mid-pass leaves nothing
    def failing():
        yield 'train', 'ab'
        raise OSError('disk gone')

    before = sorted(os.listdir(tmp_path))
    with pytest.raises(OSError, match='disk gone'):
        streams.open_or_build(str(tmp_path), failing, _tokenizers(), 'e' * 64)
    assert sorted(os.listdir(tmp_path)) == before


def test_other_processes_never_write(tmp_path):
    with pytest.raises(Exception, match=r'data.cache_dir: .* was not written by process 0'):
        streams.open_or_build(str(tmp_path), _records, _tokenizers(), 'f' * 64,
                              is_writer=False)
