"""Cross-tokenizer distillation through the whole job: config checks, online and cached
teachers, one and eight devices (BPE teacher -> byte student on `pytext`)."""

from __future__ import annotations

import contextlib
import io

import jax
import numpy as np
import pytest

from jaxdistill import run
from jaxdistill.errors import ConfigError, DataError
from tests.helpers import load_config

CROSS_LOSSES = ({'name': 'aligned_kl', 'weight': 0.5}, {'name': 'uld', 'weight': 0.2},
                {'name': 'byte_kl', 'weight': 0.3}, {'name': 'ce', 'weight': 0.5})


def _teacher_config(data_dir):
    c = load_config('lm_text.py', 'smoke')
    c.data.data_dir = data_dir
    c.data.tokenizer, c.data.vocab_size = 'bpe', 300
    c.teacher.kwargs.vocab_size = c.student.kwargs.vocab_size = 300
    c.teacher.steps, c.train.steps, c.train.baseline = 10, 2, False
    c.optimizer.warmup_steps = 1  # below train.steps (the config check)
    return c


def _cross_config(data_dir, teacher_dir='', **over):
    c = load_config('lm_text.py', 'smoke')
    c.data.data_dir = data_dir
    c.teacher.tokenizer, c.teacher.kwargs.vocab_size = 'bpe:300', 300
    c.teacher.checkpoint = teacher_dir
    c.teacher.seq_len = 24
    c.distill.losses = CROSS_LOSSES
    c.train.steps, c.train.baseline, c.train.eval_every = 6, False, 0
    c.train.log_every = 1
    for k, v in over.items():
        node, *path = k.split('.')
        target = c[node]
        for p in path[:-1]:
            target = target[p]
        target[path[-1]] = v
    return c


@pytest.mark.parametrize('over, match', [
    ({'distill.losses': ({'name': 'kd', 'weight': 1.0},)}, "'kd' compares two distributions"),
    ({'distill.losses': ({'name': 'ce', 'weight': 1.0},)}, 'has no cross-tokenizer term'),
    ({'teacher.tokenizer': 'wordpiece'}, "teacher.tokenizer='wordpiece' is unknown"),
    ({'distill.teacher_signal': 'sequence', 'distill.sampling.prompt_len': 8},
     "'sequence' does not work across tokenizers"),
    ({'distill.losses': ({'name': 'aligned_kl', 'spam': 1.0},)}, "no hyper-parameter 'spam'"),
    ({'distill.losses': ({'name': 'uld', 'temperature': 0.0},)},
     'temperature=0.0 is invalid for loss .uld.'),
])
def test_bad_cross_tokenizer_configs_are_one_line_errors(data_dir, tmp_path, over, match):
    c = _cross_config(data_dir, teacher_dir=str(tmp_path / 'no_teacher_needed'), **over)
    with pytest.raises(ConfigError, match=match) as e:
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert '\n' not in str(e.value)
    assert not (tmp_path / 'w').exists()


def test_a_teacher_trained_here_is_refused(data_dir, tmp_path):
    with pytest.raises(ConfigError, match='teacher.checkpoint is empty'):
        run.plan(_cross_config(data_dir), str(tmp_path / 'w'), devices=jax.devices()[:1])


@pytest.fixture(scope='module')
def bpe_teacher(data_dir, tmp_path_factory):
    workdir = str(tmp_path_factory.mktemp('bpe_teacher'))
    run.train_and_evaluate(_teacher_config(data_dir), workdir, devices=jax.devices()[:1])
    return workdir


def _losses(result_dir):
    import json

    with open(f'{result_dir}/student_metrics/metrics.jsonl') as f:
        rows = [json.loads(line) for line in f]
    return np.array([[r['distill/aligned_kl'], r['distill/uld'], r['distill/byte_kl'], r['loss']]
                     for r in rows if 'loss' in r])


@pytest.fixture(scope='module')
def online(bpe_teacher, data_dir, tmp_path_factory):
    """The online cross-tokenizer job on 1 and on 8 devices (with its metrics' losses), and
    what it printed; the cached test compares its first step with the 1-device run."""
    results, printed = {}, io.StringIO()
    with contextlib.redirect_stdout(printed):
        for n in (1, 8):
            w = str(tmp_path_factory.mktemp(f'online{n}'))
            results[n] = run.train_and_evaluate(_cross_config(data_dir, bpe_teacher), w,
                                                devices=jax.devices()[:n])
            results[n]['losses'] = _losses(w)
    return results, printed.getvalue()


@pytest.mark.slow
def test_online_on_one_and_eight_devices(online):
    results, printed = online
    assert "is not the student's" in printed  # the one-line note
    one, eight = results[1], results[8]
    np.testing.assert_allclose(one['losses'], eight['losses'], rtol=2e-4, atol=1e-5)
    assert np.isfinite(one['losses']).all() and (one['losses'][:, :3] > 0).all()
    s = one['student']
    assert 0 < s['aligned_positions'] < 1 and s['bits_per_byte'] > 0
    assert one['provenance']['teacher_tokenizer'] == 'bpe300'
    # the teacher is scored on its own packing: its bits per byte is its own run's
    np.testing.assert_allclose(s['bits_per_byte'], eight['student']['bits_per_byte'], rtol=1e-4)
    assert one['teacher']['bits_per_byte'] < 9


@pytest.mark.slow
def test_cached_teacher_and_a_cache_from_another_tokenizer(bpe_teacher, online, data_dir,
                                                          tmp_path):
    cache = str(tmp_path / 'cache')
    # k = the whole teacher vocabulary: the cache then holds every probability (float16), so
    # the first step's terms must equal online's (a 10-step teacher is near uniform: a top-32
    # of it would drop most of the mass and differ for that reason alone)
    c = _cross_config(data_dir, bpe_teacher, **{'distill.teacher_signal': 'cached',
                                                'distill.cache.path': cache,
                                                'distill.cache.k': 300})
    r = run.train_and_evaluate(c, str(tmp_path / 'a'), devices=jax.devices()[:2])
    losses = _losses(str(tmp_path / 'a'))
    assert np.isfinite(losses).all() and r['provenance']['teacher_signal'] == 'cached'
    # online's first step, same config (online's terms do not depend on the device count:
    # 1 = 8 devices to 2e-4, test_online_on_one_and_eight_devices)
    np.testing.assert_allclose(losses[0], online[0][1]['losses'][0], rtol=0.05)
    other = _cross_config(data_dir, bpe_teacher, **{'distill.teacher_signal': 'cached',
                                                    'distill.cache.path': cache,
                                                    'distill.cache.k': 300, 'teacher.seq_len': 16})
    # the cross part of the fingerprint (teacher tokenizer digest and row length) is checked;
    # another BPE size cannot be built for this 300-id teacher (300 is the smallest BPE)
    with pytest.raises((ConfigError, DataError), match='teacher_len'):
        run.train_and_evaluate(other, str(tmp_path / 'c'), devices=jax.devices()[:1])


def test_lm_cross_config_presets():
    c = load_config('lm_cross.py', 'smoke,uld')
    assert [(e['name'], e['weight']) for e in c.distill.losses] == [('uld', 0.25), ('ce', 1.0)]
    assert c.teacher.tokenizer == 'bpe:512' and c.teacher.seq_len == c.data.seq_len // 2
    assert load_config('lm_cross.py').distill.losses[0]['name'] == 'byte_kl'
    with pytest.raises(ValueError, match='unknown preset'):
        load_config('lm_cross.py', 'kd')
