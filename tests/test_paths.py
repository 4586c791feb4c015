"""Workdirs in buckets and behind file:// URIs (jaxdistill/runtime/paths.py).

``gs://`` is exercised through etils.epath's own test double (`epath.testing.mock_epath`)
with every ``gs://bucket/...`` path mapped onto a local directory, the way a bucket
behaves: no directories to create, whole objects written at once. Orbax's array writes go
through TensorStore rather than epath, so a whole run in a fake bucket is not possible
here; everything jaxdistill itself writes is.
"""

import json
import os

import numpy as np
import pytest
from etils import epath

from jaxdistill import report, run
from jaxdistill.errors import ConfigError
from jaxdistill.runtime import paths
from jaxdistill.signals import store
from jaxdistill.train import metrics
from tests.helpers import load_config


@pytest.fixture
def bucket(tmp_path, monkeypatch):
    """``gs://bucket/...`` lives in ``tmp_path/bucket``; gcsfs counts as installed."""
    root = tmp_path / 'gcs'
    root.mkdir()

    def local(path):
        text = os.fspath(path)
        return str(root / text[len('gs://'):]) if text.startswith('gs://') else text

    def one(fn, path, *args, **kwargs):
        return fn(local(path), *args, **kwargs)

    def two(fn, path, dst, *args, **kwargs):
        return fn(local(path), local(dst), *args, **kwargs)

    def open_(fn, path, mode, *args, **kwargs):
        if any(m in mode for m in 'wa') and os.fspath(path).startswith('gs://'):
            os.makedirs(os.path.dirname(local(path)), exist_ok=True)  # objects need no dirs
        return fn(local(path), mode, *args, **kwargs)

    monkeypatch.setattr(paths, 'backend_installed', lambda scheme: True)
    with epath.testing.mock_epath(
            open=open_, exists=one, isdir=one, listdir=one, glob=one, makedirs=one, mkdir=one,
            remove=one, rmtree=one, stat=one, walk=one, rename=two, replace=two, copy=two):
        yield root


def test_resolve():
    assert paths.resolve('gs://b/run/') == 'gs://b/run'
    assert paths.resolve('file:///tmp/x/run') == '/tmp/x/run'
    assert paths.resolve('~/run') == os.path.expanduser('~/run')
    assert paths.resolve('rel') == os.path.abspath('rel')
    assert paths.join('gs://b/run', 'student') == 'gs://b/run/student'
    with pytest.raises(ConfigError, match=r'^ftp://h/x: ftp:// is not a supported location'):
        paths.resolve('ftp://h/x')


def test_gs_without_the_gcs_extra_is_one_line(monkeypatch):
    monkeypatch.setattr(paths.importlib.util, 'find_spec', lambda name: None)
    with pytest.raises(ConfigError) as e:
        run.check_workdir('gs://bucket/run', load_config('digits.py', 'smoke'))
    assert str(e.value) == ('--workdir=\'gs://bucket/run\': gs:// needs gcsfs, which is not '
                            'installed: pip install "jaxdistill[gcs]"')


def test_check_workdir_in_a_bucket(bucket):
    config = load_config('digits.py', 'smoke')
    assert run.check_workdir('gs://bucket/run/', config) == 'gs://bucket/run'
    assert not list((bucket / 'bucket' / 'run').glob('.jaxdistill-probe-*'))  # probe removed
    report.write_json('gs://bucket/run/config.json', json.loads(config.to_json()))
    assert json.loads((bucket / 'bucket/run/config.json').read_text())['seed'] == 0
    assert run.check_workdir('gs://bucket/run', config) == 'gs://bucket/run'  # same: resume
    config.seed = 3
    with pytest.raises(ConfigError, match=r'holds a run with a different config \(seed: 0 -> 3'):
        run.check_workdir('gs://bucket/run', config)


def test_reports_and_metrics_in_a_bucket(bucket):
    report.write_atomic('gs://bucket/run/report.md', '| a |\n')
    assert report.plot_curves({'student': [{'step': 1, 'loss': 1.0}, {'step': 2, 'loss': 0.5}]},
                              'gs://bucket/run/learning_curves.png')
    assert (bucket / 'bucket/run/report.md').read_text() == '| a |\n'
    assert (bucket / 'bucket/run/learning_curves.png').read_bytes()[:4] == b'\x89PNG'
    assert not [p for p in (bucket / 'bucket/run').iterdir() if '.tmp' in p.name]
    for steps in ((1, 2), (3,)):  # a resumed stage appends to the same metrics.jsonl
        writer = metrics.MetricWriter('gs://bucket/run/student_metrics')
        for s in steps:
            writer.write(s, {'loss': 1.0 / s})
        writer.close()
    lines = (bucket / 'bucket/run/student_metrics/metrics.jsonl').read_text().splitlines()
    assert [json.loads(x)['step'] for x in lines] == [1, 2, 3]
    events = list((bucket / 'bucket/run/student_metrics/events').iterdir())
    assert events and all(e.name.startswith('events.out.tfevents') for e in events)
    assert all(e.stat().st_size > 0 for e in events)
    assert not (bucket.parent / 'gs:').exists()  # nothing went to a local ./gs:/ directory


def test_teacher_cache_store_in_a_bucket(bucket):
    rows = {'a': np.arange(12, dtype=np.int32).reshape(4, 3), 'b': np.ones((4,), np.float16)}
    spec = store.write('gs://bucket/run/teacher_cache', {'data': 'x'}, [rows])
    assert spec['rows'] == 4 and store.exists('gs://bucket/run/teacher_cache')
    assert sorted(p.name for p in (bucket / 'bucket/run/teacher_cache').iterdir()) == [
        store.RECORDS, store.SPEC]
    back = store.read('gs://bucket/run/teacher_cache', {'data': 'x'}, 'distill.cache.path')
    np.testing.assert_array_equal(back['a'], rows['a'])
    np.testing.assert_array_equal(back['b'], rows['b'])


def test_file_uri_workdir_is_the_local_directory(tmp_path):
    config = load_config('digits.py', 'smoke')
    workdir = run.check_workdir(f'file://{tmp_path}/run', config)
    assert workdir == str(tmp_path / 'run')
    paths.makedirs(f'file://{workdir}')
    report.write_json(paths.join(f'file://{workdir}', 'config.json'), {'seed': 0})
    assert json.loads((tmp_path / 'run' / 'config.json').read_text()) == {'seed': 0}
    assert not os.path.exists('file:')


@pytest.mark.slow
def test_a_whole_run_in_a_file_uri_workdir(tmp_path, data_dir):
    config = load_config('digits.py', 'smoke')
    config.data.data_dir = data_dir
    config.teacher.steps = config.train.steps = 10
    config.train.checkpoint_every = config.train.eval_every = 10
    config.train.baseline = False
    results = run.train_and_evaluate(config, f'file://{tmp_path}/run')
    workdir = tmp_path / 'run'
    assert results['provenance']['teacher_checkpoint'] == str(workdir / 'teacher')
    for name in ('config.json', 'results.json', 'report.md', 'learning_curves.png',
                 'teacher/10', 'student/10', 'student_metrics/metrics.jsonl'):
        assert (workdir / name).exists(), name
    assert not os.path.exists('file:')
