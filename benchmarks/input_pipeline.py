"""Input pipeline throughput and the step's wait for input.

1. ``producer``: microseconds per batch of what the training loop's prefetch thread does
   for the digits (64x8x8x1, ``crop``) and CIFAR (32x32x32x3, ``flip_crop``) shapes, alone:
   make the batch, hash it, place it on the device; the batched shift against its
   previous form (np.pad + broadcast fancy index) and the placement against
   ``mesh.to_global`` (device_put), interleaved.
2. ``augment``: images/s of the ImageNet-style augmentation (``inception_crop`` to 224,
   random-resized crop + flip + bilinear resize, per example: jaxdistill/data/loader.py)
   on decoded 320x256 images, run by 1, 2 and N worker threads and 1, 2 worker processes
   (``data.workers_kind``, `loader.iterate`), in steady state (start-up and spawn timed
   apart), interleaved round by round so load drifts hit every setting alike.
3. ``input_wait``: the share of each log interval the training loop spent waiting for
   its next batch (``train/input_wait_share``, jaxdistill/train/telemetry.py), over the
   student stage of real CLI runs: the digits job (8x8, ``crop``) and the CIFAR-10
   recipe's shapes (32x32x3, ``flip_crop`` + mixup, its smoke-size ResNets) on random
   images of that shape (`cifar_like`: there is no network to fetch CIFAR-10 here), with
   the load average at the end of each run.

4. ``device_idle``: what the wait costs the device, measured directly: steps/s of the
   digits student stage (`train.run_stage`, as the CLI runs it) fed by its real pipeline
   against the same loop fed one constant batch already on the device, in one process,
   interleaved round by round; ``idle share = 1 - pipeline / constant`` (the time per step
   the real input adds, as a share of the step). Two pipelines: the batch made inline by
   the loop and on the prefetch thread (the default; `train._Loop.inline`). A fourth feed,
   ``placed``, makes and places every real batch of the stage before its clock starts, so
   ``placed`` vs ``constant`` is what different batches cost the step by themselves; a fifth,
   ``placed_thread``, hands those ready batches over through the prefetch thread: what the
   hand-off costs with no input work, and ``thread`` vs ``placed_thread`` what making the
   batches while the step runs costs. Each feed's process CPU time per step is reported
   too (every thread's, from the end of the first step to the last checkpoint).
   Each also reports ``train/input_wait_share``, the constant batch's being the floor of
   that figure (time in ``next()`` with no input work at all).

    python -m benchmarks.input_pipeline [--rounds 3]
        [--parts producer,augment,input_wait,device_idle]
        [--workers threads:1,threads:2,threads:4,processes:1,processes:2]
        [--out benchmarks/input_pipeline.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

import numpy as np

from benchmarks.harness import finish_record, load_average, machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class _Records:
    num_classes = 10

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> dict[str, Any]:
        return {'image': self.images[i], 'label': int(self.labels[i])}


def cifar_like():
    """``data.source``: (train, test) of random uint8 32x32x3 images, 10 classes."""
    rng = np.random.default_rng(0)
    make = lambda n: _Records(rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
                              rng.integers(0, 10, n))
    return make(5000), make(500)


def _iterate_times(ds, start: int, count: int, workers: int, kind: str) -> list[float]:
    """Arrival time of each of ``count`` batches, from the iterator's creation."""
    from jaxdistill.data import loader

    t0, times = time.perf_counter(), []
    for _ in loader.iterate(ds, start, start + count, workers, kind):
        times.append(time.perf_counter() - t0)
    return times


def augment_rate(settings: list[tuple[str, int]], rounds: int, batches: int = 16,
                 batch: int = 32) -> dict[str, Any]:
    """Images/s of ``inception_crop`` per (workers kind, count), in steady state: the rate
    over batches ``batches // 3`` onwards (worker start-up, and for processes the spawn,
    excluded; recorded as ``first_batch_s``). Settings interleave round by round."""
    from jaxdistill.data import pipeline

    rng = np.random.default_rng(0)
    source = pipeline.ArraySource({'image': rng.random((128, 256, 320, 3), dtype=np.float32),
                                   'label': np.zeros(128, np.int32)})
    ds = pipeline.train_dataset(source, global_batch=batch, seed=0, augment='inception_crop',
                                image_size=224)
    skip = batches // 3
    rates: dict[str, list[float]] = {f'{k}:{w}': [] for k, w in settings}
    first: dict[str, list[float]] = {name: [] for name in rates}
    step = 0
    for _ in range(rounds):
        for kind, w in settings:
            times = _iterate_times(ds, step, batches, w, kind)
            step += batches
            rates[f'{kind}:{w}'].append(batch * (batches - skip) / (times[-1] - times[skip - 1]))
            first[f'{kind}:{w}'].append(times[0])
    rate = {name: statistics.median(r) for name, r in rates.items()}
    base = rate[f'{settings[0][0]}:{settings[0][1]}']
    return {'images_per_second': rate, 'speedup_over_first': {n: r / base for n, r in rate.items()},
            'rounds_images_per_second': rates, 'first_batch_s': first,
            'image': [256, 320, 3], 'crop_to': 224, 'batch': batch, 'batches': batches,
            'timed_from_batch': skip}


def _shift_before(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """The batched shift as it was before the sliding-window gather (np.pad and a
    broadcast fancy index), kept here to measure the two side by side."""
    spatial = images.shape[1:-1]
    pad = max(1, spatial[0] // 8)
    if flips.any():
        images = images.copy()
        images[flips] = np.flip(images[flips], axis=-2)
    padded = np.pad(images, ((0, 0),) + ((pad, pad),) * len(spatial) + ((0, 0),))
    ones = (1,) * len(spatial)
    index = [np.arange(len(images)).reshape((-1,) + ones)]
    for axis, size in enumerate(spatial):
        shape = list(ones)
        shape[axis] = size
        index.append(offsets[:, axis].reshape((-1,) + ones) + np.arange(size).reshape(shape))
    return np.ascontiguousarray(padded[tuple(index)])


SHAPES = {'digits': ((8, 8, 1), 64, 'crop', 1437),
          'cifar_shapes': ((32, 32, 3), 32, 'flip_crop', 5000)}


def producer(repeats: int = 7, calls: int = 200) -> dict[str, Any]:
    """Time per batch of what the training loop's prefetch thread does, alone (no step
    running): make the batch (`train_dataset` through `loader.iterate`, 10 % of rows
    labelled as in the digits job), hash it, place it on the device
    (``mesh.batch_placer``; ``mesh.to_global`` beside it); and the shift before/after the
    strided-window gather. Microseconds, median of ``repeats``
    interleaved repeats of ``calls`` calls each."""
    import jax

    from jaxdistill.runtime import mesh as mesh_lib

    mesh = mesh_lib.make_mesh(dict(data=1, fsdp=1, tensor=1), jax.devices()[:1])
    return {name: _producer_one(mesh, *spec, repeats=repeats, calls=calls)
            for name, spec in SHAPES.items()}


def _producer_one(mesh, shape: tuple[int, ...], batch: int, augment: str, n: int, *,
                  repeats: int, calls: int) -> dict[str, Any]:
    from benchmarks.harness import time_interleaved
    from jaxdistill import provenance
    from jaxdistill.data import loader, pipeline
    from jaxdistill.runtime import mesh as mesh_lib

    rng = np.random.default_rng(0)
    source = pipeline.ArraySource({'image': rng.random((n, *shape), dtype=np.float32),
                                   'label': rng.integers(0, 10, n).astype(np.int32)})
    ds = pipeline.train_dataset(source, global_batch=batch, seed=0, augment=augment,
                                labelled=pipeline.labelled_subset(n, 0.1, 0))
    batches, host = loader.iterate(ds, 0, 10**9), ds[0]  # as the loop's prefetch thread
    place = mesh_lib.batch_placer(mesh)
    offsets, flips = pipeline.shift_params(0, np.arange(batch), shape[:-1],
                                           augment == 'flip_crop')
    images = host['image']
    fns = {'make_batch': lambda: next(batches),
           'hash': lambda: provenance.batch_sha256(host, max_values=4096),
           'place': lambda: place(host),
           'to_global': lambda: mesh_lib.to_global(mesh, host),
           'shift': lambda: pipeline._shift(images, offsets, flips),
           'shift_before': lambda: _shift_before(images, offsets, flips)}
    timed = time_interleaved({k: (lambda f=f: [f() for _ in range(calls)])
                              for k, f in fns.items()}, repeats=repeats)
    per = {k: 1e6 * t.median_s / calls for k, t in timed.items()}
    return {'us_per_batch': per,
            'producer_us_per_batch': per['make_batch'] + per['hash'] + per['place'],
            'shift_speedup': per['shift_before'] / per['shift'],
            'batch': batch, 'image': list(shape), 'augment': augment}


JOBS = {
    'digits': ['--config=configs/digits.py', '--config.teacher.steps=60',
               '--config.train.steps=300', '--config.train.eval_every=0',
               '--config.train.checkpoint_every=300', '--config.train.log_every=50'],
    'cifar_shapes': ['--config=configs/cifar10_resnet.py:smoke',
                     '--config.data.source=benchmarks.input_pipeline:cifar_like',
                     '--config.data.batch_size=32', '--config.data.eval_batch_size=100',
                     '--config.teacher.steps=10', '--config.train.steps=60',
                     '--config.train.log_every=10', '--config.train.checkpoint_every=60'],
}


def input_wait(name: str, root: str) -> dict[str, Any]:
    workdir = os.path.join(root, name)
    env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
    proc = subprocess.run([sys.executable, '-m', 'jaxdistill.main', *JOBS[name],
                           f'--workdir={workdir}', '--config.train.baseline=False',
                           f'--config.data.data_dir={os.path.join(root, "tfds")}'],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    with open(os.path.join(workdir, 'student_metrics', 'metrics.jsonl')) as f:
        rows = [json.loads(line) for line in f]
    shares = [r['train/input_wait_share'] for r in rows if 'train/input_wait_share' in r]
    work = [r.get('train/input_work_share', 0.0) for r in rows if 'train/input_wait_share' in r]
    steps = [r['train/step_time'] for r in rows if 'train/step_time' in r]
    return {'input_wait_share_mean': statistics.mean(shares), 'input_wait_share_max': max(shares),
            'input_work_share_mean': statistics.mean(work),
            'step_time_s_median': statistics.median(steps), 'intervals': len(shares),
            'load': load_average(), 'args': JOBS[name]}


DEVICE_IDLE_FEEDS = ('inline', 'thread', 'constant', 'placed', 'placed_thread')


def device_idle(rounds: int, steps: int = 600) -> dict[str, Any]:
    """Steps/s and input wait share of the digits student stage per feed (see the module
    docstring), interleaved (the order rotated each round), with the teacher random."""
    import jax

    from benchmarks.stage_rate import digits_config
    from jaxdistill import run, train

    root = tempfile.mkdtemp(prefix='jaxdistill-idle-')
    config = digits_config()
    config.train.update(steps=steps, checkpoint_every=steps, eval_every=0, log_every=50)
    p = run.plan(config, f'{root}/plan')
    optimizer = train.make_optimizer(config.optimizer, steps)
    teacher = train.create_train_state(p.teacher, optimizer, jax.random.key(1), p.sample,
                                       p.mesh)[0].model
    real_fetch, inline, constant = train._Loop._fetch, train._Loop.inline, {}

    def constant_fetch(loop, step):
        if 'batch' not in constant:
            constant['batch'] = jax.block_until_ready(real_fetch(loop, step))
        return constant['batch']

    def placed_fetch(loop, step):
        if step == 0:  # the stage's first (compiling) step: its clock starts after it
            loop.placed = jax.block_until_ready(
                [real_fetch(loop, s) for s in range(loop.stage.steps)])
        return loop.placed[step]

    fetches = {'constant': constant_fetch, 'placed': placed_fetch,
               'placed_thread': placed_fetch}
    # the process's CPU time (every thread's) from the end of the first step to the final
    # checkpoint: what a step costs the CPU whatever else runs on the machine
    real_first, real_save, cpu = train._Loop._first_step, train._Loop._save, {}

    def first_step(loop, done, *args):
        cpu['t0'] = time.process_time()
        return real_first(loop, done, *args)

    def save(loop, done, *args):
        if done == loop.stage.steps:
            cpu['per_step'] = (time.process_time() - cpu['t0']) / (done - 1)
        return real_save(loop, done, *args)

    train._Loop._first_step, train._Loop._save = first_step, save
    out: dict[str, dict[str, list[float]]] = {
        f: {'steps_per_second': [], 'input_wait_share': [], 'input_work_share': [],
            'cpu_ms_per_step': []} for f in DEVICE_IDLE_FEEDS}
    try:
        for r in range(rounds):
            n = len(DEVICE_IDLE_FEEDS)
            for feed in DEVICE_IDLE_FEEDS[r % n:] + DEVICE_IDLE_FEEDS[:r % n]:
                train._Loop.inline = feed not in ('thread', 'placed_thread')
                train._Loop._fetch = fetches.get(feed, real_fetch)
                stage = train.Stage(
                    'student', f'{root}/{feed}{r}', p.student, p.objective, steps, config.seed,
                    p.task.train_batches(config.seed, 'transfer'), teacher=p.teacher,
                    teacher_model=teacher, teacher_shardings=jax.tree.map(
                        lambda x: x.sharding, teacher),
                    prepare=p.task.prepare_fn(config.data.mixup))
                meta = train.run_stage(stage, config, p.mesh, p.sample, is_main=False).meta
                rows = [h for h in meta['history'] if 'train/input_wait_share' in h]
                out[feed]['steps_per_second'].append(meta['steps_per_second'])
                out[feed]['cpu_ms_per_step'].append(1000 * cpu.pop('per_step'))
                for key in ('input_wait_share', 'input_work_share'):
                    out[feed][key].append(statistics.mean(h[f'train/{key}'] for h in rows))
                print(f'round {r} {feed:8s} {meta["steps_per_second"]:7.1f} steps/s, input '
                      f'wait {100 * out[feed]["input_wait_share"][-1]:.2f} %, made inline '
                      f'{100 * out[feed]["input_work_share"][-1]:.2f} %, CPU '
                      f'{out[feed]["cpu_ms_per_step"][-1]:.2f} ms/step', flush=True)
    finally:
        train._Loop.inline, train._Loop._fetch = inline, real_fetch
        train._Loop._first_step, train._Loop._save = real_first, real_save
    rate = {f: statistics.median(v['steps_per_second']) for f, v in out.items()}
    # paired per round: the load drifts between rounds, less within one
    idle = {f: statistics.median(1 - a / b for a, b in zip(
        out[f]['steps_per_second'], out['constant']['steps_per_second'], strict=True))
        for f in DEVICE_IDLE_FEEDS if f != 'constant'}
    cpu_ms = {f: statistics.median(v['cpu_ms_per_step']) for f, v in out.items()}
    return {'steps_per_second': rate, 'device_idle_share': idle, 'cpu_ms_per_step': cpu_ms,
            'input_cpu_share': {f: 1 - cpu_ms['constant'] / cpu_ms[f]
                                for f in DEVICE_IDLE_FEEDS if f != 'constant'},
            'input_wait_share': {f: statistics.median(v['input_wait_share'])
                                 for f, v in out.items()},
            'input_work_share': {f: statistics.median(v['input_work_share'])
                                 for f, v in out.items()},
            'rounds': out, 'steps': steps, 'config': 'configs/digits.py student stage, '
            'random teacher, eval off', 'load': load_average()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3)
    many = max(4, os.cpu_count() or 1)
    parser.add_argument('--workers', help='kind:count,... (threads or processes)',
                        default=f'threads:1,threads:2,threads:{many},processes:1,processes:2')
    parser.add_argument('--parts', default='producer,augment,input_wait,device_idle')
    parser.add_argument('--idle_steps', type=int, default=600)
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'input_pipeline.json'))
    a = parser.parse_args(argv)
    parts = a.parts.split(',')
    from jaxdistill.runtime import hostmem

    hostmem.ensure('auto')  # as the CLI runs: restarts this process once on a glibc CPU
    record: dict[str, Any] = {'benchmark': 'input pipeline', 'machine': machine_info(),
                              'load_before': load_average()}
    if 'producer' in parts:
        record['producer'] = producer()
        for name, r in record['producer'].items():
            print(f"{name}: producer {r['producer_us_per_batch']:.0f} us/batch "
                  f"({', '.join(f'{k} {v:.0f}' for k, v in r['us_per_batch'].items())})",
                  flush=True)
        record['load_after_producer'] = load_average()
    if 'augment' in parts:
        settings = [(k, int(w)) for k, w in (x.split(':') for x in a.workers.split(','))]
        record['augment'] = augment_rate(settings, a.rounds)
        print('inception_crop images/s by workers:',
              {w: round(r, 1) for w, r in record['augment']['images_per_second'].items()},
              flush=True)
        record['load_mid'] = load_average()
    if 'input_wait' in parts:
        with tempfile.TemporaryDirectory(prefix='jaxdistill-input-') as root:
            record['input_wait'] = {name: input_wait(name, root) for name in JOBS}
        for name, r in record['input_wait'].items():
            print(f"{name}: input wait {100 * r['input_wait_share_mean']:.2f} % of step time "
                  f"(made inline {100 * r['input_work_share_mean']:.2f} %) "
                  f"(max {100 * r['input_wait_share_max']:.2f} %), step "
                  f"{1000 * r['step_time_s_median']:.1f} ms, load {r['load']}", flush=True)
    if 'device_idle' in parts:
        record['device_idle'] = r = device_idle(a.rounds, a.idle_steps)
        print('digits student, device idle share (1 - steps/s / constant batch\'s): ' +
              ', '.join(f'{f} {100 * v:.2f} %' for f, v in r['device_idle_share'].items()) +
              '; input wait share: ' + ', '.join(
                  f'{f} {100 * v:.2f} %' for f, v in r['input_wait_share'].items()) +
              '; CPU ms/step: ' + ', '.join(
                  f'{f} {v:.2f}' for f, v in r['cpu_ms_per_step'].items()), flush=True)
    finish_record(record, a.out)


if __name__ == '__main__':
    main()
