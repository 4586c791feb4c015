"""Teacher signals end to end (configs/lm_text.py:smoke): one teacher, then cached, sequence
and on-policy students; alignment, no teacher in the cached step, resume, bad input."""

import os
import shutil

import jax
import numpy as np
import pytest

from jaxdistill import main as cli_main
from jaxdistill import provenance, run, signals, train
from jaxdistill.errors import ConfigError, DataError
from jaxdistill.models.decoder import Decoder
from jaxdistill.signals import cache, on_policy
from tests.helpers import ROOT, load_config

DEVICES = jax.devices()[:1]


def _config(data_dir, preset, teacher_dir=None, **train_keys):
    c = load_config('lm_text.py', preset)
    c.data.data_dir = data_dir
    c.train.baseline = False
    c.distill.cache.k = 8
    c.distill.sampling.batch_size = 1024
    for k, v in train_keys.items():
        c.train[k] = v
    if teacher_dir:
        c.teacher.checkpoint = teacher_dir
    return c


@pytest.fixture(scope='module')
def teacher_dir(lm_cache_teacher):
    """A smoke teacher (20 steps), trained once for every signal below, by the cached
    signal's cache-only mode (tests/conftest.py): the teacher and its top-8 cache, no
    student (a student stage there would be trained for nothing)."""
    workdir, out = lm_cache_teacher
    assert not os.path.exists(os.path.join(workdir, 'student'))  # cache only
    assert os.path.isdir(os.path.join(workdir, 'teacher'))
    return workdir, out


@pytest.fixture(scope='module')
def cached_run(data_dir, teacher_dir):
    """The cached student, trained in the workdir whose cache the cache-only mode wrote
    (the config that wrote it, tests/conftest.py, but ``mode=train``)."""
    workdir, out = teacher_dir
    c = load_config('lm_text.py', 'smoke,cached')
    c.data.data_dir, c.distill.cache.k, c.train.baseline = data_dir, 8, False
    built = os.path.getmtime(os.path.join(workdir, 'teacher_cache', 'spec.json'))
    steps = []
    real = train.make_train_step

    def spy(*args, **kwargs):  # which teacher each stage's jitted step runs
        steps.append(kwargs.get('teacher'))
        return real(*args, **kwargs)

    train.make_train_step = spy
    try:
        r = run.train_and_evaluate(c, workdir, devices=DEVICES)
    finally:
        train.make_train_step = real
    assert os.path.getmtime(os.path.join(workdir, 'teacher_cache', 'spec.json')) == built
    return workdir, c, out, r, steps


def test_cache_mode_writes_the_cache_and_training_never_runs_the_teacher(cached_run):
    workdir, _, out, r, steps = cached_run
    assert out['provenance']['cache_k'] == 8
    assert out['provenance']['cache_bytes_per_token'] == 8 * 4  # uint16 id + float16 lp
    assert steps == [None]  # the student's step got no teacher to run
    p = r['provenance']
    assert p['teacher_signal'] == 'cached' and p['teacher_cache'].endswith('teacher_cache')
    assert r['student']['kl_to_teacher'] > 0 and r['student']['steps'] == 20
    assert 'teacher signal: `cached`' in open(os.path.join(workdir, 'report.md')).read()


def test_cached_batches_carry_the_teachers_topk_of_their_own_rows(cached_run):
    workdir, c, _, _, _ = cached_run
    p = run.plan(c, workdir, devices=DEVICES)
    teacher_vars = run.load_teacher(p)
    expected = cache.fingerprint(c, p.task, provenance.params_sha256(teacher_vars['params']))
    arrays = cache.load(cache.directory(c, workdir), expected, len(p.task.train_rows['inputs']))
    batches = p.task.batches_from(cache.attach(p.task.train_rows, arrays), c.seed)
    for step in (0, 7, 19, 1234):  # any step: a resumed run reads batch `step` the same way
        batch = batches[step]
        logits = p.teacher.apply(teacher_vars['params'], teacher_vars['state'],
                                 batch['inputs'], train=False)[0]
        logp = np.asarray(jax.nn.log_softmax(logits.astype(np.float32)), np.float64)
        stored = cache.decode(batch)
        got = np.take_along_axis(logp, np.asarray(stored.ids), -1)
        np.testing.assert_allclose(np.asarray(stored.logprobs), got, atol=2e-2, rtol=1e-3)
        kth = np.sort(logp, -1)[..., -8]  # the ids are the top 8 (up to float16 ties)
        assert (got >= kth[..., None] - 2e-2).all()


def test_a_cache_for_another_k_is_refused_in_one_line(cached_run, data_dir, tmp_path):
    workdir, c, _, _, _ = cached_run
    other = _config(data_dir, 'smoke,cached', workdir)  # the teacher trained there
    other.distill.cache.k = 4
    other.distill.cache.path = os.path.join(workdir, 'teacher_cache')
    with pytest.raises(DataError, match='built for k=8, but this run has k=4') as e:
        run.train_and_evaluate(other, str(tmp_path / 'w'), devices=DEVICES)
    assert '\n' not in str(e.value)


def test_sequence_student_learns_teacher_completions(data_dir, teacher_dir, tmp_path):
    c = _config(data_dir, 'smoke,sequence', teacher_dir[0])
    r = run.train_and_evaluate(c, str(tmp_path), devices=DEVICES)
    p = run.plan(c, str(tmp_path), devices=DEVICES)
    rows = signals.sequence.load(r['provenance']['teacher_sequences'],
                                 signals.sequence.fingerprint(
                                     c, p.task, r['teacher']['params_sha256']))
    train_rows, prompt = p.task.train_rows, c.distill.sampling.prompt_len
    np.testing.assert_array_equal(rows['inputs'][:, :prompt], train_rows['inputs'][:, :prompt])
    assert not rows['mask'][:, :prompt - 1].any()  # prompt targets are not trained on
    full = train_rows['mask'].all(1)  # rows with a full prompt: every completion token counts
    assert rows['mask'][full, prompt - 1:c.data.seq_len - 1].all()
    assert r['provenance']['generated_tokens'] == int(rows['mask'].sum())
    assert not (rows['inputs'][:, prompt:] == train_rows['inputs'][:, prompt:]).all()
    assert r['provenance']['losses'] == [{'name': 'ce', 'weight': 1.0}]


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_on_policy_resumes_bitwise_and_counts_its_sampled_steps(data_dir, teacher_dir,
                                                                 tmp_path):
    c = _config(data_dir, 'smoke,on_policy', teacher_dir[0], checkpoint_every=10,
                keep_checkpoints=3)
    whole = run.train_and_evaluate(c, str(tmp_path / 'a'), devices=DEVICES)
    assert whole['provenance']['on_policy_steps'] == on_policy.count(c.seed, 20, 0.5) > 0
    shutil.rmtree(tmp_path / 'a' / 'student' / '20')  # as if killed after step 10's save
    os.remove(tmp_path / 'a' / 'results.json')
    resumed = run.train_and_evaluate(c, str(tmp_path / 'a'), devices=DEVICES)
    assert resumed['student']['params_sha256'] == whole['student']['params_sha256']
    c.distill.on_policy.lmbda = 0.0  # no sampled batch: a different student
    other = run.train_and_evaluate(c, str(tmp_path / 'b'), devices=DEVICES)
    assert other['student']['params_sha256'] != whole['student']['params_sha256']


def test_on_policy_batch_is_the_students_own_completion(data_dir, teacher_dir, tmp_path):
    c = _config(data_dir, 'smoke,on_policy', teacher_dir[0])
    p = run.plan(c, str(tmp_path), devices=DEVICES)
    hook = on_policy.OnPolicy(c, p.student, p.mesh)
    state, _ = train.create_train_state(p.student, train.make_optimizer(c.optimizer, 20),
                                        jax.random.key(0), p.sample, p.mesh)
    from jaxdistill.runtime import mesh as mesh_lib
    batch = mesh_lib.to_global(p.mesh, p.task.train_batches(0)[0])
    step = next(s for s in range(100) if on_policy.uses_student_samples(c.seed, s, 0.5))
    out = hook(state, batch, step)
    prompt = c.distill.sampling.prompt_len
    np.testing.assert_array_equal(out['inputs'][:, :prompt], batch['inputs'][:, :prompt])
    assert not np.asarray(out['labelled']).any() and np.asarray(out['mask']).sum() > 0
    data_step = next(s for s in range(100) if not on_policy.uses_student_samples(c.seed, s, .5))
    kept = hook(state, batch, data_step)
    assert np.asarray(kept['labelled']).all()
    np.testing.assert_array_equal(kept['inputs'], batch['inputs'])
    # the same step gives the same samples (a pure function of params, seed and step)
    np.testing.assert_array_equal(hook(state, batch, step)['inputs'], out['inputs'])


def test_prompt_plus_completion_longer_than_the_context_is_refused(data_dir):
    c = _config(data_dir, 'smoke,on_policy')

    class Model:
        module = Decoder(vocab_size=259, num_layers=1, d_model=8, num_heads=1, mlp_dim=8,
                         max_len=16)

    with pytest.raises(ConfigError, match=r'exceed the context of student.module \(max_len=16'):
        signals.check_models(c, Model(), Model(), None)


def test_cli_cache_mode_error_is_one_line(data_dir, tmp_path, capfd, monkeypatch):
    """The CLI in this process (`main.run_cli`; test_cli_errors shows a subprocess reports
    the same line)."""
    monkeypatch.chdir(ROOT)
    status = cli_main.run_cli(
        ['jaxdistill.main', '--config=configs/lm_text.py:smoke', f'--workdir={tmp_path}/w',
         '--config.mode=cache_teacher', f'--config.data.data_dir={data_dir}'])
    out, err = capfd.readouterr()
    assert status == 2 and err.count('\n') == 1 and out == '', out + err
    assert err.startswith('error: ') and "distill.teacher_signal='cached'" in err
    assert not os.path.exists(tmp_path / 'w')


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_cached_on_eight_devices_matches_one_and_reuses_the_cache(cached_run, data_dir,
                                                                   tmp_path):
    workdir, c, _, r, _ = cached_run
    c8 = _config(data_dir, 'smoke,cached', workdir)  # the teacher trained there
    c8.distill.cache.path = os.path.join(workdir, 'teacher_cache')
    c8.mesh.data, c8.mesh.fsdp = 4, 2
    r8 = run.train_and_evaluate(c8, str(tmp_path), devices=jax.devices()[:8])
    assert not os.path.exists(tmp_path / 'teacher_cache')  # read from the given path
    np.testing.assert_allclose(r8['student']['train_loss'], r['student']['train_loss'],
                               rtol=1e-4)
    np.testing.assert_allclose(r8['student']['kl_to_teacher'], r['student']['kl_to_teacher'],
                               rtol=1e-4)


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_on_policy_samples_on_a_sharded_batch(data_dir, teacher_dir, tmp_path):
    c = _config(data_dir, 'smoke,on_policy', teacher_dir[0])
    c.train.steps, c.optimizer.warmup_steps = 6, 1
    c.distill.on_policy.lmbda = 1.0  # every step samples
    r = run.train_and_evaluate(c, str(tmp_path), devices=jax.devices()[:8])
    assert r['provenance']['on_policy_steps'] == 6 and np.isfinite(r['student']['train_loss'])
