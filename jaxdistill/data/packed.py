"""Tokenize and pack a corpus once, streaming, into ArrayRecord rows that every run reads back.

The rows are exactly `jaxdistill.data.text.pack`'s (documents as ``BOS doc EOS`` in one
stream; row ``i`` holds stream tokens ``i * L .. (i + 1) * L``, ``L = seq_len``, so
``inputs = row[:-1]``, ``targets = row[1:]``; only the last row is padded), but built
``CHUNK_TOKENS`` at a time: memory is bounded by a chunk, not by the corpus, so a corpus larger
than RAM packs and trains. Each row is one ArrayRecord record of ``L + 1`` tokens (uint16 when
the vocabulary fits, else int32); readers fetch only the rows of their batches.

A cache directory holds ``train.array_record``, ``test.array_record`` and ``meta.json``. The
directory is named by the tokenizer and ``seq_len`` (so changing either packs anew beside
the old one); ``meta.json`` records the fingerprint (every file's path, size and mtime or
the TFDS dataset's files, the text key and split rule, the tokenizer's SHA-256, ``seq_len``)
and the rows, tokens and UTF-8 bytes of each split. A cache whose fingerprint differs from
the config's (the files changed since: stale; or another corpus's: foreign) is refused in one
line naming the field. It is written to a temporary directory and renamed when complete, so a
crash, or bad input found mid-corpus, leaves nothing behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import numpy as np

from jaxdistill.errors import DataError

SPLITS = ('train', 'test')
CHUNK_TOKENS = 1 << 20  # tokens gathered before rows are cut and written
BATCH_BYTES = 1 << 20  # text encoded per tokenizer call
FORMAT = 1


def _hf(tokenizer):
    """The Hugging Face ``tokenizers.Tokenizer`` inside jaxdistill's BPE / HF wrappers."""
    inner = getattr(tokenizer, '_tok', None)
    return inner if hasattr(inner, 'encode_batch') and hasattr(inner, 'to_str') else None


def tokenizer_sha256(tokenizer) -> str:
    """What identifies a tokenizer: its JSON (BPE / Hugging Face), else its class and name."""
    to_json = getattr(tokenizer, 'to_json', None)
    if callable(to_json):
        ident = to_json()
    elif _hf(tokenizer) is not None:
        ident = _hf(tokenizer).to_str()
    else:
        ident = (f'{type(tokenizer).__module__}.{type(tokenizer).__qualname__}:'
                 f'{getattr(tokenizer, "name", "")}:{tokenizer.vocab_size}')
    specials = f'{tokenizer.pad_id},{tokenizer.bos_id},{tokenizer.eos_id}'
    return hashlib.sha256(f'{ident}|{specials}'.encode()).hexdigest()


def batch_encoder(tokenizer) -> Callable[[list[str]], list[np.ndarray]]:
    """Encodes a list of texts to int arrays as fast as the tokenizer allows: bytes by numpy,
    Hugging Face tokenizers in one batched (multi-threaded) call, anything else one by one."""
    from jaxdistill.data.tokenizer import SPECIAL_TOKENS, ByteTokenizer

    if type(tokenizer) is ByteTokenizer:
        offset = len(SPECIAL_TOKENS)
        return lambda texts: [np.frombuffer(t.encode('utf-8', errors='surrogatepass'),
                                            np.uint8).astype(np.int32) + offset for t in texts]
    inner = _hf(tokenizer)
    if inner is not None:
        return lambda texts: [np.asarray(e.ids, np.int32)
                              for e in inner.encode_batch(texts, add_special_tokens=False)]
    batch = getattr(tokenizer, 'encode_batch', None)
    if callable(batch):
        return lambda texts: [np.asarray(ids, np.int32) for ids in batch(texts)]
    return lambda texts: [np.asarray(tokenizer.encode(t), np.int32) for t in texts]


class RowWriter:
    """Cuts a token stream into packed rows and writes them as they fill."""

    def __init__(self, path: str, seq_len: int, pad_id: int, dtype: np.dtype) -> None:
        from array_record.python.array_record_module import ArrayRecordWriter

        self.seq_len, self.pad_id, self.dtype = seq_len, pad_id, dtype
        self._writer = ArrayRecordWriter(path, 'group_size:1')
        self._pending: list[np.ndarray] = []
        self._pending_len = 0
        self._carry = np.zeros(0, np.int32)  # stream tokens not yet in a full row (>= 1 once)
        self.rows = self.tokens = self.last_targets = 0

    def add(self, pieces: Iterable[np.ndarray]) -> None:
        for p in pieces:
            self._pending.append(p)
            self._pending_len += len(p)
        if self._pending_len >= CHUNK_TOKENS:
            self._flush()

    def _flush(self) -> None:
        stream = np.concatenate([self._carry, *self._pending]).astype(np.int32)
        self._pending, self._pending_len = [], 0
        n_full = max(0, (len(stream) - 1) // self.seq_len)
        for i in range(n_full):
            self._write(stream[i * self.seq_len:(i + 1) * self.seq_len + 1])
        self._carry = stream[n_full * self.seq_len:]  # shares its first token with the last row

    def _write(self, row: np.ndarray) -> None:
        self._writer.write(row.astype(self.dtype).tobytes())
        self.rows += 1

    def close(self) -> None:
        """Writes the padded last row (if any targets are left) and closes the file."""
        self._flush()
        left = len(self._carry) - 1
        if left > 0:
            row = np.full(self.seq_len + 1, self.pad_id, np.int32)
            row[:len(self._carry)] = self._carry
            self._write(row)
            self.last_targets = left
        else:
            self.last_targets = self.seq_len
        self._writer.close()
        self.tokens = max(0, (self.rows - 1) * self.seq_len + self.last_targets)


class SplitPacker:
    """Tokenizes documents a batch at a time and packs them into one split's rows."""

    def __init__(self, tokenizer, seq_len: int, path: str, dtype: np.dtype) -> None:
        self._encode = batch_encoder(tokenizer)
        self._writer = RowWriter(path, seq_len, tokenizer.pad_id, dtype)
        self._bos = np.array([tokenizer.bos_id], np.int32)
        self._eos = np.array([tokenizer.eos_id], np.int32)
        self._batch: list[str] = []
        self._size = 0
        self.documents = self.bytes = 0

    def add(self, doc: str) -> None:
        n = len(doc.encode('utf-8', errors='surrogatepass'))
        self._batch.append(doc)
        self._size += n
        self.documents += 1
        self.bytes += n
        if self._size >= BATCH_BYTES:
            self._encode_batch()

    def _encode_batch(self) -> None:
        for ids in self._encode(self._batch):
            self._writer.add((self._bos, ids, self._eos))
        self._batch, self._size = [], 0

    def close(self) -> dict[str, int]:
        """Packs what is left; ``{rows, documents, tokens (targets), bytes (UTF-8 bytes of the
        documents), last_row_targets}``."""
        if self._batch:
            self._encode_batch()
        w = self._writer
        w.close()
        return {'documents': self.documents, 'bytes': self.bytes, 'rows': w.rows,
                'tokens': w.tokens, 'last_row_targets': w.last_targets}


def pack_split(documents: Iterable[str], tokenizer, seq_len: int, path: str,
               dtype: np.dtype) -> dict[str, int]:
    """Streams ``documents`` through ``tokenizer`` into packed rows at ``path``."""
    packer = SplitPacker(tokenizer, seq_len, path, dtype)
    for doc in documents:
        packer.add(doc)
    return packer.close()


class RecordFile:
    """Random access to one ArrayRecord file: ``read(ids)`` gives the records' bytes.

    One `ArrayRecordReader` per process, opened on first use, read with its own batched
    ``read`` (safe from several threads: Grain's workers share it). Not Grain's
    ``ArrayRecordDataSource.__getitems__``: that path was measured holding on to host memory
    in proportion to the bytes read (+197 MB of RSS after one pass over an 80 MB file in
    256-record batches, against +3 MB through the reader's ``read``), which a corpus larger
    than memory cannot afford. Pickles by path (worker processes open their own).
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._reader = None
        self._lock = threading.Lock()
        self._n = int(self._open().num_records())

    def _open(self):
        if self._reader is None:
            from array_record.python.array_record_module import ArrayRecordReader

            with self._lock:
                if self._reader is None:
                    self._reader = ArrayRecordReader(self.path, 'readahead_buffer_size:0',
                                                     file_reader_buffer_size=32768)
        return self._reader

    def __len__(self) -> int:
        return self._n

    def read(self, ids) -> list[bytes]:
        ids = [int(i) for i in ids]
        return list(self._open().read(ids)) if ids else []

    def __getstate__(self) -> dict[str, Any]:
        return {'path': self.path, '_n': self._n}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state, _reader=None, _lock=threading.Lock())


class PackedRows:
    """Random access to packed rows: ``take(ids)`` gives ``{'inputs', 'targets', 'mask'}``.

    Also a read-only mapping of whole columns (``rows['inputs']`` reads every row into memory:
    only for small splits and tests; a pass over a large one goes ``iter_rows``' chunks).
    ``fingerprint_sha256`` identifies what the rows were packed from (`fingerprint_sha256`
    of the cache's fingerprint): stored teacher signals are keyed by it, not by the rows.
    """

    def __init__(self, path: str, seq_len: int, dtype: str, last_row_targets: int,
                 fingerprint_sha256: str = '') -> None:
        self.path, self.seq_len, self.dtype = path, seq_len, np.dtype(dtype)
        self.fingerprint_sha256 = fingerprint_sha256
        self._source = RecordFile(path)
        self._n = len(self._source)
        self._last = last_row_targets

    def __len__(self) -> int:
        return self._n

    def keys(self) -> tuple[str, ...]:
        return ('inputs', 'targets', 'mask')

    def __getitem__(self, key: str) -> np.ndarray:
        if key not in self.keys():
            raise KeyError(key)
        return self.take(np.arange(self._n))[key]

    def take(self, ids) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) == 0:
            rows = np.zeros((0, self.seq_len + 1), np.int32)
        else:
            raw = self._source.read(ids)
            rows = np.frombuffer(b''.join(raw), self.dtype).reshape(len(ids), -1).astype(np.int32)
        mask = np.ones((len(ids), self.seq_len), bool)
        last = ids == self._n - 1
        mask[last, self._last:] = False
        return {'inputs': rows[:, :-1], 'targets': rows[:, 1:], 'mask': mask}


def fingerprint_sha256(fingerprint: dict[str, Any]) -> str:
    """SHA-256 of a packed cache's fingerprint (its JSON, keys sorted): the run's
    ``provenance.fingerprint_sha256`` and what a teacher cache of these rows is keyed by."""
    return hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()


def _first_difference(old: dict[str, Any], new: dict[str, Any]) -> str | None:
    for key in sorted(set(old) | set(new)):
        if old.get(key) != new.get(key):
            return key
    return None


def _describe_change(key: str, old: Any, new: Any) -> str:
    if isinstance(old, list) and isinstance(new, list):
        for a, b in zip(old, new):
            if a != b:
                return f'{a!r} -> {b!r}'
        return f'{len(old)} -> {len(new)} entries'
    return f'{old!r} -> {new!r}'


def cache_directory(root: str, tokenizer, seq_len: int) -> str:
    name = re.sub(r'[^A-Za-z0-9_.-]+', '_', getattr(tokenizer, 'name', type(tokenizer).__name__))
    return os.path.join(root, f'{name.strip("_")[-40:]}-{tokenizer_sha256(tokenizer)[:8]}'
                              f'-L{seq_len}')


def open_or_pack(corpus, tokenizer, seq_len: int, root: str, *, is_writer: bool = True,
                 say: Callable[[str], None] = print) -> tuple[dict[str, PackedRows], dict]:
    """The packed splits of ``corpus`` under ``root``, packed first if absent.

    Returns ``({'train': rows, 'test': rows}, meta)``; ``meta['splits'][s]`` has rows, tokens,
    documents and bytes. A cache with another fingerprint raises a one-line `DataError`
    naming the field that differs. Only ``is_writer`` processes pack (the others call this
    again after a barrier).
    """
    directory = cache_directory(root, tokenizer, seq_len)
    fingerprint = {**corpus.fingerprint(), 'data.tokenizer': tokenizer_sha256(tokenizer),
                   'data.seq_len': seq_len, 'format': FORMAT}
    meta_path = os.path.join(directory, 'meta.json')
    if not os.path.exists(meta_path):
        if not is_writer:
            raise DataError(f'data.cache_dir: {directory} was not written by process 0: put '
                            'data.cache_dir on a file system every process shares')
        corpus.check()
        _pack(corpus, tokenizer, seq_len, directory, fingerprint, say)
    with open(meta_path) as f:
        meta = json.load(f)
    key = _first_difference(meta['fingerprint'], fingerprint)
    if key is not None:
        change = _describe_change(key, meta['fingerprint'].get(key), fingerprint.get(key))
        field = key if key.startswith('data.') else 'data.cache_dir'
        raise DataError(f'{field}: the packed cache {directory} was made from other input '
                        f'({change}); delete it to pack again, or set data.cache_dir elsewhere')
    digest = fingerprint_sha256(meta['fingerprint'])
    rows = {s: PackedRows(os.path.join(directory, f'{s}.array_record'), seq_len,
                          meta['dtype'], meta['splits'][s]['last_row_targets'],
                          digest) for s in SPLITS}
    return rows, meta


@contextlib.contextmanager
def staged(directory: str, prefix: str, what: str) -> Iterator[str]:
    """A temporary directory beside ``directory`` to write into: renamed to ``directory``
    when the block completes, removed if it raises (a crash, or bad input found midway,
    leaves nothing behind). A parent that cannot be written is a one-line `DataError`
    naming ``what`` and ``data.cache_dir``."""
    parent = os.path.dirname(directory)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=prefix, dir=parent)
    except OSError as e:
        raise DataError(f'data.cache_dir: cannot write {what} in {parent} '
                        f'({e.strerror}); set data.cache_dir to a writable directory') from None
    try:
        yield tmp
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _pack(corpus, tokenizer, seq_len: int, directory: str, fingerprint: dict,
          say: Callable[[str], None]) -> None:
    dtype = np.dtype(np.uint16 if tokenizer.vocab_size <= 2**16 else np.int32)
    with staged(directory, '.packing-', 'the packed rows') as tmp:
        t0 = time.perf_counter()
        say(f'packing {corpus.name} once into {directory} (seq_len {seq_len}) ...')
        packers = {s: SplitPacker(tokenizer, seq_len, os.path.join(tmp, f'{s}.array_record'),
                                  dtype) for s in SPLITS}
        bad_before = corpus.bad_bytes  # (a BPE may have read some of the text already)
        for split, doc in corpus.records():  # one pass over the data for both splits
            packers[split].add(doc)
        splits = {s: p.close() for s, p in packers.items()}
        for split in SPLITS:
            if not splits[split]['documents']:
                raise DataError(f'{corpus.name}: the {split} split has no documents; give '
                                'more text, data.test_files, or a larger data.test_fraction')
        meta = {'fingerprint': fingerprint, 'dtype': dtype.name, 'seq_len': seq_len,
                'source': corpus.name, 'undecodable_bytes': corpus.bad_bytes - bad_before,
                'splits': splits,
                'seconds': round(time.perf_counter() - t0, 3)}
        with open(os.path.join(tmp, 'meta.json'), 'w') as f:
            json.dump(meta, f, indent=1)
    mb = sum(s['bytes'] for s in splits.values()) / 2**20
    say(f'packed {mb:.1f} MB in {meta["seconds"]:.1f} s: '
        + ', '.join(f'{s} {v["rows"]} rows / {v["tokens"]} tokens' for s, v in splits.items()))


def iter_rows(rows: PackedRows, batch: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, in order, ``batch`` at a time."""
    for start in range(0, len(rows), batch):
        yield rows.take(np.arange(start, min(start + batch, len(rows))))
