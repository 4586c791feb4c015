"""Every digest jaxdistill records, in one place: what a result, a checkpoint or a stored
teacher signal says it came from.

* `params_sha256`: a model's parameters (``results.json`` ``params_sha256``, exports, the
  teacher identity a student's checkpoints carry);
* `arrays_sha256`: whole row-aligned arrays in row order (``train_rows_sha256`` in the
  fingerprint of a teacher cache or of teacher completions);
* `batch_rows_sha256`: the rows of one global batch as a multiset, the same on every
  process and for any process count (``first_batch_sha256`` in a stage's checkpoints);
* `batch_sha256` and `advance_digest`: one host batch, and the running digest of every
  batch consumed, so a resume proves that no batch was skipped, repeated or reordered.

All are SHA-256 hex digests of bytes together with the dtypes and shapes (or the keys)
that give the bytes their meaning. Changing one changes what old runs compare against,
so each is specified exactly here and tested against an independent computation.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np

from jaxdistill.runtime import mesh as mesh_lib


def params_sha256(params: Any) -> str:
    """SHA-256 over every leaf's path, dtype, shape and bytes, in sorted path order."""
    digest = hashlib.sha256()
    leaves = jax.tree_util.tree_flatten_with_path(mesh_lib.to_host(params))[0]
    for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
        arr = np.ascontiguousarray(np.asarray(leaf))
        digest.update(jax.tree_util.keystr(path).encode())
        digest.update(f'{arr.dtype.str}{arr.shape}'.encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def arrays_sha256(rows: dict[str, np.ndarray],
                  keys: Sequence[str] = ('inputs', 'targets', 'mask')) -> str:
    """SHA-256 of the bytes of ``rows[k]`` for ``k`` in ``keys``, whole arrays in row order
    (the packed train rows a stored teacher signal is aligned with)."""
    h = hashlib.sha256()
    for k in keys:
        h.update(np.ascontiguousarray(rows[k]).tobytes())
    return h.hexdigest()


def batch_rows_sha256(batch: dict[str, Any]) -> str:
    """SHA-256 of the rows of a global batch as a multiset: each process hashes its own
    rows and the sorted hashes of all are hashed, so the value is the same on every
    process and whatever the number of processes (which only reorders the rows)."""
    keys = sorted(batch)
    rows = np.stack([np.frombuffer(hashlib.sha256(b''.join(
        np.ascontiguousarray(batch[k][i]).tobytes() for k in keys)).digest(), np.uint8)
        for i in range(len(batch[keys[0]]))])
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        rows = np.asarray(multihost_utils.process_allgather(rows, tiled=True))
    digest = hashlib.sha256(''.join(f'{k}{np.asarray(batch[k]).dtype.str}'
                                    f'{np.shape(batch[k])[1:]}' for k in keys).encode())
    digest.update(rows[np.lexsort(rows.T[::-1])].tobytes())
    return digest.hexdigest()


def batch_sha256(batch: dict[str, Any], max_values: int | None = None) -> str:
    """SHA-256 of a host batch: every key, dtype, shape and value (or ``max_values``
    evenly strided values per key, so hashing every step stays cheap for images)."""
    digest = hashlib.sha256()
    for key in sorted(batch):
        arr = np.ascontiguousarray(batch[key]).reshape(-1)
        if max_values and arr.size > max_values:
            arr = arr[::arr.size // max_values]
        digest.update(f'{key}{arr.dtype.str}{np.shape(batch[key])}'.encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def advance_digest(digest: str, batch_hash: str) -> str:
    """The running digest of every batch consumed so far (process 0's rows): equal
    digests at equal steps mean no batch was skipped, repeated or reordered."""
    return hashlib.sha256((digest + batch_hash).encode()).hexdigest()
