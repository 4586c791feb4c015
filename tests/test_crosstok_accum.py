"""train.grad_accum_steps across tokenizers: N micro-batches give the one-batch update.

The cross-tokenizer terms average over their own positions (aligned positions, same-string
positions, spans, supervised bytes), which the micro-batches hold unevenly; the real jitted
step is built whole and accumulated from one state and one aligned batch (a BPE teacher, a
byte-level student, real text) and the updated parameters and logged terms compared.
"""

import dataclasses

import jax
import numpy as np
import optax
import pytest

from jaxdistill import objective
from jaxdistill.config import loss_entry
from jaxdistill.crosstok import align
from jaxdistill.crosstok import bytes as xb
from jaxdistill.crosstok import data as crosstok
from jaxdistill.crosstok.losses import CrossVocab
from jaxdistill.data.tokenizer import BPETokenizer, ByteTokenizer
from jaxdistill.tasks import StepInputs
from tests.test_grad_accum import _compare, _model, _run

DOCS = ['the cat sat on the mat, naïve café.', 'ab  ab\tab\n\nabc abcd', 'x y z',
        'déjà vu — again and again', 'tokens of unequal length: a, ab, abc.'] * 3
SEQ, TEACHER_LEN = 16, 12


def _setup():
    t_tok = BPETokenizer.train(DOCS * 10, 300)
    s_tok = ByteTokenizer()
    vmap = align.vocab_map(s_tok, t_tok)
    t_surf = align.vocab_surfaces(t_tok)
    trie = xb.prefix_trie(t_surf, t_tok.eos_id)
    al = align.Aligner(align.encode_stream(s_tok, DOCS, 'data.tokenizer'),
                       align.encode_stream(t_tok, DOCS), SEQ, TEACHER_LEN, vmap,
                       t_tok.pad_id, trie=trie)
    rows = np.arange(16) % al.num_rows  # 2 micro-batches of 8 rows on 8 devices
    batch = {**al.student_rows(rows), **al.rows(rows)}
    cats = xb.student_categories(align.vocab_surfaces(s_tok), s_tok.eos_id, 259)
    vocab = CrossVocab(vmap.shared_student, vmap.shared_teacher, vmap.student_to_teacher, 259,
                       t_tok.vocab_size, xb.byte_vocab(trie, cats, t_tok.vocab_size))
    return batch, vocab, t_tok.vocab_size


def _prepare(batch, rng):
    del rng
    return StepInputs(batch['inputs'], batch['targets'], batch['mask'], None,
                      crosstok.step_teacher(batch))


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_cross_tokenizer_accumulated_equals_one_batch():
    losses = [loss_entry('byte_kl', weight=0.5, temperature=2.0),
              loss_entry('aligned_kl', weight=0.5, span_weight=0.3),
              loss_entry('uld', weight=0.2), loss_entry('ce', weight=0.5)]
    batch, vocab, t_vocab = _setup()
    # uneven: each micro-batch holds its own count of supervised positions and spans
    for k in ('xt_byte', 'xt_aligned', 'xt_same', 'xt_span_mask'):
        assert len(set(batch[k].reshape(8, -1).sum(1).tolist())) > 1, k
    kw = dict(num_heads=2, max_len=SEQ)
    teacher = _model('decoder', 'teacher', vocab_size=t_vocab, num_layers=1, d_model=32,
                     mlp_dim=64, **kw)
    student = _model('decoder', 'student', vocab_size=259, num_layers=1, d_model=16,
                     mlp_dim=32, **kw)
    obj = objective.build(losses, total_steps=10)
    obj = dataclasses.replace(obj, cross=vocab)
    runs = [_run(student, teacher, obj, batch, _prepare, n, optax.sgd(1.0)) for n in (1, 2)]
    keys = ['loss', 'grad_norm'] + [f'distill/{e["name"]}' for e in losses]
    _compare(runs, keys)
    assert np.isfinite(jax.tree.leaves(runs[1][2])[0])
