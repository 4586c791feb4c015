"""jaxdistill/tasks/lm.py: language-model distillation end to end, scores against numpy."""

import json

import jax
import numpy as np
import pytest

from jaxdistill import run
from jaxdistill.data import text
from jaxdistill.errors import ConfigError
from jaxdistill.runtime import mesh as mesh_lib
from tests.helpers import load_config


def smoke(data_dir):
    c = load_config('lm_text.py', 'smoke')
    c.data.data_dir = data_dir
    return c


@pytest.fixture(scope='module')
def lm_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('lm'))
    return workdir, run.train_and_evaluate(smoke(data_dir), workdir, devices=jax.devices()[:1])


def test_results_have_token_scores(lm_run):
    workdir, r = lm_run
    assert r['provenance']['task'] == 'lm' and r['provenance']['tokenizer'] == 'byte'
    assert r['test_examples'] == r['provenance']['test_tokens'] > 1000
    for name in ('baseline', 'student'):
        s = r[name]
        assert 1.0 < s['perplexity'] < 259.0  # better than uniform over the byte vocabulary
        assert 0.0 <= s['agreement'] <= 1.0 and s['kl_to_teacher'] > 0
    # The distilled student is pulled towards the teacher; the baseline only sees tokens.
    assert r['student']['kl_to_teacher'] < r['baseline']['kl_to_teacher']
    assert r['teacher']['perplexity'] < r['baseline']['perplexity']
    text = open(f'{workdir}/report.md').read()
    assert 'test perplexity' in text and 'target tokens' in text


def _numpy_scores(p, model, model_vars):
    """Float64 perplexity and accuracy over every unpadded test target, no evaluator code."""
    rows = p.task.test_rows
    logits = np.concatenate([
        np.asarray(model.apply(model_vars['params'], model_vars['state'],
                               rows['inputs'][i:i + 8], train=False)[0], np.float64)
        for i in range(0, len(rows['inputs']), 8)])
    z = logits - logits.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    nll = -np.take_along_axis(logp, rows['targets'][..., None], -1)[..., 0]
    m = rows['mask']
    return np.exp(nll[m].mean()), (logits.argmax(-1) == rows['targets'])[m].mean(), nll[m].sum()


def test_scores_match_numpy_on_one_and_eight_devices(lm_run, data_dir):
    workdir, r = lm_run
    c = smoke(data_dir)
    c.teacher.checkpoint = workdir
    p = run.plan(c, workdir + '_probe', devices=jax.devices()[:1])
    teacher_vars = run.load_teacher(p)
    ppl, acc, nll = _numpy_scores(p, p.teacher, teacher_vars)
    np.testing.assert_allclose(r['teacher']['perplexity'], ppl, rtol=1e-5)
    np.testing.assert_allclose(r['teacher']['accuracy'], acc, rtol=1e-6)
    test_bytes = sum(len(t.encode('utf-8')) for t in text.load_texts(data_dir, 'test'))
    assert r['provenance']['test_bytes'] == test_bytes
    np.testing.assert_allclose(r['teacher']['bits_per_byte'], nll / test_bytes / np.log(2),
                               rtol=1e-5)
    mesh8 = mesh_lib.make_mesh(c.mesh, jax.devices())
    vars8 = jax.device_put(jax.device_get(teacher_vars), mesh_lib.replicated(mesh8))
    scores8 = p.task.scorer(p.teacher, mesh8)(vars8)
    np.testing.assert_allclose(scores8['perplexity'], ppl, rtol=1e-5)


def test_own_files_give_the_same_rows_and_scores(lm_run, data_dir, tmp_path):
    """pytext's documents written as .jsonl (test documents as data.test_files, in the same
    order) pack to the same rows, so the same teacher scores the same on them."""
    workdir, r = lm_run
    for split in ('train', 'test'):
        with open(tmp_path / f'{split}.jsonl', 'w') as f:
            for doc in text.load_texts(data_dir, split):
                f.write(json.dumps({'body': doc}) + '\n')
    c = smoke(data_dir)
    c.teacher.checkpoint = workdir
    c.data.files = str(tmp_path / 'train.jsonl')
    c.data.test_files = (str(tmp_path / 'test.jsonl'),)
    c.data.text_key = 'body'
    c.data.cache_dir = str(tmp_path / 'cache')
    p = run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert not (tmp_path / 'w').exists() and (tmp_path / 'cache').is_dir()
    prov = p.task.provenance()
    for key in ('test_tokens', 'test_bytes', 'train_tokens', 'train_rows'):
        assert prov[key] == r['provenance'][key], key
    assert prov['dataset'].startswith('files:') and prov['undecodable_bytes'] == 0
    scores = p.task.scorer(p.teacher, mesh_lib.make_mesh(c.mesh, jax.devices()[:1]))(
        run.load_teacher(p))
    for key in ('perplexity', 'bits_per_byte', 'accuracy'):
        np.testing.assert_allclose(scores[key], r['teacher'][key], rtol=1e-6)


@pytest.mark.parametrize('override,match', [
    (dict(student_vocab=300), 'teacher vocabulary 259 != student vocabulary 300'),
    (dict(teacher_vocab=100, student_vocab=100), 'tokenizer has 259 ids'),
    (dict(mixup=1.0), 'data.mixup'),
    (dict(labelled_fraction=0.5), 'data.labelled_fraction'),
    (dict(name='digits'), "data.name='digits' is not a text dataset"),
])
def test_bad_lm_config(data_dir, tmp_path, override, match):
    c = smoke(data_dir)
    if 'student_vocab' in override:
        c.student.kwargs.vocab_size = override['student_vocab']
    if 'teacher_vocab' in override:
        c.teacher.kwargs.vocab_size = override['teacher_vocab']
    for key in ('mixup', 'labelled_fraction', 'name'):
        if key in override:
            c.data[key] = override[key]
    with pytest.raises(ConfigError, match=match):
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert not (tmp_path / 'w').exists()
