"""Both tokenizations of a packed corpus, stored once on disk and memory-mapped.

In memory, the two token streams of `align.Aligner` cost ~40 bytes per token of the corpus
(ids, byte spans and flags, twice, plus the match of the two), which a corpus larger than
RAM cannot afford. For a corpus packed on disk (`data.packed`: ``data.files`` or a TFDS text
dataset) they are written here instead, one pass over the text for both splits and both
tokenizers, a batch of documents at a time (`align.Encoder`, then `align.match_streams`
``chunk`` tokens at a time), and read back with `numpy.memmap`: the operating system pages
in what the batches touch, and host memory no longer grows with the corpus (only the rows'
first teacher token and count, 16 bytes per row). Every later run with the same corpus and
tokenizers reuses them, so the text is not tokenized again.

The directory sits inside the packed cache of the student's rows (whose fingerprint already
names the corpus, the student's tokenizer and ``seq_len``), named by the teacher tokenizer's
SHA-256, and holds raw little-endian arrays ``{split}.{student|teacher}.{field}`` plus
``{split}.match`` / ``{split}.qmatch`` and ``meta.json``. It is written to a temporary
directory and renamed when complete, like the packed rows.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable, Iterable
from typing import Any

import numpy as np

from jaxdistill.crosstok import align
from jaxdistill.errors import DataError

FIELDS = {'ids': np.int32, 'start': np.int64, 'end': np.int64, 'changed': np.bool_,
          'doc_starts': np.int64}
MATCH = {'match': np.bool_, 'qmatch': np.int64}
SIDES = ('student', 'teacher')
BATCH_BYTES = 1 << 20  # text encoded per tokenizer call
FORMAT = 1


def directory(packed_dir: str, teacher_sha256: str) -> str:
    return os.path.join(packed_dir, f'xtok-{teacher_sha256[:16]}')


def open_or_build(packed_dir: str, records: Callable[[], Iterable[tuple[str, str]]],
                  tokenizers: dict[str, tuple[Any, str, list]], teacher_sha256: str,
                  splits: tuple[str, ...] = ('train', 'test'), *, is_writer: bool = True,
                  say: Callable[[str], None] = print) -> dict[str, tuple]:
    """``{split: (student Stream, teacher Stream, (match, qmatch))}``, memory-mapped, built
    first if absent. ``records()`` yields ``(split, document)`` in the packed order;
    ``tokenizers[side]`` is ``(tokenizer, config key, surfaces)``."""
    path = directory(packed_dir, teacher_sha256)
    if not os.path.exists(os.path.join(path, 'meta.json')):
        if not is_writer:
            raise DataError(f'data.cache_dir: {path} was not written by process 0: put '
                            'data.cache_dir on a file system every process shares')
        _build(path, records, tokenizers, teacher_sha256, splits, say)
    with open(os.path.join(path, 'meta.json')) as f:
        meta = json.load(f)
    if meta.get('format') != FORMAT or meta.get('teacher_tokenizer') != teacher_sha256:
        raise DataError(f'data.cache_dir: {path} holds token streams of another format or '
                        'teacher tokenizer; delete it to tokenize the text again')
    return {s: _open_split(path, s, meta['splits'][s]) for s in splits}


def _array(path: str, dtype, n: int, mode: str = 'r') -> np.ndarray:
    """A raw array file memory-mapped (``mode='w+'`` creates it); empty: in memory."""
    if n == 0:
        if mode == 'w+':
            open(path, 'wb').close()
        return np.zeros(0, dtype)
    return np.memmap(path, dtype=dtype, mode=mode, shape=(n,))


def _open_streams(path: str, split: str, counts: dict[str, Any]) -> list[align.Stream]:
    streams = []
    for side in SIDES:
        c = counts[side]
        f = {k: _array(os.path.join(path, f'{split}.{side}.{k}'), dt,
                       c['docs'] if k == 'doc_starts' else c['tokens']) for k, dt in FIELDS.items()}
        streams.append(align.Stream(f['ids'], f['start'], f['end'], f['changed'],
                                    c['changed_chars'], c['changed_docs'], f['doc_starts']))
    return streams


def _open_split(path: str, split: str, counts: dict[str, Any]) -> tuple:
    s, t = _open_streams(path, split, counts)
    n_s = counts['student']['tokens']
    matched = tuple(_array(os.path.join(path, f'{split}.{k}'), dt, n_s)
                    for k, dt in MATCH.items())
    return s, t, matched


def _build(path: str, records, tokenizers, teacher_sha256: str, splits, say) -> None:
    from jaxdistill.data.packed import staged

    with staged(path, '.xtok-', 'the token streams') as tmp:
        t0 = time.perf_counter()
        say(f'cross-tokenizer: tokenizing the text with both tokenizers once into {path} ...')
        writers = {(s, side): _Writer(tmp, s, side, *tokenizers[side])
                   for s in splits for side in SIDES}
        pending = {s: [] for s in splits}
        size = dict.fromkeys(splits, 0)
        for split, doc in records():
            pending[split].append(doc)
            size[split] += len(doc)
            if size[split] >= BATCH_BYTES:
                for side in SIDES:
                    writers[split, side].add(pending[split])
                pending[split], size[split] = [], 0
        for split in splits:
            for side in SIDES:
                writers[split, side].add(pending[split])
        meta = {'format': FORMAT, 'teacher_tokenizer': teacher_sha256, 'splits': {}}
        for split in splits:
            counts = {side: writers[split, side].close() for side in SIDES}
            s, t = _open_streams(tmp, split, counts)
            out = tuple(_array(os.path.join(tmp, f'{split}.{k}'), dt,
                               counts['student']['tokens'], 'w+') for k, dt in MATCH.items())
            align.match_streams(s, t, out)
            for x in out:
                if isinstance(x, np.memmap):
                    x.flush()
            meta['splits'][split] = counts
        meta['seconds'] = round(time.perf_counter() - t0, 3)
        with open(os.path.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
    tokens = {side: sum(meta['splits'][s][side]['tokens'] for s in splits) for side in SIDES}
    say(f'cross-tokenizer: {tokens["student"]} student and {tokens["teacher"]} teacher tokens '
        f'in {meta["seconds"]:.1f} s')


class _Writer:
    """One side of one split: `align.Encoder` batches appended to the raw field files."""

    def __init__(self, root: str, split: str, side: str, tokenizer, key: str, surfaces):
        self.encoder = align.Encoder(tokenizer, key, surfaces)
        self.files = {f: open(os.path.join(root, f'{split}.{side}.{f}'), 'wb') for f in FIELDS}

    def add(self, docs: list[str]) -> None:
        if not docs:
            return
        for f, a in zip(FIELDS, self.encoder.encode(docs), strict=True):
            np.ascontiguousarray(a, FIELDS[f]).tofile(self.files[f])

    def close(self) -> dict[str, int]:
        for f in self.files.values():
            f.close()
        self.encoder.warn()
        e = self.encoder
        return {'tokens': int(e.count), 'docs': int(e.docs), 'bytes': int(e.base),
                'changed_chars': int(e.changed_chars), 'changed_docs': int(e.changed_docs)}
