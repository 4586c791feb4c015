"""Input pipeline throughput and the step's wait for input.

1. ``augment``: images/s of the ImageNet-style augmentation (``inception_crop`` to 224,
   random-resized crop + flip + bilinear resize, per example: jaxdistill/data/loader.py)
   on decoded 320x256 images, run by 1, 2 and N worker threads (`loader.iterate`),
   interleaved round by round so load drifts hit every setting alike.
2. ``input_wait``: the share of each log interval the training loop spent waiting for
   its next batch (``train/input_wait_share``, jaxdistill/train/telemetry.py), over the
   student stage of real CLI runs: the digits job (8x8, ``crop``) and the CIFAR-10
   recipe's shapes (32x32x3, ``flip_crop`` + mixup, its smoke-size ResNets) on random
   images of that shape (`cifar_like`: there is no network to fetch CIFAR-10 here).

    python -m benchmarks.input_pipeline [--rounds 3] [--out benchmarks/input_pipeline.json]
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


def augment_rate(workers: list[int], rounds: int, batches: int = 6,
                 batch: int = 32) -> dict[str, Any]:
    from jaxdistill.data import loader, pipeline

    rng = np.random.default_rng(0)
    source = pipeline.ArraySource({'image': rng.random((128, 256, 320, 3), dtype=np.float32),
                                   'label': np.zeros(128, np.int32)})
    ds = pipeline.train_dataset(source, global_batch=batch, seed=0, augment='inception_crop',
                                image_size=224)
    times: dict[int, list[float]] = {w: [] for w in workers}
    step = 0
    for _ in range(rounds):
        for w in workers:
            t = time.perf_counter()
            for _ in loader.iterate(ds, step, step + batches, w):
                pass
            times[w].append(time.perf_counter() - t)
            step += batches
    rate = {w: batch * batches / statistics.median(ts) for w, ts in times.items()}
    return {'images_per_second': {str(w): r for w, r in rate.items()},
            'speedup_over_1': {str(w): r / rate[workers[0]] for w, r in rate.items()},
            'seconds': {str(w): ts for w, ts in times.items()},
            'image': [256, 320, 3], 'crop_to': 224, 'batch': batch, 'batches': batches}


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
    steps = [r['train/step_time'] for r in rows if 'train/step_time' in r]
    return {'input_wait_share_mean': statistics.mean(shares), 'input_wait_share_max': max(shares),
            'step_time_s_median': statistics.median(steps), 'intervals': len(shares),
            'args': JOBS[name]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--workers', default=f'1,2,{max(4, os.cpu_count() or 1)}')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'input_pipeline.json'))
    a = parser.parse_args(argv)
    record: dict[str, Any] = {'benchmark': 'input pipeline', 'machine': machine_info(),
                              'load_before': load_average()}
    record['augment'] = augment_rate([int(w) for w in a.workers.split(',')], a.rounds)
    print('inception_crop images/s by workers:',
          {w: round(r, 1) for w, r in record['augment']['images_per_second'].items()},
          flush=True)
    record['load_mid'] = load_average()
    with tempfile.TemporaryDirectory(prefix='jaxdistill-input-') as root:
        record['input_wait'] = {name: input_wait(name, root) for name in JOBS}
    for name, r in record['input_wait'].items():
        print(f"{name}: input wait {100 * r['input_wait_share_mean']:.2f} % of step time "
              f"(max {100 * r['input_wait_share_max']:.2f} %), step "
              f"{1000 * r['step_time_s_median']:.1f} ms", flush=True)
    finish_record(record, a.out)


if __name__ == '__main__':
    main()
