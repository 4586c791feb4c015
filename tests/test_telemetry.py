"""Logs without a terminal, throughput scalars, MFU, hparams, W&B, profiling
(jaxdistill/train/metrics.py, jaxdistill/train/telemetry.py)."""

import io
import json
import struct
import sys
import types

import jax
import jax.numpy as jnp
import pytest

from jaxdistill import config as config_lib
from jaxdistill import run
from jaxdistill.errors import ConfigError
from jaxdistill.train import metrics, telemetry
from tests.helpers import load_config


class _Tty(io.StringIO):
    def isatty(self):
        return True


def test_without_a_terminal_one_line_per_log_step():
    out = io.StringIO()
    p = metrics.Progress('student', 30, stream=out)
    for step in (10, 20, 30):
        p.update(step, 1.0 / step)
    p.done('12.0 steps/s overall')
    lines = out.getvalue().splitlines()
    assert [line.split()[2] for line in lines] == ['10/30', '20/30', '30/30']
    assert lines[-1].endswith('12.0 steps/s overall') and 'ETA 0:00:00' in lines[-1]
    assert all(line.startswith('student   step ') for line in lines)


def test_on_a_terminal_the_line_stays_in_place():
    out = _Tty()
    p = metrics.Progress('student', 30, stream=out)
    for step in (10, 20, 30):
        p.update(step, 0.5)
    p.done()
    assert out.getvalue().count('\n') == 1 and out.getvalue().count('\r') == 4


def test_eta_is_hours_minutes_seconds():
    assert metrics.fmt_time(20 * 3600) == '20:00:00'
    assert metrics.fmt_time(3725.9) == '1:02:05'
    assert metrics.fmt_time(-3) == '0:00:00'


def test_peak_flops_table_and_override():
    assert telemetry.peak_flops('TPU v5 lite') == 197e12
    assert telemetry.peak_flops('TPU v5p') == 459e12  # the longest matching name
    assert telemetry.peak_flops('NVIDIA H100 80GB HBM3') == 989e12
    assert telemetry.peak_flops('cpu') is None
    assert telemetry.peak_flops('cpu', 2.5) == 2.5e12


def test_step_flops_is_xla_count_of_the_lowered_step():
    f = jax.jit(lambda a, b: a @ b)
    assert telemetry.step_flops(f, jnp.ones((64, 32)), jnp.ones((32, 16))) == 2 * 64 * 32 * 16


def test_throughput_scalars_are_consistent():
    t = telemetry.Throughput(128, 'tokens', flops_per_step=4e12, peak=2e12, devices=2)
    t.restart(10)
    with t.waiting():
        sum(range(100000))
    with t.paused():
        sum(range(100000))
    s = t.scalars(20)
    assert s['train/tokens_per_second'] == pytest.approx(128 / s['train/step_time'])
    assert 0 < s['train/input_wait_share'] <= 1
    assert s['train/mfu'] == pytest.approx(4e12 / s['train/step_time'] / 2 / 2e12)
    assert t.scalars(20) == {}  # no step in the new interval: nothing to report


def test_inline_input_work_counts_as_wait_only_when_the_device_waited():
    t = telemetry.Throughput(64)
    t.restart(0)
    t.add_input_work(0.002, device_waited=False)  # hidden behind the running step
    t.add_input_work(0.001, device_waited=True)  # the step was over: the device waited
    t._t0 -= 0.1  # a 0.1 s interval (no sleeping in tests)
    s = t.scalars(10)
    assert s['train/input_work_share'] == pytest.approx(0.003 / s['train/step_time'] / 10)
    assert s['train/input_wait_share'] == pytest.approx(0.001 / s['train/step_time'] / 10)
    t._t0 -= 0.1
    assert t.scalars(20)['train/input_work_share'] == 0  # restarted with the interval


@pytest.mark.parametrize('window,message', [
    ((5, 50), r"^train.profile_steps=\(5, 50\) is outside the run of 20 steps: give "
              r"0 <= start < stop <= 20"),
    ((8, 8), r'is outside the run'),
    ((3,), r'must be \(start, stop\)'),
])
def test_profile_window_outside_the_run_is_one_line(window, message):
    c = load_config('digits.py', 'smoke')
    c.train.profile_steps = window
    with pytest.raises(ConfigError, match=message):
        config_lib.validate(c)


def test_wandb_without_the_extra_is_one_line(monkeypatch):
    monkeypatch.setattr(config_lib.importlib.util, 'find_spec', lambda name: None)
    c = load_config('digits.py', 'smoke')
    c.train.wandb_project = 'kd'
    with pytest.raises(ConfigError, match=r'pip install "jaxdistill\[wandb\]"'):
        config_lib.validate(c)


@pytest.fixture
def fake_wandb(monkeypatch):
    calls = []

    class Run:
        def log(self, scalars, step):
            calls.append(('log', step, dict(scalars)))

        def finish(self):
            calls.append(('finish',))

    def init(**kwargs):
        calls.append(('init', kwargs))
        return Run()

    monkeypatch.setitem(sys.modules, 'wandb', types.SimpleNamespace(init=init))
    return calls


def _events(directory):
    """Every Event proto in the TensorBoard files of ``directory`` (TFRecord framing)."""
    from tensorboardX.proto import event_pb2

    out = []
    for path in sorted(directory.iterdir()):
        data = path.read_bytes()
        while data:
            (n,) = struct.unpack('Q', data[:8])
            event = event_pb2.Event()
            event.ParseFromString(data[12:12 + n])
            out.append(event)
            data = data[16 + n:]
    return out


def test_wandb_writer_and_hparams(tmp_path, fake_wandb):
    args = metrics.wandb_args('kd', str(tmp_path / 'run'), 'student')
    assert args == metrics.wandb_args('kd', str(tmp_path / 'run'), 'student')  # resumable id
    assert args['run_id'] != metrics.wandb_args('kd', str(tmp_path / 'run'), 'baseline')['run_id']
    w = metrics.MetricWriter(str(tmp_path / 'm'), hparams={'seed': 3, 'train': {'steps': 9},
                                                           'mesh': {'rules': [1, 2]}},
                             wandb=args)
    w.write(5, {'loss': 0.5})
    w.close()
    assert fake_wandb[0] == ('init', {'project': 'kd', 'name': 'run/student', 'group': 'run',
                                      'id': args['run_id'], 'resume': 'allow', 'reinit': True,
                                      'config': {'seed': 3, 'train.steps': 9,
                                                 'mesh.rules': '[1, 2]'}})
    assert fake_wandb[1:] == [('log', 5, {'loss': 0.5}), ('finish',)]
    tags = {v.tag for e in _events(tmp_path / 'm' / 'events') for v in e.summary.value}
    assert {'_hparams_/experiment', '_hparams_/session_start_info', 'loss'} <= tags


def test_a_run_logs_throughput_and_profiles(tmp_path, data_dir):
    c = load_config('digits.py', 'smoke')
    c.data.data_dir = data_dir
    c.teacher.steps = c.train.steps = 10
    c.train.checkpoint_every = c.train.eval_every = 10
    c.train.baseline = False
    c.train.profile_steps = (4, 6)
    c.train.peak_tflops = 1.0
    run.train_and_evaluate(c, str(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / 'student_metrics' / 'metrics.jsonl')
            .read_text().splitlines()]
    first = [r for r in rows if 'train/time_to_first_step' in r]
    assert len(first) == 1 and first[0]['step'] == 1 and first[0]['train/time_to_first_step'] > 0
    logged = [r for r in rows if 'loss' in r]
    assert [r['step'] for r in logged] == [5, 10]
    schedule = __import__('jaxdistill.train', fromlist=['x']).learning_rate_schedule(c.optimizer,
                                                                                    10)
    for r in logged:
        assert r['train/learning_rate'] == pytest.approx(float(schedule(r['step'] - 1)))
        assert r['train/examples_per_second'] == pytest.approx(32 / r['train/step_time'])
        assert 0 <= r['train/input_wait_share'] <= 1 and 0 < r['train/mfu'] < 1
    for stage in ('teacher', 'student'):
        traces = list((tmp_path / 'profile' / stage).rglob('*.xplane.pb'))
        assert traces, f'no profile for {stage}'
