"""Steps/s of the digits job's label-only baseline and distillation stages, for two input
pipelines side by side in one process (benchmarks/NOTES.md 14).

    python -m benchmarks.stage_rate                  # 600 steps a stage, 3 rounds
    python -m benchmarks.stage_rate --steps 200 --rounds 1 --out /tmp/stage_rate.json

``configs/digits.py`` as the README runs it (batch 64, crop + mixup, 144 labelled images
for the baseline, 1,437 for the student), with a randomly initialised teacher (its weights
do not change the cost of a step). Candidates:

* ``grain_shuffle``: the pipeline before NOTES 14, reconstructed here: Grain's
  ``MapDataset.shuffle`` index by index, then one numpy ``Generator`` and one ``np.pad``
  per row for the random shift;
* ``epoch_order``: ``jaxdistill.data.train_dataset`` (one permutation per epoch, the
  shift drawn and applied for the whole batch).

Each round trains every (pipeline, stage) pair for ``--steps`` steps with `train.run_stage`
(the order rotated each round) and records its ``steps_per_second`` as the CLI reports it
(after the first, compiling step; evaluation and checkpointing excluded). Before that, the
cost of fetching one batch alone is timed, interleaved. Writes JSON with the machine, the
load average before and after, and every raw figure.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import tempfile
import time
from typing import Any

import grain
import jax
import numpy as np

from benchmarks.harness import load_average, machine_info
from jaxdistill import data as data_lib
from jaxdistill import objective, run, train
from jaxdistill.runtime import hostmem

PIPELINES = ('grain_shuffle', 'epoch_order')
STAGES = ('baseline', 'student')


def digits_config(arg: str | None = None):
    spec = importlib.util.spec_from_file_location('configs_digits', 'configs/digits.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.get_config(arg)


def grain_shuffle_dataset(source, *, global_batch: int, seed: int,
                          labelled: np.ndarray | None = None) -> grain.MapDataset:
    """The training batches as jaxdistill made them before NOTES 14 (one process, 'crop')."""
    ids = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    ids = ids.batch(global_batch, drop_remainder=True)
    flags = None
    if labelled is not None:
        flags = np.zeros(len(source), bool)
        flags[labelled] = True

    def fetch(step: int, batch_ids) -> dict[str, np.ndarray]:
        batch_ids = np.asarray(batch_ids)
        arrays = source.take(batch_ids)
        images = []
        for j, image in enumerate(arrays['image']):
            rng = np.random.default_rng([seed, step * global_batch + j])
            h, w = image.shape[:2]
            pad = max(1, h // 8)
            padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
            y, x = rng.integers(0, 2 * pad + 1, size=2)
            images.append(np.ascontiguousarray(padded[y:y + h, x:x + w]))
        batch = {'image': np.stack(images), 'label': arrays['label']}
        if flags is not None:
            batch['labelled'] = flags[batch_ids]
        return batch

    return ids.map_with_index(fetch)


def _batches(p: run.Plan, name: str, stage: str):
    task, seed, batch = p.task, p.config.seed, p.config.data.batch_size
    if name == 'epoch_order':
        return task.train_batches(seed, 'labelled' if stage == 'baseline' else 'transfer')
    ids, train_split = task.labelled_ids(), task.splits.train
    if stage == 'baseline':
        return grain_shuffle_dataset(data_lib.subset(train_split, ids), global_batch=batch,
                                     seed=seed)
    return grain_shuffle_dataset(train_split, global_batch=batch, seed=seed, labelled=ids)


def time_fetch(p: run.Plan, batches: int) -> dict[str, Any]:
    """Milliseconds per batch of each (pipeline, stage), fetched alone, interleaved by 10s."""
    datasets = {(n, s): _batches(p, n, s) for n in PIPELINES for s in STAGES}
    times = {k: [] for k in datasets}
    for start in range(0, batches, 10):
        for key, ds in datasets.items():
            t = time.perf_counter()
            for step in range(start, start + 10):
                ds[step]
            times[key].append((time.perf_counter() - t) / 10 * 1e3)
    return {f'{n}/{s}': {'median_ms': statistics.median(v), 'ms': v}
            for (n, s), v in times.items()}


def _stage(p: run.Plan, name: str, stage: str, steps: int, teacher_vars, directory: str):
    student = stage == 'student'
    return train.Stage(
        stage, directory, p.student, p.objective if student else objective.label_only(),
        steps, p.config.seed, _batches(p, name, stage),
        teacher=p.teacher if student else None, teacher_model=teacher_vars if student else None,
        teacher_shardings=jax.tree.map(lambda x: x.sharding, teacher_vars),
        prepare=p.task.prepare_fn(p.config.data.mixup))


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--steps', type=int, default=600, help='steps per stage run')
    parser.add_argument('--rounds', type=int, default=3)
    parser.add_argument('--fetch_batches', type=int, default=200)
    parser.add_argument('--out', default='benchmarks/stage_rate.json')
    args = parser.parse_args(argv)
    hostmem.ensure('auto')  # as the CLI runs: restarts this process once on a glibc CPU
    load_before = load_average()
    root = tempfile.mkdtemp(prefix='stage_rate-')
    config = digits_config()
    config.train.steps = args.steps
    config.train.checkpoint_every = args.steps
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, args.steps - 1)
    p = run.plan(config, f'{root}/plan')
    optimizer = train.make_optimizer(config.optimizer, args.steps)
    teacher_vars = train.create_train_state(p.teacher, optimizer, jax.random.key(1), p.sample,
                                            p.mesh)[0].model
    fetch = time_fetch(p, args.fetch_batches)
    for key, v in fetch.items():
        print(f'fetch {key:24s} {v["median_ms"]:7.2f} ms/batch', flush=True)
    pairs = [(n, s) for s in STAGES for n in PIPELINES]
    rates = {f'{n}/{s}': [] for n, s in pairs}
    for r in range(args.rounds):
        for n, s in pairs[r % len(pairs):] + pairs[:r % len(pairs)]:
            result = train.run_stage(
                _stage(p, n, s, args.steps, teacher_vars, f'{root}/{n}_{s}_{r}'), config,
                p.mesh, p.sample, is_main=False)
            rates[f'{n}/{s}'].append(result.meta['steps_per_second'])
            print(f'round {r} {n + "/" + s:24s} {rates[f"{n}/{s}"][-1]:7.1f} steps/s',
                  flush=True)
    summary = {k: statistics.median(v) for k, v in rates.items()}
    report = {
        'command': 'python -m benchmarks.stage_rate ' + ' '.join(argv or []),
        'config': 'configs/digits.py (batch 64, crop, mixup 1.0, labelled_fraction 0.1)',
        'steps_per_stage_run': args.steps, 'rounds': args.rounds,
        'host_memory': hostmem.in_force(),
        'machine': machine_info(), 'load_average_before': load_before,
        'load_average_after': load_average(),
        'fetch_ms_per_batch': fetch, 'steps_per_second': rates,
        'median_steps_per_second': summary,
        'baseline_over_student': {n: summary[f'{n}/baseline'] / summary[f'{n}/student']
                                  for n in PIPELINES},
    }
    with open(args.out, 'w') as f:
        json.dump(report, f, indent=1)
    for k, v in summary.items():
        print(f'median {k:24s} {v:7.1f} steps/s')
    print(f'wrote {args.out}')


if __name__ == '__main__':
    main()
