"""benchmarks/: the harness's pieces on tiny shapes (no test asserts a timing)."""

import importlib.util

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from benchmarks import comparisons, harness, pairs, report, run, steps

TINY_DECODER = dict(vocab_size=64, num_layers=1, d_model=16, num_heads=2, mlp_dim=32)


class FakeClock:
    """A clock that only moves when a candidate 'runs': timings become exact."""

    def __init__(self):
        self.now, self.calls = 0.0, []

    def __call__(self) -> float:
        return self.now

    def candidate(self, name: str, durations: list[float]):
        it = iter(durations)

        def fn():
            self.calls.append(name)
            self.now += next(it)

        return fn


def test_timer_excludes_warmup_and_reports_median_and_spread():
    clock = FakeClock()
    # The first call of each is the warm-up (a slow "compilation") and must not be timed.
    a = clock.candidate('a', [100.0, 1.0, 2.0, 3.0, 4.0, 10.0])
    b = clock.candidate('b', [100.0, 5.0, 5.0, 5.0, 5.0, 5.0])
    t = harness.time_interleaved({'a': a, 'b': b}, repeats=5, clock=clock)
    assert t['a'].times_s == [1.0, 2.0, 3.0, 4.0, 10.0]
    s = t['a'].summary()
    assert (s['median_s'], s['q1_s'], s['q3_s'], s['min_s'], s['max_s']) == (3, 2, 4, 1, 10)
    assert harness.ratio(t, 'a', 'b') == pytest.approx(3 / 5)
    assert harness.paired_ratios(t, 'a', 'b') == pytest.approx([0.2, 0.4, 0.6, 0.8, 2.0])


def test_timer_interleaves_and_rotates_the_order():
    clock = FakeClock()
    fns = {n: clock.candidate(n, [1.0] * 4) for n in 'abc'}
    harness.time_interleaved(fns, repeats=3, warmup=1, clock=clock)
    assert clock.calls == list('abc') + list('abc') + list('bca') + list('cab')


def test_timer_divides_by_steps_per_call():
    clock = FakeClock()
    t = harness.time_interleaved({'a': clock.candidate('a', [1.0] * 7)}, repeats=2, steps=3,
                                 clock=clock)
    assert t['a'].times_s == [1.0, 1.0]
    with pytest.raises(ValueError):
        harness.time_interleaved({'a': lambda: None}, repeats=0)


def test_finish_record_adds_the_load_and_writes_the_json(tmp_path, capsys):
    import json

    path = str(tmp_path / 'r.json')
    harness.finish_record({'benchmark': 'x'}, path)
    written = json.load(open(path))
    assert written['benchmark'] == 'x' and len(written['load_after']) == 3
    assert capsys.readouterr().out == f'wrote {path}\n'


def test_xla_flop_count_of_a_matmul_is_the_analytic_count():
    a, b = jnp.ones((64, 48)), jnp.ones((48, 32))
    assert harness.compiled_flops(jnp.dot, a, b) == harness.matmul_flops(64, 48, 32)


def test_analytic_conv_and_dense_flops():
    class Net(nn.Module):
        @nn.compact
        def __call__(self, x, train=False):
            x = nn.Conv(4, (3, 3), padding='VALID')(x)  # 3x3 outputs
            return nn.Dense(7)(x.reshape(x.shape[0], -1))

    x = np.zeros((2, 5, 5, 3), np.float32)
    conv = 2 * (2 * 3 * 3) * (3 * 3 * 3 * 4)
    dense = 2 * 2 * (3 * 3 * 4) * 7
    assert pairs.dense_conv_flops(Net(), x) == conv + dense
    # XLA counts the same multiply-adds plus one addition per bias entry.
    bias_adds = 2 * 3 * 3 * 4 + 2 * 7
    variables = Net().init(jax.random.key(0), x)
    assert harness.compiled_flops(lambda v, x: Net().apply(v, x), variables, x) == (
        conv + dense + bias_adds)


def test_analytic_image_flops_agree_with_xla():
    """The real image pair (sharding-annotated kernels): counted, and the same order as XLA."""
    pair = pairs.image_pair(2)
    analytic = pairs.analytic_flops(pair)
    v = pairs.init_teacher(pair)
    xla = harness.compiled_flops(
        lambda v, x: pair.teacher.apply(v['params'], v['state'], x, train=False)[0], v,
        pair.batch['image'])
    # XLA skips the taps on 'SAME' zero padding and adds BN / ReLU / bias work.
    assert 0.7 * analytic['teacher_forward'] < xla < 1.5 * analytic['teacher_forward']
    assert 0 < analytic['student_forward'] < analytic['teacher_forward']


def test_analytic_decoder_flops_agree_with_xla():
    pair = pairs.lm_pair(2, 8, teacher_cfg=TINY_DECODER, student_cfg=TINY_DECODER)
    analytic = pairs.analytic_flops(pair)['teacher_forward']
    assert analytic == pairs.decoder_flops(TINY_DECODER, 2, 8)
    v = pairs.init_teacher(pair)
    xla = harness.compiled_flops(
        lambda v, x: pair.teacher.apply(v['params'], v['state'], x, train=False)[0], v,
        pair.batch['inputs'])
    # XLA also counts norms, RoPE, softmax and SiLU: more than the matmuls, same order.
    assert analytic < xla < 2 * analytic


@pytest.mark.slow  # heavy end to end: CI runs it in the slow step
def test_naive_loop_computes_the_same_loss_as_jaxdistill():
    """The peer loop is the same objective on the same model: only the engineering differs."""
    pair = pairs.lm_pair(2, 8, teacher_cfg=TINY_DECODER, student_cfg=TINY_DECODER)
    teacher_vars = pairs.init_teacher(pair)
    distill = steps.distill_runner(pair, steps.make_mesh(jax.devices()[:1]), teacher_vars)
    params = jax.tree.map(jnp.copy, distill.carry.params)
    naive = steps.naive_runner(pair, teacher_vars, params=params)
    for _ in range(2):  # the second step checks the updates agree too
        np.testing.assert_allclose(float(distill()['loss']), float(naive()), rtol=2e-5)


def _record(ratio=1.02, status='ok'):
    timing = harness.Timing('x', [1.0, 2.0, 3.0]).summary()
    return {'status': status, 'description': 'd', 'goal_max': 1.05, 'wall_s': 1.0,
            'load_average_before': [1.0, 1.0, 1.0], 'load_average_after': [2.0, 2.0, 2.0],
            'results': {'lm': {'ratio': ratio, 'meets_goal': ratio <= 1.05,
                               'ratio_per_round_iqr': [1.0, 1.1],
                               'timings': {'distill_step': timing}}}}


def _report(**comparisons):
    return {'schema_version': report.SCHEMA_VERSION, 'command': 'python -m benchmarks.run',
            'quick': True, 'timing_method': 'interleaved', 'machine': harness.machine_info(),
            'load_average_before': [3.0, 2.0, 1.0], 'load_average_after': [4.0, 2.0, 1.0],
            'comparisons': comparisons}


def test_results_schema_accepts_a_full_report_and_names_what_is_missing():
    skipped = {'status': 'skipped', 'reason': 'torch is not installed'}
    good = _report(distill_over_limit=_record(), vs_pytorch=skipped)
    report.validate(good)
    text = report.markdown(good)
    assert 'Taken under load' in text and 'load average 3.0 before' in text
    quiet = dict(good, load_average_before=[0.1, 0.1, 0.1])
    assert 'Taken on a quiet machine: load average 0.1 before' in report.markdown(quiet)
    assert '| distill_over_limit | lm | 1.020 | 1.00–1.10 | <= 1.05 (met) |' in text
    assert '| vs_pytorch | – | skipped |' in text
    bad = _report(distill_over_limit=_record())
    del bad['comparisons']['distill_over_limit']['results']['lm']['timings']['distill_step'][
        'times_s']
    with pytest.raises(report.SchemaError, match='times_s'):
        report.validate(bad)
    with pytest.raises(report.SchemaError, match='load_average_after'):
        report.validate({k: v for k, v in good.items() if k != 'load_average_after'})
    with pytest.raises(report.SchemaError, match='no reason'):
        report.validate(_report(vs_pytorch={'status': 'skipped'}))


def test_pytorch_absent_gives_a_skipped_record(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, 'find_spec',
                        lambda name, *a: None if name == 'torch' else real(name, *a))
    record = comparisons.vs_pytorch(quick=True, repeats=1)
    assert record['status'] == 'skipped' and 'torch is not installed' in record['reason']
    report.validate(_report(vs_pytorch=record))


def test_each_worker_gets_its_device_count():
    assert run._worker_env('scaling_8dev')['XLA_FLAGS'] == (
        '--xla_force_host_platform_device_count=8')
    assert run._worker_env('vs_naive_jax')['XLA_FLAGS'] == ''


@pytest.mark.skipif(importlib.util.find_spec('torch') is None, reason='torch not installed')
def test_pytorch_models_have_the_jax_models_parameter_counts():
    from benchmarks import torch_peer
    from jaxdistill.train import count_params

    for pair in (pairs.image_pair(2), pairs.lm_pair(2, 8, teacher_cfg=TINY_DECODER,
                                                    student_cfg=TINY_DECODER)):
        teacher, student = torch_peer.models(pair)
        x = pairs.sample_inputs(pair)
        assert torch_peer.count_params(teacher) == count_params(pairs.init_teacher(pair)['params'])
        assert torch_peer.count_params(student) == count_params(
            pair.student.init(jax.random.key(0), x)[0])


def test_input_pipeline_producer_record_and_the_old_shift():
    from benchmarks import input_pipeline
    from jaxdistill.data import pipeline

    rng = np.random.default_rng(0)
    images = rng.random((6, 8, 8, 2), dtype=np.float32)
    offsets, flips = pipeline.shift_params(1, np.arange(6), (8, 8), True)
    np.testing.assert_array_equal(input_pipeline._shift_before(images, offsets, flips),
                                  pipeline._shift(images, offsets, flips))
    record = input_pipeline.producer(repeats=1, calls=1)
    assert set(record) == {'digits', 'cifar_shapes'}
    for r in record.values():
        assert set(r['us_per_batch']) == {'make_batch', 'hash', 'place', 'to_global', 'shift',
                                          'shift_before'}
        assert all(v > 0 for v in r['us_per_batch'].values())
