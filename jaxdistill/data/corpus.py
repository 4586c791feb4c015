"""Your own text: documents streamed from files (``data.files``) or a TFDS text dataset.

``data.files`` is one glob or a list of globs (``~`` expanded, ``**`` recursive). By extension:

* ``.jsonl``: one JSON object per line, the document at ``data.text_key``;
* ``.txt``: the whole file is one document;
* ``.parquet``: the ``data.text_key`` column, read in record batches (``pyarrow``, which
  ``tensorflow-datasets`` already depends on).

Without ``data.test_files``, a document is held out for testing when the SHA-256 of its
UTF-8 text falls in the first ``data.test_fraction`` of the hash range: a pure function of
the text, so identical documents never straddle the split and the split does not depend on
file order or count. A TFDS dataset (``data.name`` prepared as ArrayRecord, the text at
``data.text_key``) keeps its own ``data.train_split`` / ``data.test_split``.

Everything is read lazily, one record batch at a time: nothing here holds the corpus. Bytes
that are not UTF-8 are replaced by U+FFFD and counted (`Corpus.bad_bytes`), with one
`UndecodableWarning` per corpus.
"""

from __future__ import annotations

import codecs
import glob
import hashlib
import json
import os
import warnings
from collections.abc import Iterator, Sequence
from typing import Any

from jaxdistill.errors import ConfigError, DataError

EXTENSIONS = ('.jsonl', '.txt', '.parquet')
_HASH_RANGE = 2**64


class UndecodableWarning(UserWarning):
    """A corpus held bytes that are not UTF-8 (replaced by U+FFFD)."""


class _ByteCounter:
    """Counts the bytes a strict UTF-8 decode rejects; one error handler per corpus."""

    def __init__(self) -> None:
        self.count = 0
        self.name = f'jaxdistill-count-{id(self)}'
        codecs.register_error(self.name, self._handle)

    def _handle(self, e: UnicodeDecodeError) -> tuple[str, int]:
        self.count += e.end - e.start
        return '\ufffd', e.end

    def decode(self, data: bytes) -> str:
        return data.decode('utf-8', errors=self.name)


def as_globs(files: Any) -> tuple[str, ...]:
    """``data.files`` (a string or a list of strings) as a tuple of globs."""
    if isinstance(files, str):
        return (files,) if files else ()
    if isinstance(files, (list, tuple)) and all(isinstance(f, str) and f for f in files):
        return tuple(files)
    raise ConfigError(f'data.files={files!r} must be a glob or a list of globs, e.g. '
                      "'~/corpus/*.jsonl' or ('a/*.jsonl', 'b/*.txt')")


def expand(globs: Sequence[str], key: str = 'data.files') -> list[str]:
    """The files the globs match, sorted and without repeats; an empty glob is an error."""
    out: dict[str, None] = {}
    for pattern in globs:
        matched = sorted(p for p in glob.glob(os.path.expanduser(pattern), recursive=True)
                         if os.path.isfile(p))
        if not matched:
            raise DataError(f'{key}: {pattern!r} matches no file; check the path (globs are '
                            'expanded by jaxdistill: quote them on the command line)')
        for path in matched:
            ext = _extension(path)
            if ext not in EXTENSIONS:
                raise DataError(f'{key}: {path} has extension {ext!r}; use one of '
                                f'{", ".join(EXTENSIONS)} (narrow the glob, e.g. *.jsonl)')
            out[os.path.abspath(path)] = None
    return list(out)


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def in_test(text: str, fraction: float) -> bool:
    """Whether a document is held out: its text's SHA-256 is in the first ``fraction``."""
    digest = hashlib.sha256(text.encode('utf-8', errors='surrogatepass')).digest()
    return int.from_bytes(digest[:8], 'big') < fraction * _HASH_RANGE


def _jsonl(path: str, text_key: str, counter: _ByteCounter) -> Iterator[str]:
    with open(path, 'rb') as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            where = f'{path}:{number}'
            try:
                record = json.loads(counter.decode(line))
            except json.JSONDecodeError as e:
                raise DataError(f'data.files: {where} is not a JSON object ({e.msg}); '
                                'each line of a .jsonl file must be one') from None
            if not isinstance(record, dict):
                raise DataError(f'data.files: {where} is a JSON {type(record).__name__}, '
                                'not an object with a text field')
            yield _text_of(record, text_key, where)


def _text_of(record: dict, text_key: str, where: str) -> str:
    if text_key not in record:
        raise DataError(f'data.text_key={text_key!r} is not in the record at {where} (its keys: '
                        f'{sorted(record)}); set data.text_key to the field holding the text')
    value = record[text_key]
    if isinstance(value, bytes):
        raise DataError(f'data.text_key={text_key!r} at {where} holds bytes, not text')
    if not isinstance(value, str):
        raise DataError(f'data.text_key={text_key!r} at {where} holds a '
                        f'{type(value).__name__}, not a string')
    return value


def _txt(path: str, counter: _ByteCounter) -> Iterator[str]:
    with open(path, 'rb') as f:
        yield counter.decode(f.read())


def _parquet(path: str, text_key: str, counter: _ByteCounter) -> Iterator[str]:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise ConfigError(f'data.files: {path} is Parquet, which needs pyarrow '
                          '(pip install pyarrow)') from None
    reader = pq.ParquetFile(path)
    names = reader.schema_arrow.names
    if text_key not in names:
        raise DataError(f'data.text_key={text_key!r} is not a column of {path} (its columns: '
                        f'{sorted(names)}); set data.text_key to the text column')
    for batch in reader.iter_batches(batch_size=1024, columns=[text_key]):
        for value in batch.column(0).to_pylist():
            if value is None:
                continue
            yield counter.decode(value) if isinstance(value, bytes) else str(value)


class Corpus:
    """Documents of a train and a test split, streamed; what identifies them (fingerprint)."""

    def __init__(self) -> None:
        self._counter = _ByteCounter()
        self._warned = False

    @property
    def bad_bytes(self) -> int:
        """Bytes replaced by U+FFFD so far (they were not UTF-8)."""
        return self._counter.count

    def _check_bytes(self) -> None:
        if self._counter.count and not self._warned:
            self._warned = True
            warnings.warn(f'{self.name}: {self._counter.count} byte(s) so far are not UTF-8 and '
                          'were replaced by U+FFFD (the total is in provenance as '
                          'undecodable_bytes)', UndecodableWarning, stacklevel=3)

    def records(self) -> Iterator[tuple[str, str]]:
        """``(split, document)`` of the whole corpus in one pass (each file read once)."""
        for split, doc in self._records():
            self._check_bytes()
            yield split, doc

    def documents(self, split: str) -> Iterator[str]:
        """One split's documents (a pass over the files; `records` reads both at once)."""
        return (doc for s, doc in self.records() if s == split)

    # subclasses: name, default_cache_dir, fingerprint(), _records(), check()
    name: str = ''

    def _records(self) -> Iterator[tuple[str, str]]:
        raise NotImplementedError


class FileCorpus(Corpus):
    """``data.files`` (and ``data.test_files``, or a hash-held-out ``data.test_fraction``)."""

    def __init__(self, files: Any, text_key: str, *, test_files: Any = (),
                 test_fraction: float = 0.0) -> None:
        super().__init__()
        self.files = expand(as_globs(files), 'data.files')
        self.test_files = expand(as_globs(test_files), 'data.test_files') if test_files else []
        if not self.test_files and not 0 < test_fraction < 1:
            raise ConfigError(f'data.test_fraction={test_fraction} must be in (0, 1) when '
                              'data.test_files is empty (e.g. 0.01: 1% of documents are test)')
        self.text_key, self.test_fraction = text_key, test_fraction
        self.name = f'files:{_describe(self.files)}'
        self.default_cache_dir = os.path.join(
            os.path.commonpath([os.path.dirname(p) for p in self.files]), 'jaxdistill_packed')

    def check(self) -> None:
        """Reads the first record of every file: a missing text key fails in one line now,
        not hours into packing."""
        for path in self.files + self.test_files:
            next(iter(self._read(path, _ByteCounter())), None)

    def _read(self, path: str, counter: _ByteCounter | None = None) -> Iterator[str]:
        ext, counter = _extension(path), counter or self._counter
        if ext == '.jsonl':
            return _jsonl(path, self.text_key, counter)
        if ext == '.parquet':
            return _parquet(path, self.text_key, counter)
        return _txt(path, counter)

    def fingerprint(self) -> dict[str, Any]:
        """What the packed rows depend on in the data: every file's path, size and mtime."""
        def stat(paths):
            return [[p, os.stat(p).st_size, os.stat(p).st_mtime_ns] for p in paths]
        return {'data.files': stat(self.files), 'data.test_files': stat(self.test_files),
                'data.text_key': self.text_key,
                'data.test_fraction': None if self.test_files else self.test_fraction}

    def _records(self) -> Iterator[tuple[str, str]]:
        if self.test_files:
            for split, paths in (('train', self.files), ('test', self.test_files)):
                for path in paths:
                    yield from ((split, doc) for doc in self._read(path))
            return
        for path in self.files:
            for doc in self._read(path):
                yield ('test' if in_test(doc, self.test_fraction) else 'train'), doc


def _describe(paths: list[str]) -> str:
    return paths[0] if len(paths) == 1 else f'{len(paths)} files under {os.path.commonpath(paths)}'


class TfdsCorpus(Corpus):
    """A TFDS dataset prepared as ArrayRecord; documents at ``data.text_key``."""

    def __init__(self, name: str, data_dir: str, text_key: str, splits: dict[str, str]) -> None:
        super().__init__()
        import tensorflow_datasets as tfds

        try:
            self.builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise DataError(f'data.name={name!r} is not a TFDS dataset; for your own text set '
                            "data.files='DIR/*.jsonl' instead") from None
        features = self.builder.info.features
        if text_key not in features:
            raise ConfigError(f'data.name={name!r} is not a text dataset with data.text_key='
                            f'{text_key!r} (its features: {sorted(features)}): set '
                            "data.text_key, or data.files='DIR/*.jsonl' for your own text")
        if not self.builder.is_prepared():
            raise DataError(
                f'data.name={name!r} is not prepared in data.data_dir={data_dir!r}: prepare it '
                f'once with `tfds build {name} --file_format=array_record --data_dir={data_dir}`')
        known = self.builder.info.splits
        for split, spec in splits.items():
            if spec.split('[')[0] not in known:
                raise DataError(f'data.{split}_split={spec!r} is not a split of {name!r} '
                                f'(it has {sorted(known)})')
        self.text_key, self.splits = text_key, splits
        self.name = f'tfds:{name}/{self.builder.version}'
        self.default_cache_dir = os.path.join(self.builder.data_dir, 'jaxdistill_packed')

    def _source(self, split: str):
        try:
            return self.builder.as_data_source(split=self.splits[split])
        except Exception as e:  # noqa: BLE001 - prepared as TFRecord: needs TensorFlow
            raise DataError(f'{self.name} cannot be read without TensorFlow ({type(e).__name__}:'
                            f' {e}); rebuild it with --file_format=array_record') from None

    def check(self) -> None:
        for split in self.splits:
            self._source(split)

    def fingerprint(self) -> dict[str, Any]:
        files = sorted(glob.glob(os.path.join(self.builder.data_dir, '*')))
        return {'data.name': [self.name] + [[os.path.basename(p), os.path.getsize(p)]
                                            for p in files if os.path.isfile(p)],
                'data.text_key': self.text_key,
                'data.train_split': self.splits['train'], 'data.test_split': self.splits['test']}

    def _records(self) -> Iterator[tuple[str, str]]:
        for split in ('train', 'test'):
            source = self._source(split)
            for start in range(0, len(source), 256):
                ids = list(range(start, min(start + 256, len(source))))
                # one by one: Grain's batched __getitems__ holds on to host memory in
                # proportion to the bytes read (`packed.RecordFile`)
                records = [source[i] for i in ids]
                for i, record in zip(ids, records):
                    value = record[self.text_key]
                    yield split, (self._counter.decode(value) if isinstance(value, bytes)
                                  else _text_of(record, self.text_key, f'{self.name} record {i}'))


def from_config(d) -> Corpus:
    """The corpus named by the ``data`` block: ``data.files`` if set, else ``data.name``."""
    from jaxdistill.data.pipeline import data_dir

    if as_globs(d.files):
        return FileCorpus(d.files, d.text_key, test_files=d.test_files,
                          test_fraction=d.test_fraction)
    return TfdsCorpus(d.name, data_dir(d), d.text_key,
                      {'train': d.train_split, 'test': d.test_split})
