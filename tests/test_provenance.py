"""jaxdistill/provenance.py: every digest, against hashlib on the same bytes, and what each
must and must not see."""

import hashlib

import jax.numpy as jnp
import numpy as np

from jaxdistill import provenance


def test_params_sha256_is_order_independent_and_sensitive():
    a = {'w': jnp.ones((2, 3)), 'b': jnp.zeros(3)}
    b = {'b': jnp.zeros(3), 'w': jnp.ones((2, 3))}
    assert provenance.params_sha256(a) == provenance.params_sha256(b)
    c = {'w': jnp.ones((2, 3)).at[0, 0].set(1.0000001), 'b': jnp.zeros(3)}
    assert provenance.params_sha256(a) != provenance.params_sha256(c)


def test_batch_digests_see_every_value_and_the_order_of_batches():
    a = {'image': np.zeros((4, 8, 8, 1), np.float32), 'label': np.arange(4, dtype=np.int32)}
    b = {**a, 'label': a['label'][::-1].copy()}
    assert provenance.batch_sha256(a) != provenance.batch_sha256(b)
    c = {**a, 'image': a['image'].copy()}
    c['image'][3, 7, 7, 0] = 1.0
    assert provenance.batch_sha256(a) != provenance.batch_sha256(c)
    ha, hb = provenance.batch_sha256(a, 16), provenance.batch_sha256(b, 16)
    assert provenance.advance_digest(provenance.advance_digest('', ha), hb) != \
        provenance.advance_digest(provenance.advance_digest('', hb), ha)
    # The data fingerprint sees the rows as a set: more processes only reorder them.
    rows = provenance.batch_rows_sha256
    assert rows(a) == rows(b) != rows(c)
    assert rows(a) != rows({**a, 'label': a['label'].astype(np.int64)})


def test_params_sha256_is_hashlib_over_sorted_paths_dtypes_shapes_and_bytes():
    params = {'w': np.arange(6, dtype=np.float32).reshape(2, 3), 'b': np.ones(3, np.int32)}
    h = hashlib.sha256()
    for path, arr in (("['b']", params['b']), ("['w']", params['w'])):
        h.update(path.encode() + f'{arr.dtype.str}{arr.shape}'.encode() + arr.tobytes())
    assert provenance.params_sha256(params) == h.hexdigest()


def test_arrays_sha256_is_the_named_arrays_bytes_in_order():
    rows = {'inputs': np.arange(8, dtype=np.int32).reshape(2, 4), 'targets': np.ones((2, 4),
            np.int32), 'mask': np.ones((2, 4), bool), 'topk_ids': np.zeros((2, 4, 3), np.uint16)}
    want = hashlib.sha256(b''.join(rows[k].tobytes() for k in ('inputs', 'targets', 'mask')))
    assert provenance.arrays_sha256(rows) == want.hexdigest()  # extra arrays are not seen
    assert provenance.arrays_sha256(rows, ('mask', 'inputs')) != want.hexdigest()
