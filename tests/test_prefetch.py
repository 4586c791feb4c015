"""jaxdistill/data/prefetch.py and the training loop's input path: the batches a stage
consumes, made on a prefetch thread or inline by the loop, are the same."""

import shutil
import threading

import jax
import numpy as np
import pytest

from jaxdistill import objective, provenance, run, train
from jaxdistill.data import loader, prefetch
from tests.helpers import load_config


def made_on(log):
    def make(step):
        log.append((step, threading.current_thread()))
        if step == 5:
            raise ValueError('bad record at step 5')
        return step * 10
    return make


@pytest.mark.parametrize('kind', ['thread', 'inline'])
def test_feeds_yield_each_step_once_in_order_and_raise_at_the_step(kind):
    log = []
    feed = (prefetch.prefetch(made_on(log), 2, 8) if kind == 'thread'
            else prefetch.Inline(made_on(log), 2, 8))
    got = []
    with feed:
        for _ in range(3):
            got.append(next(feed))
            feed.advance()
            feed.advance()  # a second call before next() makes nothing more
        with pytest.raises(ValueError, match='step 5'):  # at step 5, not when it was made
            next(feed)
    assert got == [20, 30, 40]
    assert sorted(s for s, _ in log) == list(range(2, 2 + len(log)))  # each made once
    threads = {t for _, t in log}
    assert (threads == {threading.current_thread()}) == (kind == 'inline')


@pytest.mark.parametrize('block', [1, 3, 4])
def test_prefetch_in_blocks_yields_each_step_once_and_raises_at_the_step(block):
    """``block`` steps made per hand-off (the thread at most ``depth`` blocks ahead of
    the one being read); the batches and the error's step are as with one at a time."""
    log = []
    with prefetch.prefetch(made_on(log), 2, 5, block=block) as feed:  # no step 5: no error
        assert list(feed) == [20, 30, 40]
    log.clear()
    feed = prefetch.prefetch(made_on(log), 1, 9, depth=1, block=block)
    with feed:
        assert [next(feed) for _ in range(4)] == [10, 20, 30, 40]
        feed.advance()
        with pytest.raises(ValueError, match='step 5'):
            next(feed)
    made = sorted(s for s, _ in log)
    assert made == list(range(1, 1 + len(made))) and 5 in made  # each once, none after 5
    assert max(made) <= 5 and all(t is not threading.current_thread() for _, t in log)


def test_inline_without_advance_and_at_the_end():
    feed = prefetch.Inline(lambda s: s, 0, 2)
    assert list(feed) == [0, 1]  # next() makes the batch when advance() was not called
    feed = prefetch.Inline(lambda s: s, 0, 1)
    assert next(feed) == 0
    feed.advance()  # past the end: nothing
    with pytest.raises(StopIteration):
        next(feed)


def test_prefetch_close_stops_its_thread():
    started = threading.Event()
    feed = prefetch.prefetch(lambda s: started.set() or s, 0, 100)
    assert next(feed) == 0 and started.wait(5)
    feed.close()
    assert not any(t.name.startswith('jaxdistill-prefetch') and t.is_alive()
                   for t in threading.enumerate())


@pytest.fixture(scope='module')
def plan(data_dir):
    c = load_config('digits.py', 'smoke')
    c.data.data_dir = data_dir
    c.train.update(steps=12, checkpoint_every=5, log_every=4)
    return c, run.plan(c, '/nonexistent/unused', devices=jax.devices()[:1])


def test_inline_and_thread_feeds_train_the_same_bits(plan, tmp_path, monkeypatch, capsys):
    """The digits shift is a `loader.WholeBatches`: made inline by the loop
    (``_Loop.inline=True``) or on the prefetch thread (the default), the run is the same
    bit for bit, and so is a run resumed from a checkpoint with the other feed."""
    c, p = plan
    batches = p.task.train_batches(0)
    assert loader.runs_inline(batches, 'threads') and not loader.runs_inline(batches,
                                                                              'processes')

    def stage(directory):
        return train.Stage('baseline', str(directory), p.student, objective.label_only(), 12, 0,
                           p.task.train_batches(0), prepare=p.task.prepare_fn())

    def digest(result):
        return (provenance.params_sha256(result.model['params']),
                result.meta['data']['digest'])

    monkeypatch.setattr(train._Loop, 'inline', True)
    inline = train.run_stage(stage(tmp_path / 'inline'), c, p.mesh, p.sample)
    monkeypatch.setattr(train._Loop, 'inline', False)
    thread = train.run_stage(stage(tmp_path / 'thread'), c, p.mesh, p.sample)
    assert digest(inline) == digest(thread)
    rows = [h for h in inline.meta['history'] if 'train/input_wait_share' in h]
    assert rows and all(0 <= h['train/input_wait_share'] <= 1
                        and 0 < h['train/input_work_share'] <= 1 for h in rows)
    shutil.copytree(tmp_path / 'thread', tmp_path / 'resumed',
                    ignore=shutil.ignore_patterns('12'))  # resume from step 10
    monkeypatch.setattr(train._Loop, 'inline', True)
    resumed = train.run_stage(stage(tmp_path / 'resumed'), c, p.mesh, p.sample)
    assert 'resuming from step 10' in capsys.readouterr().out
    assert digest(resumed) == digest(inline)
    np.testing.assert_equal(jax.device_get(resumed.model), jax.device_get(inline.model))
