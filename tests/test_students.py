"""jaxdistill/models/students.py + the HF round trip of a run: a Llama checkpoint as teacher
(module='hf'), its own tokenizer for the text (data.tokenizer='teacher'), a student cut from
its layers (student.from_teacher_layers), exported back with --config.export.format=hf."""

import json
import pathlib

import jax
import numpy as np
import pytest

from jaxdistill import hf, run
from jaxdistill.errors import ConfigError
from jaxdistill.hf.tokenizer import HFTokenizer
from jaxdistill.models import students
from tests.helpers import load_config

LLAMA = pathlib.Path(__file__).parent / 'fixtures' / 'hf' / 'llama'


def test_cut_keeps_the_chosen_layers_and_everything_around_them():
    module, params, _ = hf.load_causal_lm(LLAMA)
    student = students.cut_module(module, (1,), {})
    cut = students.cut_params(params, (1,))
    assert student.num_layers == 1 and set(cut) == {'embedding', 'lm_head', 'final_norm',
                                                    'layer_0'}
    assert cut['layer_0'] is params['layer_1'] and cut['embedding'] is params['embedding']
    scan, stacked, _ = hf.load_causal_lm(LLAMA, scan_layers=True)
    cut_stack = students.cut_params(stacked, (1,))
    np.testing.assert_array_equal(cut_stack['layers']['attn']['query'][0],
                                  params['layer_1']['attn']['query'])
    ids = np.arange(8, dtype=np.int32)[None]
    np.testing.assert_allclose(student.apply({'params': cut}, ids),
                               students.cut_module(scan, (1,), {}).apply(
                                   {'params': cut_stack}, ids), atol=1e-6)
    # all layers kept: the teacher itself
    np.testing.assert_array_equal(
        students.cut_module(module, (0, 1), {}).apply(
            {'params': students.cut_params(params, (0, 1))}, ids),
        module.apply({'params': params}, ids))


def lm_config(data_dir, layers=(1,)):
    c = load_config('lm_text.py', 'smoke')
    c.data.data_dir = data_dir
    c.data.tokenizer = 'teacher'
    c.teacher.module, c.teacher.checkpoint, c.teacher.kwargs = 'hf', f'hf:{LLAMA}', {}
    c.student.module, c.student.kwargs = 'hf', {}
    c.student.from_teacher_layers = layers
    c.train.steps, c.train.eval_every, c.train.checkpoint_every = 2, 0, 2
    c.optimizer.warmup_steps = 0
    c.optimizer.learning_rate = 1e-9  # the trained students stay at their initialisation
    return c


@pytest.mark.parametrize('change, match', [
    (dict(from_teacher_layers=(0, 2)), r'layer 2 is out of range; the teacher has 2 layers'),
    (dict(from_teacher_layers=(1, 0)), r'must be sorted and without repeats, e\.g\. \(0, 1\)'),
    (dict(from_teacher_layers=(1, 1)), r'must be sorted and without repeats'),
    (dict(module='decoder'), r"student.from_teacher_layers cuts the teacher: set "
                             r"student.module='hf'"),
    (dict(checkpoint=f'hf:{LLAMA}'), 'set only one'),
    (dict(kwargs={'num_layers': 3}), r'student.kwargs.num_layers: a student cut from the teacher'),
    (dict(from_teacher_layers=(), checkpoint=''), r"student.module='hf' takes its architecture"),
])
def test_bad_student_sources_fail_before_writing(data_dir, tmp_path, change, match):
    c = lm_config(data_dir)
    for key, value in change.items():
        c.student[key] = value
    with pytest.raises(ConfigError, match=match):
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert not (tmp_path / 'w').exists()


def test_teacher_tokenizer_larger_than_the_model_names_both_sizes(data_dir, tmp_path):
    c = lm_config(data_dir)
    c.data.tokenizer = f'hf:{LLAMA}'
    c.teacher.module, c.teacher.checkpoint = 'decoder', ''
    c.teacher.kwargs = dict(vocab_size=100, num_layers=1, d_model=16, num_heads=2, mlp_dim=32,
                            max_len=32)
    c.student.module, c.student.kwargs = 'decoder', dict(c.teacher.kwargs)
    c.student.from_teacher_layers = ()
    with pytest.raises(ConfigError, match=r'the models have 100 outputs but the .* tokenizer '
                                          r'has 160 ids'):
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_cut_student_run_and_hf_export(data_dir, tmp_path):
    c = lm_config(data_dir)
    workdir = str(tmp_path / 'w')
    p = run.plan(c, workdir, devices=jax.devices()[:1])
    assert isinstance(p.task.tokenizer, HFTokenizer) and p.task.tokenizer.bos_id == 1
    assert int(p.task.sample[0, 0]) == 1  # documents start with the checkpoint's BOS
    results = run.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    _, teacher_params, _ = hf.load_causal_lm(LLAMA)
    want = students.cut_params(teacher_params, (1,))
    # Both students started from layer 1 of the teacher (lr 1e-9 kept them there).
    layer = sum(x.size for x in jax.tree.leaves(teacher_params['layer_0']))
    for stage in ('baseline', 'student'):
        assert results[stage]['params'] == results['teacher']['params'] - layer
    assert results['baseline']['perplexity'] == pytest.approx(results['student']['perplexity'],
                                                              rel=1e-4)
    c.mode, c.export.format = 'export', 'hf'
    run.train_and_evaluate(c, workdir, devices=jax.devices()[:1])
    out = pathlib.Path(workdir) / 'export' / 'hf'
    module, params, tok = hf.load_causal_lm(out)
    assert module.num_layers == 1 and tok.vocab_size == 160
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5), params, want)
    config = json.loads((out / 'config.json').read_text())
    prov = config['jaxdistill']
    assert prov['teacher_params_sha256'] == results['teacher']['params_sha256']
    assert prov['from_teacher_layers'] == [1] and prov['losses'] and prov['dataset']
    assert (out / 'tokenizer.json').read_text() == (LLAMA / 'tokenizer.json').read_text()
    assert 'teacher_params_sha256' in (out / 'README.md').read_text()
