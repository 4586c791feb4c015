"""jaxdistill/signals: the store, cache quantisation, sparse-teacher losses, on-policy choices,
and the config checks (each against an independent numpy reference or a hand count)."""

import os

import jax.numpy as jnp
import numpy as np
import pytest

from jaxdistill import config as config_lib
from jaxdistill import losses, objective
from jaxdistill.errors import ConfigError, DataError
from jaxdistill.signals import cache, on_policy, sequence, store
from tests.helpers import load_config


# ------------------------------------------------------------------------------------ store
def _rows(n=5, seed=0):
    rng = np.random.default_rng(seed)
    return {'a': rng.integers(0, 1000, (n, 3, 2)).astype(np.uint16),
            'b': rng.normal(size=(n, 3)).astype(np.float16), 'm': rng.random((n, 4)) > 0.5}


def test_store_round_trip_in_row_order(tmp_path):
    rows = _rows(7)
    path = str(tmp_path / 's')
    chunks = [{k: v[i:i + 3] for k, v in rows.items()} for i in range(0, 7, 3)]
    spec = store.write(path, {'x': 1}, chunks)
    assert spec['rows'] == 7 and spec['bytes'] == 7 * (12 + 6 + 4)
    out = store.read(path, {'x': 1}, 'key')
    for k in rows:
        assert out[k].dtype == rows[k].dtype
        np.testing.assert_array_equal(out[k], rows[k])


def test_store_refuses_another_fingerprint_and_existing_dir(tmp_path):
    path = str(tmp_path / 's')
    store.write(path, {'k': 32, 'dataset': 'a'}, [_rows()])
    with pytest.raises(DataError, match=r"built for k=32, but this run has k=8"):
        store.read(path, {'k': 8, 'dataset': 'a'}, 'distill.cache.path')
    with pytest.raises(DataError, match='exists already'):
        store.write(path, {'k': 32}, [_rows()])


def test_store_detects_a_damaged_row(tmp_path):
    path = str(tmp_path / 's')
    store.write(path, {}, [_rows(50)])
    records = os.path.join(path, store.RECORDS)
    data = bytearray(open(records, 'rb').read())
    data[len(data) // 2] ^= 0xFF
    open(records, 'wb').write(bytes(data))
    with pytest.raises(DataError, match='damaged|checksum'):
        store.read(path, {}, 'key')


def test_interrupted_write_leaves_no_store(tmp_path):
    path = str(tmp_path / 's')

    def chunks():
        yield _rows()
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        store.write(path, {}, chunks())
    assert not os.path.exists(path) and os.listdir(tmp_path) == []


# ---------------------------------------------------------------------------- quantisation
def _topk(seed=0, v=50, k=8):
    z = np.random.default_rng(seed).normal(size=(4, 6, v)) * 3
    logp = z - np.log(np.exp(z - z.max(-1, keepdims=True)).sum(-1, keepdims=True)) - z.max(
        -1, keepdims=True)
    ids = np.argsort(-logp, -1)[..., :k]
    return np.take_along_axis(logp, ids, -1).astype(np.float32), ids, logp


@pytest.mark.parametrize('dtype, bytes_per_entry', [('float16', 4), ('uint8', 3)])
def test_encode_decode_error_is_bounded(dtype, bytes_per_entry):
    lp, ids, _ = _topk()
    enc = cache.encode(lp, ids, dtype, vocab_size=50)
    assert enc['topk_ids'].dtype == np.uint16
    dec = cache.decode({k: jnp.asarray(v) for k, v in enc.items()})
    np.testing.assert_array_equal(np.asarray(dec.ids), ids)
    err = np.abs(np.asarray(dec.logprobs) - lp)
    if dtype == 'float16':
        assert err.max() <= np.abs(lp).max() * 2 ** -10
    else:
        assert err.max() <= enc['topk_scale'].max() / 2 + 1e-6
    per_entry = enc['topk_ids'].itemsize + enc['topk_lp'].itemsize
    assert per_entry == bytes_per_entry


def test_bytes_per_token_counts_the_format():
    for dtype, expected in (('float16', 32 * 4), ('uint8', 32 * 3 + 4)):
        row = 32 * (2 + (2 if dtype == 'float16' else 1)) * 16 + 4 * 16
        spec = {'rows': 10, 'bytes': 10 * row, 'fingerprint': {'seq_len': 16, 'dtype': dtype}}
        assert cache.bytes_per_token(spec) == expected


# ----------------------------------------------------------------------- sparse objective
def _np_topk_kl(zs, lp, ids, t):
    """Float64 renormalised top-k KL at temperature t, written out from the definition."""
    zs = np.asarray(zs, np.float64) / t
    logp_s = zs - zs.max(-1, keepdims=True)
    logp_s = logp_s - np.log(np.exp(logp_s).sum(-1, keepdims=True))
    q = np.asarray(lp, np.float64) / t
    p = np.exp(q - q.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    return (p * (np.log(p) - np.take_along_axis(logp_s, ids, -1))).sum(-1)


@pytest.mark.parametrize('t', [1.0, 2.0])
def test_kd_on_a_sparse_teacher_is_t2_topk_kl(t):
    lp, ids, _ = _topk(1)
    zs = np.random.default_rng(2).normal(size=lp.shape[:-1] + (50,)).astype(np.float32)
    mask = np.ones(lp.shape[:-1], bool)
    mask[0, :3] = False
    obj = objective.build([{'name': 'kd', 'weight': 1.0, 'temperature': t}], 10)
    loss, metrics = obj(jnp.int32(0), jnp.asarray(zs), objective.SparseTeacher(
        jnp.asarray(ids), jnp.asarray(lp)), jnp.zeros(mask.shape, jnp.int32), jnp.asarray(mask))
    ref = t * t * _np_topk_kl(zs, lp, ids, t)[mask].mean()
    np.testing.assert_allclose(float(metrics['distill/kd']), ref, rtol=1e-5)


def test_full_vocabulary_cache_gives_the_dense_kd():
    lp, ids, full = _topk(3, v=20, k=20)  # k = V: nothing is dropped
    zs = np.random.default_rng(4).normal(size=lp.shape[:-1] + (20,)).astype(np.float32)
    obj = objective.build([{'name': 'kd', 'weight': 1.0, 'temperature': 1.0}], 10)
    sparse = obj(0, jnp.asarray(zs), objective.SparseTeacher(jnp.asarray(ids), jnp.asarray(lp)),
                 jnp.zeros(lp.shape[:-1], jnp.int32))[0]
    dense = losses.kd(jnp.asarray(zs), jnp.asarray(full, jnp.float32)).mean()
    np.testing.assert_allclose(float(sparse), float(dense), rtol=1e-5)


def test_dense_logprobs_spread_the_tail_evenly():
    lp, ids, _ = _topk(5, v=50, k=8)
    dense = np.asarray(objective.dense_logprobs(objective.SparseTeacher(
        jnp.asarray(ids), jnp.asarray(lp)), 50), np.float64)
    np.testing.assert_allclose(np.exp(dense).sum(-1), 1.0, rtol=1e-5)
    np.testing.assert_allclose(np.take_along_axis(dense, ids, -1), lp, rtol=1e-6)
    rest = np.ones(dense.shape, bool)
    np.put_along_axis(rest, ids, False, -1)
    tail = dense[rest].reshape(*dense.shape[:-1], 42)
    np.testing.assert_allclose(tail, tail[..., :1].repeat(42, -1), rtol=1e-6)
    # and any logit loss accepts it: jsd against the reconstruction is finite and >= 0
    obj = objective.build([{'name': 'jsd', 'weight': 1.0, 'beta': 0.5}], 10)
    zs = jnp.zeros(lp.shape[:-1] + (50,))
    value = obj(0, zs, objective.SparseTeacher(jnp.asarray(ids), jnp.asarray(lp)),
                jnp.zeros(lp.shape[:-1], jnp.int32))[0]
    assert np.isfinite(float(value)) and float(value) > 0


# ---------------------------------------------------------------------- on-policy choices
def test_on_policy_choice_is_a_pure_function_with_rate_lambda():
    a = [on_policy.uses_student_samples(3, s, 0.3) for s in range(4000)]
    b = [on_policy.uses_student_samples(3, s, 0.3) for s in range(4000)]
    assert a == b and abs(np.mean(a) - 0.3) < 0.03
    assert on_policy.count(3, 4000, 0.3) == sum(a)
    assert not any(on_policy.uses_student_samples(0, s, 0.0) for s in range(100))
    assert all(on_policy.uses_student_samples(0, s, 1.0) for s in range(100))


def test_completion_rows_mask_only_generated_targets():
    tokens = jnp.asarray([[1, 2, 3, 7, 8, 0], [1, 2, 9, 9, 9, 0]])
    generated = jnp.asarray([[0, 0, 0, 1, 1, 0], [0, 0, 1, 1, 1, 0]], bool)
    rows = sequence.as_rows(tokens, generated, seq_len=6)
    np.testing.assert_array_equal(rows['inputs'], tokens)
    np.testing.assert_array_equal(rows['targets'][0], [2, 3, 7, 8, 0, 0])
    np.testing.assert_array_equal(rows['mask'][0], [0, 0, 1, 1, 0, 0])
    np.testing.assert_array_equal(rows['mask'][1], [0, 1, 1, 1, 0, 0])
    mask = jnp.asarray([[1, 1, 1, 1], [1, 0, 0, 0]], bool)
    np.testing.assert_array_equal(sequence.prompt_lengths(None, mask, 3), [3, 2])


# ------------------------------------------------------------------------------ bad input
def _config(preset='smoke,online', **overrides):
    c = load_config('lm_text.py', preset)
    for key, value in overrides.items():
        node = c
        *parents, leaf = key.split('.')
        for part in parents:
            node = node[part]
        node[leaf] = value
    return c


@pytest.mark.parametrize('preset, overrides, match', [
    ('smoke,online', {'distill.teacher_signal': 'cache'}, "did you mean 'cached'"),
    ('smoke,online', {'mode': 'cache_teacher'}, "set both"),
    ('smoke,cached', {'distill.cache.dtype': 'int4'}, "'float16' or 'uint8'"),
    ('smoke,cached', {'distill.cache.k': 0}, 'distill.cache.k=0'),
    ('smoke,sequence', {'distill.sampling.prompt_len': 32}, r'prompt_len=32 must be in \[1'),
    ('smoke,sequence', {'distill.sampling.max_new_tokens': 30},
     'prompt_len 8 \\+ max_new_tokens 30 exceeds data.seq_len=32'),
    ('smoke,on_policy', {'distill.on_policy.lmbda': 1.5}, 'lmbda=1.5 must be in'),
    ('smoke,on_policy', {'distill.sampling.temperature': 0.0}, 'temperature=0.0'),
])
def test_bad_signal_config_is_one_line(preset, overrides, match):
    with pytest.raises(ConfigError, match=match) as e:
        config_lib.validate(_config(preset, **overrides))
    assert '\n' not in str(e.value)


def test_signals_other_than_online_need_text():
    c = load_config('digits.py', 'smoke')
    c.distill.teacher_signal = 'cached'
    with pytest.raises(ConfigError, match="needs task='lm'"):
        config_lib.validate(c)


def test_lm_text_presets_select_the_signal():
    assert _config('cached').distill.teacher_signal == 'cached'
    assert _config('smoke,cached_uint8').distill.cache.dtype == 'uint8'
    op = _config('on_policy')
    assert op.distill.losses[0].name == 'jsd' and op.distill.on_policy.lmbda == 0.5
    with pytest.raises(ValueError, match='unknown preset'):
        _config('smoke,cached,sequence')
