"""Cross-tokenizer distillation: alignment throughput, and step time against same-tokenizer KD.

    python -m benchmarks.crosstok          # BPE-512 teacher vs byte student -> crosstok.json
    python -m benchmarks.crosstok --quick    # fewer rows and rounds (a smoke run)

Alignment (host, numpy): the train split of `pytext` tokenized by both tokenizers with byte
offsets (`encode_stream`, tokenizer time included), the streams matched (`Aligner`), then
every row cut in batches of 32 (`Aligner.rows`, what the data pipeline runs per batch on the
prefetch thread). Reported as student tokens per second, median of ``--repeats``.

Step time (one process, the ``configs/lm_text.py`` shapes: a 4-layer d128 teacher, a 2-layer
d64 byte student, batch 32 x 128): the jitted train step of same-tokenizer ``kd + ce`` (byte
teacher) against ``uld + ce``, ``aligned_kl + ce`` and ``byte_kl + ce`` with a BPE-512
teacher reading its own 64-token rows. Randomly initialised models (time does not depend
on the weights); the steps alternate round by round, each timed over ``--steps`` steps
after a compile, median of the rounds, on real aligned batches.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np


def _config(data_dir: str, losses, cross: bool):
    from jaxdistill.configs import lm_text

    c = lm_text.get_config()
    c.data.data_dir = data_dir
    c.distill.losses = losses
    c.mesh.data = 1
    if cross:
        c.teacher.tokenizer, c.teacher.kwargs.vocab_size = 'bpe:512', 512
        c.teacher.seq_len = 64
        c.teacher.checkpoint = 'unused-by-this-benchmark'
    return c


def alignment_throughput(data_dir: str, repeats: int, rows_limit: int) -> dict:
    from jaxdistill.crosstok import align
    from jaxdistill.data import text

    docs = text.load_texts(data_dir, 'train')
    student, teacher = text.get_tokenizer('byte', data_dir=data_dir), text.get_tokenizer(
        'bpe', data_dir=data_dir, vocab_size=512)
    vm = align.vocab_map(student, teacher)
    times = {'encode': [], 'match': [], 'rows': []}
    for _ in range(repeats):
        t0 = time.perf_counter()
        s = align.encode_stream(student, docs, 'data.tokenizer')
        t = align.encode_stream(teacher, docs)
        t1 = time.perf_counter()
        al = align.Aligner(s, t, 128, 64, vm)
        t2 = time.perf_counter()
        n = min(al.num_rows, rows_limit)
        for start in range(0, n, 32):
            al.rows(np.arange(start, min(start + 32, n)))
        t3 = time.perf_counter()
        for k, v in zip(times, (t1 - t0, t2 - t1, t3 - t2)):
            times[k].append(v)
    tokens, row_tokens = len(s.ids), min(al.num_rows, rows_limit) * 128
    med = {k: statistics.median(v) for k, v in times.items()}
    return {'student_tokens': tokens, 'teacher_tokens': len(t.ids),
            'rows_cut': min(al.num_rows, rows_limit), 'seconds_median': med,
            'encode_both_tokens_per_s': tokens / med['encode'],
            'match_tokens_per_s': tokens / med['match'],
            'rows_tokens_per_s': row_tokens / med['rows'],
            'batch_of_32_rows_ms': 1e3 * med['rows'] / max(1, -(-min(al.num_rows, rows_limit)
                                                                 // 32))}


def _step(config):
    import dataclasses

    import jax

    from jaxdistill import objective, tasks, train
    from jaxdistill.models import modules
    from jaxdistill.models.adapter import Model
    from jaxdistill.runtime import mesh as mesh_lib

    task = tasks.build(config)
    mesh = mesh_lib.make_mesh(config.mesh, jax.devices()[:1])
    student = Model(modules.resolve(config.student.module, config.student.kwargs,
                                    key='student.module'), '', 'student',
                    mesh_lib.normalize_rules(config.student.sharding_rules))
    teacher = Model(modules.resolve(config.teacher.module, config.teacher.kwargs,
                                    key='teacher.module'), '', 'teacher',
                    mesh_lib.normalize_rules(config.teacher.sharding_rules))
    task.check_models(teacher, student)
    obj = objective.build(config.distill.losses, 1000)
    if task.cross:
        obj = dataclasses.replace(obj, cross=task.cross_vocab)
    opt = train.make_optimizer(config.optimizer, 1000)
    state, shardings = train.create_train_state(student, opt, jax.random.key(0), task.sample,
                                                mesh)
    t_state, _ = train.create_train_state(teacher, opt, jax.random.key(1),
                                          task.teacher_sample, mesh)
    t_vars = t_state.model
    step = train.make_train_step(student, obj, opt, mesh=mesh, state_shardings=shardings,
                                 prepare=task.prepare_fn(), seed=0, teacher=teacher,
                                 teacher_shardings=jax.tree.map(lambda x: x.sharding, t_vars))
    batches = task.train_batches(0)
    return step, state, t_vars, [mesh_lib.to_global(mesh, batches[i]) for i in range(4)]


def step_times(data_dir: str, rounds: int, steps: int) -> dict:
    import jax

    from jaxdistill.config import loss_entry

    variants = {
        'kd_same_tokenizer': _config(data_dir, (loss_entry('kd', weight=0.5, temperature=1.0),
                                                loss_entry('ce', weight=0.5)), False),
        'uld_cross': _config(data_dir, (loss_entry('uld', weight=0.5),
                                        loss_entry('ce', weight=0.5)), True),
        'aligned_kl_cross': _config(data_dir, (loss_entry('aligned_kl', weight=0.5),
                                               loss_entry('ce', weight=0.5)), True),
        'byte_kl_cross': _config(data_dir, (loss_entry('byte_kl', weight=0.5),
                                            loss_entry('ce', weight=1.0)), True),
    }
    built = {k: list(_step(c)) for k, c in variants.items()}
    for b in built.values():  # compile
        b[1], m = b[0](b[1], b[2], b[3][0])
        jax.block_until_ready(m)
    times = {k: [] for k in built}
    for _ in range(rounds):
        for k, b in built.items():
            t0 = time.perf_counter()
            for i in range(steps):
                b[1], m = b[0](b[1], b[2], b[3][i % len(b[3])])
            jax.block_until_ready(m)
            times[k].append((time.perf_counter() - t0) / steps)
    med = {k: statistics.median(v) for k, v in times.items()}
    base = med['kd_same_tokenizer']
    return {'step_seconds_median': med, 'per_round': times,
            'ratio_vs_kd': {k: v / base for k, v in med.items()}}


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--quick', action='store_true')
    parser.add_argument('--data_dir', default=os.path.join(tempfile.gettempdir(), 'jd-tfds'))
    parser.add_argument('--out', default='')
    args = parser.parse_args(argv)
    os.environ.setdefault('JAX_PLATFORMS', 'cpu')
    from benchmarks.harness import load_average, machine_info

    load_before = load_average()
    align_r = alignment_throughput(args.data_dir, 1 if args.quick else 3,
                                   64 if args.quick else 10**9)
    print(json.dumps(align_r, indent=1), flush=True)
    step_r = step_times(args.data_dir, 2 if args.quick else 5, 3 if args.quick else 10)
    print(json.dumps(step_r['ratio_vs_kd'], indent=1), flush=True)
    report = {'command': 'python -m benchmarks.crosstok' + (' --quick' if args.quick else ''),
              'machine': machine_info(), 'load_average_before': load_before,
              'load_average_after': load_average(), 'alignment': align_r, 'step': step_r}
    here = os.path.dirname(os.path.abspath(__file__))
    out = args.out or os.path.join(here, 'crosstok_quick.json' if args.quick
                                   else 'crosstok.json')
    with open(out, 'w') as f:
        json.dump(report, f, indent=1)
    print(f'wrote {out}')


if __name__ == '__main__':
    main()
