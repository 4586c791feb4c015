"""jaxdistill/data/text.py + tokenizer.py: the offline `pytext` corpus, tokenizers, packing."""

import hashlib
import os
import platform

import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdistill.data import text
from jaxdistill.data.tokenizer import BPETokenizer, ByteTokenizer, Tokenizer
from jaxdistill.errors import ConfigError

SAMPLE = 'def f(x):\n    return x ** 2  # naïve — “quotes”, 你好, 🐍\n\n'


@pytest.fixture(scope='module')
def texts(data_dir):
    return {split: text.load_texts(data_dir, split) for split in ('train', 'test')}


def test_builder_prepares_offline_with_provenance(data_dir, texts):
    builder = tfds.builder('pytext', data_dir=data_dir)
    assert builder.is_prepared()
    docs = text.documents()
    by_split = {s: sorted(t for n, t in docs if text.split_of(n) == s) for s in texts}
    for split, stored in texts.items():
        assert builder.info.splits[split].num_examples == len(stored)
        assert sorted(stored) == by_split[split]
    assert len(texts['test']) > 0 and len(texts['train']) > 5 * len(texts['test'])
    meta = builder.info.metadata
    assert meta['python_version'] == platform.python_version()
    assert meta['documents'] == len(docs) and len(meta['sha256']) == 64


def test_documents_deterministic_and_splits_disjoint():
    docs = text.documents()
    assert docs == text.documents() and docs == sorted(docs)
    names = [n for n, _ in docs]
    assert len(set(names)) == len(names)
    # The split rule, recomputed independently: sha256 of the name, 1 in 10 to test.
    for name in names:
        expected = 'test' if int(hashlib.sha256(name.encode()).hexdigest(), 16) % 10 == 0 \
            else 'train'
        assert text.split_of(name) == expected
    # No paragraph of substance appears in both splits (overlapping topics were dropped).
    paragraphs = {s: {p.strip() for n, t in docs if text.split_of(n) == s
                      for p in t.split('\n\n') if len(p.strip()) > 100} for s in ('train', 'test')}
    assert paragraphs['test'] and not paragraphs['train'] & paragraphs['test']


def test_byte_tokenizer_round_trip():
    tok = ByteTokenizer()
    assert isinstance(tok, Tokenizer)
    assert (tok.vocab_size, tok.pad_id, tok.bos_id, tok.eos_id) == (259, 0, 1, 2)
    ids = tok.encode(SAMPLE)
    assert len(ids) == len(SAMPLE.encode('utf-8')) and min(ids) >= 3 and max(ids) < 259
    assert tok.decode(ids) == SAMPLE
    assert tok.decode([1] + ids + [2, 0, 0]) == SAMPLE  # specials are dropped
    assert tok.decode(tok.encode('é')[:1]) == '\ufffd'  # a cut character is replaced


def test_bpe_deterministic_round_trip_and_cached(data_dir, texts):
    a = BPETokenizer.train(texts['train'], 512)
    b = BPETokenizer.train(list(texts['train']), 512)
    assert a.to_json() == b.to_json()
    assert isinstance(a, Tokenizer) and a.vocab_size == 512
    assert (a.pad_id, a.bos_id, a.eos_id) == (0, 1, 2)
    for s in [SAMPLE] + texts['test'][:3]:
        assert a.decode(a.encode(s)) == s
    test_bytes = sum(len(t.encode('utf-8')) for t in texts['test'])
    test_tokens = sum(len(a.encode(t)) for t in texts['test'])
    assert test_bytes / test_tokens > 1.8  # merges learned on train compress held-out text
    cached = text.get_tokenizer('bpe', data_dir=data_dir, vocab_size=512)
    path = os.path.join(text.builder(data_dir).data_dir, 'bpe-512.json')
    assert os.path.exists(path) and cached.to_json() == a.to_json()
    assert text.get_tokenizer('bpe', data_dir=data_dir, vocab_size=512).to_json() == a.to_json()


def test_pack_against_a_hand_built_stream():
    docs = [[10, 11, 12], [20], [30, 31, 32, 33, 34]]
    stream = [1, 10, 11, 12, 2, 1, 20, 2, 1, 30, 31, 32, 33, 34, 2]  # BOS doc EOS ...
    packed = text.pack(docs, 4)
    n = -(-(len(stream) - 1) // 4)
    assert {k: v.shape for k, v in packed.items()} == {k: (n, 4) for k in packed}
    assert packed['inputs'].dtype == np.int32 and packed['mask'].dtype == bool
    padded = np.array(stream + [0] * (4 * n + 1 - len(stream)))
    for i in range(n):
        np.testing.assert_array_equal(packed['inputs'][i], padded[4 * i:4 * i + 4])
        np.testing.assert_array_equal(packed['targets'][i], padded[4 * i + 1:4 * i + 5])
    # Every stream token but the first is a target exactly once; only padding is masked.
    np.testing.assert_array_equal(packed['targets'][packed['mask']], stream[1:])
    assert not packed['targets'][~packed['mask']].any()
    with pytest.raises(ConfigError, match='seq_len=0'):
        text.pack(docs, 0)


def test_load_packed_counts_every_byte(data_dir, texts):
    packed = text.load_packed(data_dir, ByteTokenizer(), 64, 'test')
    n_bytes = sum(len(t.encode('utf-8')) for t in texts['test'])
    # BOS + bytes + EOS per document, minus the first token (never a target).
    assert int(packed['mask'].sum()) == n_bytes + 2 * len(texts['test']) - 1


def test_train_batches_shard_and_cover():
    rows = 37
    packed = text.pack([list(range(3, 3 + 16 * rows - 1))], 16)  # exactly `rows` full rows
    assert len(packed['inputs']) == rows and packed['mask'].all()
    first = {tuple(r) for r in packed['inputs']}
    single = text.train_batches(packed, global_batch=8, seed=0)
    again = text.train_batches(packed, global_batch=8, seed=0)
    other = text.train_batches(packed, global_batch=8, seed=1)
    np.testing.assert_array_equal(single[5]['inputs'], again[5]['inputs'])
    assert not np.array_equal(single[5]['inputs'], other[5]['inputs'])
    for step in (0, 3, 9):
        parts = [text.train_batches(packed, global_batch=8, seed=0, process_index=p,
                                    process_count=2)[step] for p in range(2)]
        a, b = ({tuple(r) for r in part['inputs']} for part in parts)
        assert len(a) == len(b) == 4 and not a & b
        # Each process holds a contiguous block: together, the global batch in order.
        for key in ('inputs', 'targets', 'mask'):
            np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]),
                                          single[step][key])
    whole = text.train_batches(packed, global_batch=rows, seed=2)[0]
    assert {tuple(r) for r in whole['inputs']} == first  # an epoch is a permutation
    with pytest.raises(ConfigError, match='batch_size=8'):
        text.train_batches(packed, global_batch=8, seed=0, process_count=3)


def test_eval_batches_see_each_row_once():
    packed = text.pack([list(range(3, 100))], 8)
    n = len(packed['inputs'])
    seen = []
    for p in range(2):
        for batch in text.eval_batches(packed, global_batch=4, process_index=p, process_count=2):
            assert batch['inputs'].shape == (2, 8)
            seen += [tuple(r) for r, m in zip(batch['inputs'], batch['mask']) if m.any()]
    assert sorted(seen) == sorted(tuple(r) for r in packed['inputs']) and len(seen) == n
    total = sum(int(b['mask'].sum()) for b in text.eval_batches(packed, global_batch=4))
    assert total == int(packed['mask'].sum())


def test_tokenizer_errors(data_dir):
    with pytest.raises(ConfigError, match="tokenizer='word'"):
        text.get_tokenizer('word', data_dir=data_dir)
    with pytest.raises(ConfigError, match='vocab_size=200'):
        BPETokenizer.train(['abc'], 200)
