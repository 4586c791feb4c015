"""Across tokenizers with an ``hf:`` teacher's own ``tokenizer.json`` (the Llama fixture:
byte-level BPE of 160 ids in a 192-id model) and a byte-level student; no torch."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip('tokenizers')

from jaxdistill import run  # noqa: E402
from jaxdistill.crosstok import align  # noqa: E402
from jaxdistill.crosstok import bytes as xb  # noqa: E402
from jaxdistill.data import text  # noqa: E402
from tests.helpers import ROOT, load_config  # noqa: E402

LLAMA = f'{ROOT}/tests/fixtures/hf/llama'


def _config(tmp_path, data_dir, **over):
    for split in ('train', 'test'):
        if (tmp_path / f'{split}.jsonl').exists():  # written once: the packed rows' input
            continue
        with open(tmp_path / f'{split}.jsonl', 'w') as f:
            for doc in text.load_texts(data_dir, split)[:12]:
                f.write(json.dumps({'text': doc[:1500]}) + '\n')
    c = load_config('hf_lm.py', f'hf:{LLAMA},smoke')
    c.data.files, c.data.test_files = str(tmp_path / 'train.jsonl'), str(tmp_path / 'test.jsonl')
    c.data.cache_dir = str(tmp_path / 'packed')
    c.data.tokenizer = 'byte'  # the student's; teacher.tokenizer '' -> the hf teacher's own
    c.student.module, c.student.from_teacher_layers = 'decoder', ()
    c.student.kwargs = dict(vocab_size=259, num_layers=1, d_model=16, num_heads=2, mlp_dim=32,
                            max_len=c.data.seq_len)
    c.teacher.seq_len = 24
    c.distill.losses = ({'name': 'byte_kl', 'weight': 0.5}, {'name': 'ce', 'weight': 1.0})
    c.train.baseline = False
    for k, v in over.items():
        node, key = k.split('.')
        c[node][key] = v
    return c


def test_hf_teacher_tokenizer_aligns_byte_rows(tmp_path, data_dir, capsys):
    p = run.plan(_config(tmp_path, data_dir), str(tmp_path / 'w'), devices=jax.devices()[:1])
    cross = p.task.cross
    assert cross is not None and "is not the student's" in capsys.readouterr().out
    t_tok = cross.teacher_tokenizer
    assert t_tok.vocab_size == 160 and p.task.cross_vocab.teacher_vocab == 192
    surf = align.vocab_surfaces(t_tok)
    al = cross.aligners['train']
    # data.files: both tokenizations memory-mapped from beside the packed rows (reused)
    assert isinstance(al.s.ids, np.memmap) and isinstance(al.t.end, np.memmap)
    assert isinstance(al.match, np.memmap)
    rows = np.arange(min(al.num_rows, 8))
    r = al.rows(rows)
    # every supervised student position: the teacher token after xt_byte_pos holds the
    # student's next byte at xt_byte_depth, and its bytes before it are the text's
    s_ids, T = al.s.ids, al.T
    checked = 0
    for b, row in enumerate(rows):
        for pos in np.flatnonzero(r['xt_byte'][b]):
            tid = r['teacher_targets'][b, r['xt_byte_pos'][b, pos]]
            k = int(r['xt_byte_depth'][b, pos])
            g = row * T + pos + 1
            if surf[tid] is None:
                continue
            before = bytes(int(i) - 3 for i in s_ids[g - k:g])  # byte ids are 3 + byte
            assert surf[tid][:k] == before and surf[tid][k] == s_ids[g] - 3, (b, pos)
            checked += 1
    assert checked > 0.5 * len(rows) * T
    # the 32 ids past the tokenizer are OTHER at depth 0 and never extend a prefix
    v = p.task.cross_vocab.bytes
    assert (v.cats[0, 160:] == xb.OTHER).all() and (v.cats[1:, 160:] == xb.NONE).all()


@pytest.mark.slow
def test_hf_teacher_byte_student_trains_with_accumulation(tmp_path, data_dir):
    """Two steps online, whole and with 2 micro-batches: the same losses."""
    out = {}
    for accum in (1, 2):
        c = _config(tmp_path, data_dir, **{'train.grad_accum_steps': accum,
                                           'train.steps': 2, 'train.log_every': 1})
        w = tmp_path / f'a{accum}'
        r = run.train_and_evaluate(c, str(w), devices=jax.devices()[:1])
        with open(w / 'student_metrics' / 'metrics.jsonl') as f:
            out[accum] = [[json.loads(line)[k] for k in ('distill/byte_kl', 'loss')]
                          for line in f if '"loss"' in line]
        assert np.isfinite(r['student']['bits_per_byte'])
    np.testing.assert_allclose(out[1], out[2], rtol=1e-4)
    assert np.array(out[1])[:, 0].min() > 0
