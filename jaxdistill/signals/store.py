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
import zlib
from collections.abc import Iterable, Mapping
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
          extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Writes ``chunks`` (dicts of ``[n, ...]`` arrays, rows in order) as one store.

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
        writer = ar.ArrayRecordWriter(os.path.join(tmp, RECORDS), 'group_size:64')
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
        spec = {'format': FORMAT, 'fingerprint': dict(fingerprint), 'arrays': arrays or {},
                'rows': rows, 'bytes': payload_bytes, **dict(extra or {})}
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


def read(directory: str, expected: Mapping[str, Any], key: str) -> dict[str, np.ndarray]:
    """Every row as ``{name: [rows, ...]}``, after checking the fingerprint and each CRC."""
    spec = read_spec(directory)
    check_fingerprint(spec, expected, directory, key)
    names = sorted(spec['arrays'])
    layout = [(k, np.dtype(spec['arrays'][k][0]), tuple(spec['arrays'][k][1])) for k in names]
    sizes = [dt.itemsize * int(np.prod(shape)) for _, dt, shape in layout]
    try:
        records_file = paths.join(directory, RECORDS)
        with tempfile.TemporaryDirectory(prefix='jaxdistill-store-') as local:
            if paths.is_remote(records_file):  # ArrayRecord reads local files
                copy = os.path.join(local, RECORDS)
                paths.Path(copy).write_bytes(paths.Path(records_file).read_bytes())
                records_file = copy
            reader = ar.ArrayRecordReader(records_file)
            try:
                n = reader.num_records()
                records = reader.read_all() if n else []
            finally:
                reader.close()
    except (RuntimeError, OSError, ValueError) as e:  # ArrayRecord's own checksums
        raise DataError(f'{directory}: the store is damaged ({str(e).splitlines()[0][:120]}); '
                        'remove it to rebuild it') from None
    if n != spec['rows']:
        raise DataError(f'{directory}: {n} records, spec says {spec["rows"]}: the store is '
                        'damaged; remove it to rebuild it')
    out = {k: np.empty((n, *shape), dt) for k, dt, shape in layout}
    for i, record in enumerate(records):
        payload = record[4:]
        if (len(payload) != sum(sizes)
                or zlib.crc32(payload).to_bytes(4, 'little') != record[:4]):
            raise DataError(f'{directory}: row {i} fails its checksum: the store is damaged; '
                            'remove it to rebuild it')
        offset = 0
        for (k, dt, shape), size in zip(layout, sizes):
            out[k][i] = np.frombuffer(payload, dt, count=size // dt.itemsize,
                                      offset=offset).reshape(shape)
            offset += size
    return out
