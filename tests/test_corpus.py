"""jaxdistill/data/corpus.py + packed.py: your own text, streamed, packed once, read back."""

import hashlib
import json
import os
import subprocess
import sys
import textwrap
import warnings

import numpy as np
import pytest

from jaxdistill.data import corpus as corpus_lib
from jaxdistill.data import packed, text
from jaxdistill.data.tokenizer import ByteTokenizer
from jaxdistill.errors import ConfigError, DataError

RNG = np.random.default_rng(0)
WORDS = ['alpha', 'beta', 'gamma', 'naïve', '你好', '🐍', 'x', '\n', 'delta epsilon']


def _docs(n, rng=RNG, longest=300):
    return [' '.join(rng.choice(WORDS, size=int(rng.integers(0, longest)))) for _ in range(n)]


def _jsonl(path, docs, key='text'):
    with open(path, 'w') as f:
        for i, d in enumerate(docs):
            f.write(json.dumps({key: d, 'id': i}) + '\n')


def _pack_all(tmp_path, docs, seq_len, tok=None):
    tok = tok or ByteTokenizer()
    path = str(tmp_path / f'rows-{seq_len}.array_record')
    stats = packed.pack_split(iter(docs), tok, seq_len, path, np.dtype(np.uint16))
    rows = packed.PackedRows(path, seq_len, 'uint16', stats['last_row_targets'])
    return rows, stats


@pytest.mark.parametrize('seq_len', [1, 7, 64])
def test_streamed_rows_equal_in_memory_pack(tmp_path, monkeypatch, seq_len):
    monkeypatch.setattr(packed, 'CHUNK_TOKENS', 50)  # many flushes, rows cut across them
    monkeypatch.setattr(packed, 'BATCH_BYTES', 100)
    docs = _docs(40) + ['']
    rows, stats = _pack_all(tmp_path, docs, seq_len)
    tok = ByteTokenizer()
    ref = text.pack([tok.encode(d) for d in docs], seq_len)  # the in-memory reference
    got = rows.take(np.arange(len(rows)))
    for key in ('inputs', 'targets', 'mask'):
        np.testing.assert_array_equal(got[key], ref[key])
    assert stats['rows'] == len(ref['inputs']) and stats['tokens'] == ref['mask'].sum()
    assert stats['bytes'] == sum(len(d.encode()) for d in docs) and stats['documents'] == 41
    # every stream token but the first is a target once: bytes + BOS/EOS per doc - 1
    assert stats['tokens'] == stats['bytes'] + 2 * len(docs) - 1
    mixed = rows.take([len(rows) - 1, 0])  # the padded last row's mask goes with its row
    np.testing.assert_array_equal(mixed['mask'], ref['mask'][[len(rows) - 1, 0]])


def test_files_split_by_text_hash_and_formats(tmp_path):
    pa = pytest.importorskip('pyarrow')
    import pyarrow.parquet as pq

    docs = _docs(200)
    _jsonl(tmp_path / 'a.jsonl', docs[:100])
    pq.write_table(pa.table({'body': docs[100:150], 'n': list(range(50))}),
                   tmp_path / 'b.parquet')
    for i, d in enumerate(docs[150:]):
        (tmp_path / f'c{i:03d}.txt').write_text(d, encoding='utf-8')
    (tmp_path / 'skip.md').write_text('not matched')
    c = corpus_lib.FileCorpus([str(tmp_path / '*.jsonl'), str(tmp_path / '*.parquet'),
                               str(tmp_path / '*.txt')], 'text', test_fraction=0.2)
    with pytest.raises(DataError, match=r"data.text_key='text' is not a column of .*b.parquet "
                                        r"\(its columns: \['body', 'n'\]\)"):
        list(c.documents('train'))
    # parquet text at another key: read it as its own corpus
    got = list(corpus_lib.FileCorpus(str(tmp_path / '*.parquet'), 'body',
                                     test_fraction=0.5).documents('train'))
    want = [d for d in docs[100:150]
            if int(hashlib.sha256(d.encode()).hexdigest()[:16], 16) >= 0.5 * 2**64]
    assert got == want
    c = corpus_lib.FileCorpus([str(tmp_path / '*.jsonl'), str(tmp_path / 'c*.txt')], 'text',
                              test_fraction=0.2)
    train, test = list(c.documents('train')), list(c.documents('test'))
    order = docs[:100] + docs[150:]
    is_test = [int(hashlib.sha256(d.encode()).hexdigest()[:16], 16) < 0.2 * 2**64 for d in order]
    assert test == [d for d, t in zip(order, is_test) if t]
    assert train == [d for d, t in zip(order, is_test) if not t]
    assert 10 < len(test) < 60


def test_tfds_text_dataset_is_a_corpus(data_dir):
    text.builder(data_dir)  # prepared offline
    c = corpus_lib.TfdsCorpus('pytext', data_dir, 'text', {'train': 'train', 'test': 'test'})
    assert sorted(c.documents('test')) == sorted(text.load_texts(data_dir, 'test'))
    assert c.fingerprint()['data.name'][0].startswith('tfds:pytext/')


def test_bad_input_is_one_line(tmp_path):
    with pytest.raises(DataError, match=r"data.files: '.*nothing/\*.jsonl' matches no file"):
        corpus_lib.FileCorpus(str(tmp_path / 'nothing/*.jsonl'), 'text', test_fraction=0.1)
    (tmp_path / 'x.csv').write_text('a,b')
    with pytest.raises(DataError, match=r"x.csv has extension '.csv'"):
        corpus_lib.FileCorpus(str(tmp_path / '*.csv'), 'text', test_fraction=0.1)
    _jsonl(tmp_path / 'a.jsonl', ['one', 'two'], key='content')
    c = corpus_lib.FileCorpus(str(tmp_path / 'a.jsonl'), 'text', test_fraction=0.1)
    with pytest.raises(DataError) as info:
        c.check()
    assert str(info.value) == (
        f"data.text_key='text' is not in the record at {tmp_path}/a.jsonl:1 (its keys: "
        "['content', 'id']); set data.text_key to the field holding the text")
    with pytest.raises(ConfigError, match=r'data.test_fraction=0.0 must be in \(0, 1\)'):
        corpus_lib.FileCorpus(str(tmp_path / 'a.jsonl'), 'content', test_fraction=0.0)
    with pytest.raises(ConfigError, match='data.files=3 must be a glob'):
        corpus_lib.as_globs(3)


def test_undecodable_bytes_counted_replaced_warned_once(tmp_path):
    with open(tmp_path / 'bad.jsonl', 'wb') as f:
        f.write(b'{"text": "ok \xff\xfe end"}\n{"text": "fine"}\n{"text": "\xc3 again"}\n')
    (tmp_path / 'bad.txt').write_bytes(b'caf\xe9')
    c = corpus_lib.FileCorpus([str(tmp_path / 'bad.jsonl'), str(tmp_path / 'bad.txt')], 'text',
                              test_fraction=0.5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        docs = [d for _, d in c.records()]
    assert sorted(docs) == sorted(['ok \ufffd\ufffd end', 'fine', '\ufffd again', 'caf\ufffd'])
    assert c.bad_bytes == 4
    assert len([w for w in caught if issubclass(w.category, corpus_lib.UndecodableWarning)]) == 1


def _corpus(tmp_path, n=300):
    folder = tmp_path / 'corpus'
    folder.mkdir(exist_ok=True)
    _jsonl(folder / 'part0.jsonl', _docs(n))
    _jsonl(folder / 'part1.jsonl', _docs(n))
    return folder


def test_cache_written_once_then_reused_and_refused_when_stale(tmp_path, capsys):
    folder = _corpus(tmp_path)
    c = corpus_lib.FileCorpus(str(folder / '*.jsonl'), 'text', test_fraction=0.1)
    tok = ByteTokenizer()
    rows, meta = packed.open_or_pack(c, tok, 32, str(folder / 'jaxdistill_packed'))
    assert 'packing' in capsys.readouterr().out
    s = meta['splits']
    docs = list(c.documents('train'))
    assert s['train']['documents'] == len(docs) and s['train']['rows'] == len(rows['train'])
    assert s['train']['bytes'] == sum(len(d.encode()) for d in docs)
    again, meta2 = packed.open_or_pack(c, tok, 32, str(folder / 'jaxdistill_packed'))
    assert 'packing' not in capsys.readouterr().out and meta2 == meta
    # another seq_len packs beside it
    packed.open_or_pack(c, tok, 16, str(folder / 'jaxdistill_packed'))
    assert len(os.listdir(folder / 'jaxdistill_packed')) == 2
    # the data changed since: stale, refused naming the field
    with open(folder / 'part1.jsonl', 'a') as f:
        f.write(json.dumps({'text': 'one more'}) + '\n')
    with pytest.raises(DataError, match=r'^data.files: the packed cache .*L32 was made from other'
                                        r' input \(.*part1.jsonl.*\); delete it'):
        packed.open_or_pack(c, tok, 32, str(folder / 'jaxdistill_packed'))
    # a foreign cache (its meta names another text key) is refused naming that key
    directory = packed.cache_directory(str(folder / 'jaxdistill_packed'), tok, 16)
    meta_path = os.path.join(directory, 'meta.json')
    m = json.load(open(meta_path))
    m['fingerprint'] = {**m['fingerprint'], 'data.text_key': 'body',
                        'data.files': c.fingerprint()['data.files']}
    json.dump(m, open(meta_path, 'w'))
    with pytest.raises(DataError, match=r"^data.text_key: the packed cache .* \('body' -> "
                                        r"'text'\)"):
        packed.open_or_pack(c, tok, 16, str(folder / 'jaxdistill_packed'))


def test_bad_record_mid_corpus_leaves_nothing(tmp_path):
    folder = _corpus(tmp_path, n=50)
    with open(folder / 'part1.jsonl', 'a') as f:
        f.write('{"body": "no text here"}\n')
    c = corpus_lib.FileCorpus(str(folder / '*.jsonl'), 'text', test_fraction=0.1)
    root = tmp_path / 'cache'
    with pytest.raises(DataError, match=r"part1.jsonl:51 \(its keys: \['body'\]\)"):
        packed.open_or_pack(c, ByteTokenizer(), 32, str(root))
    assert os.listdir(root) == []


def test_processes_read_their_own_rows(tmp_path):
    folder = _corpus(tmp_path, n=100)
    c = corpus_lib.FileCorpus(str(folder / '*.jsonl'), 'text', test_fraction=0.1)
    rows, _ = packed.open_or_pack(c, ByteTokenizer(), 16, str(tmp_path / 'cache'))
    one = text.train_batches(rows['train'], global_batch=8, seed=3)
    two = [text.train_batches(rows['train'], global_batch=8, seed=3, process_index=p,
                              process_count=2) for p in range(2)]
    for step in (0, 5, 40):
        both = {k: np.concatenate([two[0][step][k], two[1][step][k]]) for k in ('inputs', 'mask')}
        for k in both:
            np.testing.assert_array_equal(both[k], one[step][k])
    evals = list(text.eval_batches(rows['test'], global_batch=8))
    n_targets = sum(int(b['mask'].sum()) for b in evals)
    assert n_targets == sum(int(b['mask'].sum()) for b in packed.iter_rows(rows['test']))


_RSS_PROBE = textwrap.dedent('''
    import json, os, resource, sys
    import numpy as np
    from jaxdistill.data import corpus, packed
    from jaxdistill.data.tokenizer import ByteTokenizer
    folder, mb = sys.argv[1], float(sys.argv[2])
    rng = np.random.default_rng(0)
    words = np.array(['alpha', 'beta', 'gamma', 'delta', 'naive', 'x'])
    os.makedirs(folder)
    written = 0
    with open(os.path.join(folder, 'c.jsonl'), 'w') as f:  # streamed: never all in memory
        while written < mb * 2**20:
            line = json.dumps({'text': ' '.join(rng.choice(words, 2000))}) + '\\n'
            f.write(line)
            written += len(line)
    c = corpus.FileCorpus(os.path.join(folder, '*.jsonl'), 'text', test_fraction=0.01)
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    rows, meta = packed.open_or_pack(c, ByteTokenizer(), 128, os.path.join(folder, 'cache'),
                                     say=lambda _: None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({'growth_kb': after - before, 'rows': len(rows['train'])}))
''')


def _probe(tmp_path, mb):
    out = subprocess.run([sys.executable, '-c', _RSS_PROBE, str(tmp_path / f'c{mb}'), str(mb)],
                         capture_output=True, text=True, check=True,
                         env={**os.environ, 'PYTHONPATH': os.getcwd()})
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_memory_does_not_grow_with_the_corpus(tmp_path):
    small, large = _probe(tmp_path, 4), _probe(tmp_path, 16)
    assert large['rows'] > 3.5 * small['rows']
    # Holding the corpus would add >= 12 MB of text and 48 MB of int32 tokens; streaming
    # holds one chunk of CHUNK_TOKENS whatever the size.
    assert large['growth_kb'] - small['growth_kb'] < 8 * 1024, (small, large)


_TWO_PROCESS_READER = textwrap.dedent('''
    import json, sys
    from jaxdistill.runtime import distributed
    distributed.initialize(sys.argv[1], 2, int(sys.argv[2]))
    import jax
    from jaxdistill import config as config_lib, tasks
    c = config_lib.base_config()
    c.task, c.data.name, c.data.files, c.data.cache_dir = 'lm', '', sys.argv[3], sys.argv[4]
    c.data.seq_len, c.data.batch_size, c.data.test_fraction = 16, 8, 0.1
    task = tasks.build(c)
    batches = task.train_batches(seed=3)
    print(json.dumps({'process': jax.process_index(), **task.data_provenance,
                      'rows': {s: batches[s]['inputs'].tolist() for s in (0, 5, 40)}}))
''')


@pytest.mark.slow
def test_two_processes_pack_once_and_read_disjoint_rows(tmp_path):
    """2 real processes (`jax.distributed`) open one corpus through the LM task: process 0
    packs, process 1 waits and reads the same cache; each reads its own block of every global
    batch, and together they read exactly the one-process batch."""
    from tests.test_multihost import two_processes

    folder = _corpus(tmp_path, n=100)
    args = [str(folder / '*.jsonl'), str(tmp_path / 'cache')]
    outs = [json.loads(line) for line in two_processes(_TWO_PROCESS_READER, [args, args])]
    assert [o['process'] for o in outs] == [0, 1]
    for key in ('packed_cache', 'fingerprint_sha256'):
        assert outs[0][key] == outs[1][key], key
    assert len(os.listdir(tmp_path / 'cache')) == 1  # packed once, no leftovers
    c = corpus_lib.FileCorpus(str(folder / '*.jsonl'), 'text', test_fraction=0.1)
    rows, _ = packed.open_or_pack(c, ByteTokenizer(), 16, str(tmp_path / 'cache'))
    one = text.train_batches(rows['train'], global_batch=8, seed=3)
    for step in ('0', '5', '40'):
        mine, theirs = (np.asarray(o['rows'][step]) for o in outs)
        assert len(mine) == len(theirs) == 4
        np.testing.assert_array_equal(np.concatenate([mine, theirs]), one[int(step)]['inputs'])
        assert not {r.tobytes() for r in mine} & {r.tobytes() for r in theirs}  # disjoint
