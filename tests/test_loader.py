"""jaxdistill/data/loader.py: the per-example Grain pipeline and its worker threads."""

import threading

import grain
import numpy as np
import pytest

from jaxdistill.data import loader, pipeline
from jaxdistill.errors import ConfigError

SEED, BATCH = 3, 8


@pytest.fixture(scope='module')
def images():
    rng = np.random.default_rng(0)
    n = 21  # not a multiple of the batch: batches straddle epochs
    return pipeline.ArraySource({
        'image': rng.random((n, 20, 24, 3), dtype=np.float32),
        'label': rng.integers(0, 5, n).astype(np.int32)})


def reference(source, step, augment, size, process=0, count=1, labelled=None):
    """Batch ``step`` computed row by row, straight from the definitions."""
    ids = pipeline.EpochOrder(len(source), BATCH, SEED)[step]
    local = BATCH // count
    rows = []
    for j in range(process * local, (process + 1) * local):
        example = source[int(ids[j])]
        row = step * BATCH + j
        if augment == 'inception_crop':
            example = pipeline._inception_crop(example, np.random.default_rng([SEED, row]), size)
        else:
            example = pipeline.center_crop(example, size)
        if labelled is not None:
            example = {**example, 'labelled': np.isin(ids[j], labelled)}
        rows.append(example)
    return {k: np.stack([r[k] for r in rows]) for k in rows[0]}


def assert_equal(a, b):
    assert sorted(a) == sorted(b)
    for k in a:
        assert a[k].dtype == b[k].dtype, k
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)


@pytest.mark.parametrize('augment', ['inception_crop', ''])
def test_per_example_batches_match_the_definition(images, augment):
    labelled = np.array([0, 4, 7, 20])
    ds = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment=augment,
                                image_size=16, labelled=labelled)
    for step in (0, 2, 5):
        assert_equal(ds[step], reference(images, step, augment, 16, labelled=labelled))
    assert ds[0]['image'].shape == (BATCH, 16, 16, 3)


def test_workers_give_the_same_batches_and_resume_anywhere(images):
    ds = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='inception_crop',
                                image_size=16)
    one = list(loader.iterate(ds, 0, 9, workers=1))
    for workers in (2, 4):
        for a, b in zip(one, loader.iterate(ds, 0, 9, workers=workers), strict=True):
            assert_equal(a, b)
    for a, b in zip(one[4:], loader.iterate(ds, 4, 9, workers=3), strict=True):
        assert_equal(a, b)  # a resumed stage reads what an uninterrupted one would


def test_each_process_reads_its_block(images):
    whole = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED,
                                   augment='inception_crop', image_size=16)[3]
    parts = [pipeline.train_dataset(images, global_batch=BATCH, seed=SEED,
                                    augment='inception_crop', image_size=16, process_index=p,
                                    process_count=2)[3] for p in range(2)]
    assert_equal(whole, {k: np.concatenate([p[k] for p in parts]) for k in whole})


def test_iterate_plain_sequences_and_workers():
    assert list(loader.iterate([10, 11, 12, 13], 1, 3, workers=4)) == [11, 12]
    assert loader.resolve_workers(3) == 3 and 1 <= loader.resolve_workers(0) <= 8
    with pytest.raises(ConfigError, match=r'^data.workers=-1 must be >= 0'):
        loader.resolve_workers(-1)
    with pytest.raises(ConfigError, match=r"^data.workers_kind='forks' must be one of "
                                          r"\('threads', 'processes'\)"):
        loader.iterate(pipeline.train_dataset(pipeline.ArraySource({
            'image': np.zeros((4, 8, 8, 1), np.float32), 'label': np.zeros(4, np.int32)}),
            global_batch=2, seed=0, augment='inception_crop', image_size=4), 0, 3, 2, 'forks')


def test_whole_batch_datasets_skip_the_threads(images, monkeypatch):
    """A shift is made on the calling thread (more threads only contend for the GIL), the
    same batches as indexing the dataset; an image-by-image pipeline goes to the threads."""
    made_on = []
    real = pipeline._shift
    monkeypatch.setattr(pipeline, '_shift', lambda *a: made_on.append(
        threading.current_thread()) or real(*a))
    shifted = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='flip_crop',
                                     labelled=np.array([2, 3]))
    for step, batch in enumerate(loader.iterate(shifted, 2, 6, workers=4), start=2):
        assert_equal(batch, shifted[step])
    assert made_on and set(made_on) == {threading.current_thread()}
    per_example = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED,
                                         augment='inception_crop', image_size=16)
    made_on.clear()
    monkeypatch.setattr(pipeline, '_inception_crop', lambda *a: made_on.append(
        threading.current_thread()) or {**a[0], 'image': np.zeros((16, 16, 3), np.float32)})
    list(loader.iterate(per_example, 0, 3, workers=2))
    assert len(made_on) == 3 * BATCH and threading.current_thread() not in made_on


def test_whole_batches_are_explicit_and_processes_get_their_grain_dataset(images, monkeypatch):
    shifted = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='crop')
    per_example = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED,
                                         augment='inception_crop', image_size=16)
    assert isinstance(shifted, loader.WholeBatches)
    assert not isinstance(per_example, loader.WholeBatches)
    assert loader.runs_inline(shifted, 'threads')
    assert not loader.runs_inline(shifted, 'processes')
    assert not loader.runs_inline(per_example, 'threads')
    assert_equal(shifted.dataset[4], shifted[4])  # the same batches, for worker processes
    given = []
    monkeypatch.setattr(loader, '_processes',
                        lambda ds, workers, count: given.append((ds, count)) or iter(()))
    loader.iterate(shifted, 2, 6, workers=2, kind='processes')
    (ds, count), = given
    assert count == 4 and isinstance(ds, grain.MapDataset)
    assert_equal(ds[0], shifted[2])  # batches[start:] of the Grain dataset


def test_worker_kind_default_and_check():
    import ml_collections

    assert loader.worker_kind(ml_collections.ConfigDict({'workers': 0})) == 'threads'
    assert loader.worker_kind(ml_collections.ConfigDict({'workers_kind': 'processes'})) == \
        'processes'
    with pytest.raises(ConfigError, match=r"^data.workers_kind='forks' must be one of"):
        loader.worker_kind(ml_collections.ConfigDict({'workers_kind': 'forks'}))


def test_worker_processes_give_the_threads_batches(images):
    """``data.workers_kind='processes'``: spawned workers, each its slice of the batches,
    interleaved back in order; the same batches as threads, also from a resumed step."""
    ds = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='inception_crop',
                                image_size=16, labelled=np.array([1, 6]))
    threads = list(loader.iterate(ds, 3, 8, workers=2))
    processes = list(loader.iterate(ds, 3, 8, workers=2, kind='processes'))
    assert len(processes) == 5
    for a, b in zip(threads, processes, strict=True):
        assert_equal(a, b)


def _sleep_then_exit(seconds, status):
    import os
    import time
    time.sleep(seconds)
    os._exit(status)


@pytest.mark.parametrize('how,want', [
    ('kill', r'^data worker process \d+ exited with signal SIGKILL \(the out-of-memory killer '
             r"sends it\) while making training batches; lower data.workers .* or use "
             r"data.workers_kind='threads'$"),
    ('status 0', r'^data worker process \d+ exited with status 0 while making training '
                 r'batches; lower data.workers')])
def test_worker_watch_names_an_exited_worker(how, want):
    """A worker that exits, whatever its status (Grain waits forever on status 0), is a
    one-line DataError; one still running is not, nor are processes that are not Grain's."""
    import multiprocessing
    import os
    import signal

    from jaxdistill.errors import DataError

    ctx = multiprocessing.get_context('fork')  # fast: the watch only looks at names and pids
    other = ctx.Process(target=_sleep_then_exit, args=(0, 0), name='not-a-data-worker')
    watch = loader.WorkerWatch()
    worker = ctx.Process(target=_sleep_then_exit, args=(60 if how == 'kill' else 0.2, 0),
                         name=f'{loader.WorkerWatch.PREFIX}-test', daemon=True)
    other.start()
    worker.start()
    try:
        watch.scan()
        assert watch.seen == [worker]
        if how == 'kill':
            watch.check()  # alive: nothing to say
            os.kill(worker.pid, signal.SIGKILL)
        worker.join(10)
        other.join(10)
        with pytest.raises(DataError, match=want):
            watch.check()
    finally:
        if worker.is_alive():
            worker.kill()


def test_grains_own_report_of_a_dead_worker_becomes_a_data_error():
    error = RuntimeError('Worker process was terminated unexpectedly with exit code -11. '
                         'Search the logs above for the source of the crash.')
    assert str(loader._worker_error(error)).startswith(
        'a data worker process exited with signal SIGSEGV while making training batches')
    assert loader._worker_error(ValueError('bad record')) is None


@pytest.mark.slow
def test_a_killed_worker_process_ends_the_loop_with_a_data_error(images):
    """A Grain worker killed mid-run: the next batches raise a one-line DataError naming
    it, within a bounded time (spawning the workers takes seconds: slow)."""
    import multiprocessing
    import os
    import signal
    import time

    from jaxdistill.errors import DataError

    ds = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='inception_crop',
                                image_size=16)
    it = loader.iterate(ds, 0, 10**6, workers=2, kind='processes')
    for _ in range(20):  # Grain spawns its workers as it needs their first batches
        next(it)
        workers = [p for p in multiprocessing.active_children()
                   if p.name.startswith(loader.WorkerWatch.PREFIX)]
        if len(workers) == 2:
            break
    assert len(workers) == 2
    os.kill(workers[1].pid, signal.SIGKILL)
    t = time.perf_counter()
    with pytest.raises(DataError, match=r'^(data worker process \d+|a data worker process) '
                                        r'exited with signal SIGKILL'):
        for _ in range(10**6):
            next(it)
    assert time.perf_counter() - t < 30
    it.close()


@pytest.mark.parametrize('steps', [1, 3, 16])
def test_whole_batches_made_a_block_at_a_time_equal_batch_by_batch(images, monkeypatch, steps):
    """`loader.BlockCache`: blocks of ``steps`` batches made together (one shift over their
    rows), read from any start (a resume mid-block) and out of order, equal the Grain
    dataset's batches made one at a time, bit for bit; blocks stay near BLOCK_BYTES."""
    monkeypatch.setattr(loader, 'BLOCK_STEPS', steps)
    shifted = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='flip_crop',
                                     labelled=np.array([2, 3, 11]))
    assert isinstance(shifted.make, loader.BlockCache) and shifted.make.steps == steps
    assert loader.feed_block(shifted, 'threads') == steps
    assert loader.feed_block(shifted, 'processes') == 1
    for start in (0, 5):
        for step, batch in enumerate(loader.iterate(shifted, start, 40), start=start):
            assert_equal(batch, shifted.dataset[step])
    assert_equal(shifted[7], shifted.dataset[7])  # random access after the pass
    big = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='crop')
    monkeypatch.setattr(loader, 'BLOCK_BYTES', 3 * BATCH * 20 * 24 * 3 * 4)
    small = pipeline.train_dataset(images, global_batch=BATCH, seed=SEED, augment='crop')
    assert big.make.steps == min(steps, (1 << 20) // (BATCH * (20 * 24 * 3 * 4 + 4)))
    assert small.make.steps == min(steps, 2)  # a batch's label bytes tip it under 3
