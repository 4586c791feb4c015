"""Row-aligned arrays on disk: one ArrayRecord record per packed train row, plus a spec.

What the teacher produced for the training data (its top-k per token for ``cached``, its
completions for ``sequence``) is stored as ``DIR/rows.array_record`` next to
``DIR/spec.json``. Record ``i`` belongs to packed train row ``i`` (row order, not batch
order), so the batches of any seed, any step and any resume read it by the row indices
they already use: alignment holds by construction. Each record is a CRC-32 of its payload
followed by the payload (each array's bytes for that row, in the spec's order); the spec
holds the arrays' dtypes and per-row shapes and the *fingerprint* of what the rows were
made from (dataset, tokenizer, teacher, ...). A reader compares fingerprints first, so a
store made for other data or another teacher is refused in one line, never silently used.

Training reads a store lazily (`open_rows`: random access by row index, one record per row,
``group_size:1``), joined to the packed rows it belongs to (`Joined`), so neither the corpus
nor the store is ever whole in host memory; each record's CRC is checked as it is read.
`read` (every row at once) is for small stores and tests.

The directory is written under a temporary name and renamed when complete: an
interrupted write leaves no store that looks usable. In a bucket (``gs://``, which has no
rename) the store is written locally, then uploaded with spec.json last, and read back
through a local copy: ArrayRecord reads local files only.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import weakref
import zlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np
from array_record.python import array_record_module as ar

from jaxdistill.errors import DataError
from jaxdistill.runtime import paths

RECORDS = 'rows.array_record'
SPEC = 'spec.json'
FORMAT = 1


def exists(directory: str) -> bool:
    return paths.exists(paths.join(directory, SPEC))


def write(directory: str, fingerprint: Mapping[str, Any], chunks: Iterable[dict[str, np.ndarray]],
          extra: Mapping[str, Any] | Callable[[], Mapping[str, Any]] | None = None
          ) -> dict[str, Any]:
    """Writes ``chunks`` (dicts of ``[n, ...]`` arrays, rows in order) as one store.

    Memory is one chunk: each is written as it comes. ``extra`` adds keys to the spec (a
    callable is called once every chunk is written: totals counted while they streamed).
    Returns the spec (with ``rows`` and ``bytes``). An existing ``directory`` is an error:
    nothing a user saved is overwritten.
    """
    directory = paths.resolve(directory)
    if paths.exists(directory):
        raise DataError(f'{directory} exists already; remove it or choose another path')
    if paths.is_remote(directory):
        return _upload(directory, fingerprint, chunks, extra)
    parent = os.path.dirname(directory)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=os.path.basename(directory) + '.partial-', dir=parent)
    try:
        # one record per group: training reads rows at random (`open_rows`)
        writer = ar.ArrayRecordWriter(os.path.join(tmp, RECORDS), 'group_size:1')
        arrays, rows, payload_bytes = None, 0, 0
        for chunk in chunks:
            names = sorted(chunk)
            if arrays is None:
                arrays = {k: [chunk[k].dtype.str, list(chunk[k].shape[1:])] for k in names}
            n = len(chunk[names[0]])
            for i in range(n):
                payload = b''.join(np.ascontiguousarray(chunk[k][i]).tobytes() for k in names)
                writer.write(zlib.crc32(payload).to_bytes(4, 'little') + payload)
                payload_bytes += len(payload)
            rows += n
        writer.close()
        more = extra() if callable(extra) else extra
        spec = {'format': FORMAT, 'fingerprint': dict(fingerprint), 'arrays': arrays or {},
                'rows': rows, 'bytes': payload_bytes, **dict(more or {})}
        with open(os.path.join(tmp, SPEC), 'w') as f:
            json.dump(spec, f, indent=1, sort_keys=True)
        os.replace(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return spec


def _upload(directory: str, fingerprint, chunks, extra) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix='jaxdistill-store-') as local:
        spec = write(os.path.join(local, 'store'), fingerprint, chunks, extra)
        target = paths.Path(directory)
        target.mkdir(parents=True, exist_ok=True)
        for name in (RECORDS, SPEC):  # the spec last: a store without it does not exist
            (target / name).write_bytes(paths.Path(os.path.join(local, 'store', name))
                                        .read_bytes())
    return spec


def read_spec(directory: str) -> dict[str, Any]:
    path = paths.join(directory, SPEC)
    try:
        spec = json.loads(paths.read_text(path))
    except (OSError, ValueError) as e:
        raise DataError(f'{path}: cannot read the store spec ({e}); remove {directory} to '
                        'rebuild it') from None
    if spec.get('format') != FORMAT:
        raise DataError(f'{path}: format {spec.get("format")!r}, expected {FORMAT}; remove '
                        f'{directory} to rebuild it')
    return spec


def check_fingerprint(spec: Mapping[str, Any], expected: Mapping[str, Any], directory: str,
                      key: str) -> None:
    """One line naming the first field that differs (a store built for something else)."""
    saved = spec.get('fingerprint', {})
    for field in sorted(set(saved) | set(expected)):
        if saved.get(field) != expected.get(field):
            raise DataError(
                f'{key}={directory} was built for {field}={saved.get(field)!r}, but this run '
                f'has {field}={expected.get(field)!r}: point {key} at another path (or remove '
                'it to rebuild it for this run)')


class StoreRows:
    """A store's rows by index, read on demand: ``take(ids)`` gives ``{name: [len(ids), ...]}``.

    Opening checks the spec and the fingerprint (one line naming the field); each record's
    CRC is checked when it is read. A store in a bucket is first copied (streamed, not
    through memory) to a local temporary file, removed with this object: ArrayRecord reads
    local files only.
    """

    def __init__(self, directory: str, expected: Mapping[str, Any], key: str) -> None:
        from jaxdistill.data.packed import RecordFile

        self.directory, self.spec = directory, read_spec(directory)
        check_fingerprint(self.spec, expected, directory, key)
        names = sorted(self.spec['arrays'])
        self._layout = [(k, np.dtype(self.spec['arrays'][k][0]),
                         tuple(self.spec['arrays'][k][1])) for k in names]
        self._sizes = [dt.itemsize * int(np.prod(shape)) for _, dt, shape in self._layout]
        records = paths.join(directory, RECORDS)
        if paths.is_remote(records):
            local = tempfile.mkdtemp(prefix='jaxdistill-store-')
            weakref.finalize(self, shutil.rmtree, local, True)
            with paths.Path(records).open('rb') as src, open(os.path.join(local, RECORDS),
                                                             'wb') as dst:
                shutil.copyfileobj(src, dst, 1 << 24)
            records = os.path.join(local, RECORDS)
        try:
            self._source = RecordFile(records)
            n = len(self._source)
        except (RuntimeError, OSError, ValueError) as e:  # ArrayRecord's own checks
            raise _damaged(directory, e) from None
        if n != self.spec['rows']:
            raise DataError(f'{directory}: {n} records, spec says {self.spec["rows"]}: the '
                            'store is damaged; remove it to rebuild it')
        self._n = n

    def __len__(self) -> int:
        return self._n

    def keys(self) -> tuple[str, ...]:
        return tuple(k for k, _, _ in self._layout)

    def take(self, ids) -> dict[str, np.ndarray]:
        ids = np.asarray(ids, np.int64).reshape(-1)
        try:
            records = self._source.read(ids)
        except (RuntimeError, OSError, ValueError) as e:
            raise _damaged(self.directory, e) from None
        out = {k: np.empty((len(ids), *shape), dt) for k, dt, shape in self._layout}
        for j, record in enumerate(records):
            payload = record[4:]
            if (len(payload) != sum(self._sizes)
                    or zlib.crc32(payload).to_bytes(4, 'little') != record[:4]):
                raise DataError(f'{self.directory}: row {int(ids[j])} fails its checksum: the '
                                'store is damaged; remove it to rebuild it')
            offset = 0
            for (k, dt, shape), size in zip(self._layout, self._sizes):
                out[k][j] = np.frombuffer(payload, dt, count=size // dt.itemsize,
                                          offset=offset).reshape(shape)
                offset += size
        return out


def _damaged(directory: str, e: Exception) -> DataError:
    return DataError(f'{directory}: the store is damaged ({str(e).splitlines()[0][:120]}); '
                     'remove it to rebuild it')


def open_rows(directory: str, expected: Mapping[str, Any], key: str) -> StoreRows:
    """The store at ``directory`` for lazy reading, after checking its fingerprint."""
    return StoreRows(directory, expected, key)


def chunks_of(rows: Any, batch: int = 1024) -> Iterator[dict[str, np.ndarray]]:
    """Every row of a random-access source (``take``, ``len``) once, in order, ``batch``
    rows at a time: a pass over a store or packed rows in bounded memory."""
    for start in range(0, len(rows), batch):
        yield rows.take(np.arange(start, min(start + batch, len(rows))))


def read(directory: str, expected: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    """Every row as ``{name: [rows, ...]}``, after checking the fingerprint and each CRC
    (the whole store in memory: training reads it lazily through `open_rows`)."""
    rows = open_rows(directory, expected, key)
    return rows.take(np.arange(len(rows)))


class Joined:
    """Packed rows and the stored rows made from them, joined by row index: ``take(ids)``
    is ``rows.take(ids)`` plus the ``keys`` of ``stored.take(ids)``. Both are read lazily,
    so a batch reads its own rows of each and nothing else."""

    def __init__(self, rows: Any, stored: Any, keys: Iterable[str]) -> None:
        from jaxdistill.data import text

        self.rows, self.stored = text.as_source(rows), text.as_source(stored)
        if len(self.rows) != len(self.stored):
            raise DataError(f'{len(self.stored)} stored rows for {len(self.rows)} packed rows')
        self.keys_ = tuple(keys)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.take(np.array([i])).items()}

    def take(self, ids) -> dict[str, np.ndarray]:
        stored = self.stored.take(ids)
        return {**self.rows.take(ids), **{k: stored[k] for k in self.keys_ if k in stored}}


def rows_fingerprint(rows: Any) -> dict[str, Any]:
    """What identifies the packed train rows a store is aligned with, without reading them.

    Rows streamed from a packed cache (`jaxdistill.data.packed.PackedRows`) carry the
    cache's own fingerprint (the files' names, sizes and mtimes, or the TFDS dataset; the
    tokenizer's SHA-256; ``seq_len``): its SHA-256 (``provenance.fingerprint_sha256`` of
    the run) and the row count stand for the rows. Rows in memory (the bundled ``pytext``)
    are hashed whole (``train_rows_sha256``), as before.
    """
    digest = getattr(rows, 'fingerprint_sha256', '')
    if digest:
        return {'packed_fingerprint_sha256': digest, 'train_rows': len(rows)}
    from jaxdistill import provenance

    return {'train_rows_sha256': provenance.arrays_sha256(rows)}
