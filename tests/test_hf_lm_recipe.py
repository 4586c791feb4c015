"""configs/hf_lm.py: an hf: teacher, its tokenizer, your own .jsonl, a student cut from it."""

import json

import jax
import numpy as np
import pytest

pytest.importorskip('tokenizers')

from jaxdistill import run  # noqa: E402
from jaxdistill.data import text  # noqa: E402
from tests.helpers import ROOT, load_config, load_module  # noqa: E402

LLAMA = f'{ROOT}/tests/fixtures/hf/llama'  # 2 layers, its own tokenizer.json


def _corpus(tmp_path, data_dir):
    for split in ('train', 'test'):
        with open(tmp_path / f'{split}.jsonl', 'w') as f:
            for doc in text.load_texts(data_dir, split)[:20]:
                f.write(json.dumps({'text': doc[:2000]}) + '\n')


def _config(tmp_path, data_dir, arg=''):
    c = load_config('hf_lm.py', f'hf:{LLAMA},smoke' + arg)
    c.data.files = str(tmp_path / 'train.jsonl')
    c.data.test_files = str(tmp_path / 'test.jsonl')
    c.data.cache_dir = str(tmp_path / 'packed')
    return c


def test_recipe_reads_the_teacher_and_cuts_every_other_layer(tmp_path, data_dir):
    assert load_module('hf_lm.py').every_other_layer(LLAMA) == (0,)
    _corpus(tmp_path, data_dir)
    c = _config(tmp_path, data_dir)
    assert c.student.from_teacher_layers == (0,) and c.data.tokenizer == 'teacher'
    p = run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert p.task.tokenizer.vocab_size <= p.student.module.vocab_size
    assert p.student.module.num_layers == 1
    prov = p.task.provenance()
    assert prov['dataset'].startswith('files:') and prov['test_bytes'] > 0
    random = _config(tmp_path, data_dir, ',random')
    assert random.student.module == 'decoder' and random.student.kwargs.num_layers == 1
    pr = run.plan(random, str(tmp_path / 'w2'), devices=jax.devices()[:1])
    shapes = lambda m: jax.tree.map(lambda x: x.shape, jax.eval_shape(
        m.init, jax.random.key(0), p.sample)[0])
    assert shapes(pr.student) == shapes(p.student)  # the same architecture, random init


@pytest.mark.slow
def test_recipe_round_trip(tmp_path, data_dir):
    """Distil, export as Hugging Face, reload with the public loader: the same logits."""
    from jaxdistill.hf import load_causal_lm

    _corpus(tmp_path, data_dir)
    c = _config(tmp_path, data_dir)
    workdir = str(tmp_path / 'w')
    r = run.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    for name in ('teacher', 'baseline', 'student'):
        assert np.isfinite(r[name]['bits_per_byte']) and r[name]['perplexity'] > 1
    c.mode, c.export.format = 'export', 'hf'
    run.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    module, params, tok = load_causal_lm(f'{workdir}/export/hf')
    p = run.plan(c, workdir, devices=jax.devices()[:1])
    rows = p.task.test_rows.take(np.arange(2))
    assert module.num_layers == 1 and tok.vocab_size == p.task.tokenizer.vocab_size
    logits = module.apply({'params': params}, rows['inputs'])
    nll = -np.take_along_axis(np.asarray(jax.nn.log_softmax(logits)),
                              rows['targets'][..., None], -1)[..., 0][rows['mask']]
    assert np.isfinite(nll).all()
