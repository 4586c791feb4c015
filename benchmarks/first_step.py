"""Time to first step, fresh vs resumed: what the persistent compilation cache saves.

``train.compilation_cache='auto'`` (the default) keeps JAX's compiled executables in
``WORKDIR/compilation_cache``. This runs the CLI, each time in a fresh process (as a
preempted job restarts), and reads ``train/time_to_first_step`` (stage start -> first
step done: restore or init, compile, one step) from each stage's metrics.jsonl:

1. ``fresh``: a new workdir (empty cache): every stage compiles;
2. ``resumed``: a copy of that workdir with the student's last checkpoint removed, so the
   student resumes from its middle checkpoint with the cache the first run filled;
3. ``resumed_no_cache``: the same resume with ``train.compilation_cache=off``.

Resumed runs alternate (cached, uncached, cached, ...) so load drifts hit both.

    python -m benchmarks.first_step [--rounds 2] [--out benchmarks/first_step.json]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

from benchmarks.harness import finish_record, load_average, machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
JOBS = {
    'digits': ['--config=configs/digits.py', '--config.teacher.steps=40',
               '--config.train.steps=40', '--config.train.checkpoint_every=20',
               '--config.train.eval_every=20', '--config.train.log_every=10',
               '--config.optimizer.warmup_steps=5'],
    'lm_text_smoke': ['--config=configs/lm_text.py:smoke'],
}


def cli(workdir: str, args: list[str], data_dir: str, *extra: str) -> float:
    env = {k: v for k, v in os.environ.items() if k != 'JAX_COMPILATION_CACHE_DIR'}
    env['JAX_PLATFORMS'] = 'cpu'
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, '-m', 'jaxdistill.main', *args,
                           f'--workdir={workdir}', f'--config.data.data_dir={data_dir}', *extra],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=3600)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-3000:])
    return time.perf_counter() - t


def first_step(workdir: str, stage: str) -> float | None:
    """The stage's last recorded time to first step (a resume appends its own)."""
    path = os.path.join(workdir, f'{stage}_metrics', 'metrics.jsonl')
    if not os.path.exists(path):
        return None
    rows = [json.loads(line) for line in open(path)]
    values = [r['train/time_to_first_step'] for r in rows if 'train/time_to_first_step' in r]
    return values[-1] if values else None


def resume_copy(workdir: str, target: str) -> None:
    shutil.copytree(workdir, target)
    student = os.path.join(target, 'student')
    last = max(int(d) for d in os.listdir(student) if d.isdigit())
    shutil.rmtree(os.path.join(student, str(last)))  # as if killed before its last save
    os.remove(os.path.join(target, 'results.json'))


def measure(name: str, args: list[str], root: str, data_dir: str, rounds: int) -> dict:
    fresh = os.path.join(root, name)
    wall = cli(fresh, args, data_dir)
    out: dict[str, Any] = {
        'fresh': {'wall_s': wall, **{s: first_step(fresh, s)
                                     for s in ('teacher', 'baseline', 'student')}},
        'resumed': [], 'resumed_no_cache': []}
    for r in range(rounds):
        for kind, extra in (('resumed', ()), ('resumed_no_cache',
                                              ('--config.train.compilation_cache=off',))):
            copy = os.path.join(root, f'{name}-{kind}-{r}')
            resume_copy(fresh, copy)
            wall = cli(copy, args, data_dir, *extra)
            out[kind].append({'wall_s': wall, 'student': first_step(copy, 'student')})
    best = {k: min(x['student'] for x in out[k]) for k in ('resumed', 'resumed_no_cache')}
    out['summary'] = {
        'student_first_step_fresh_s': out['fresh']['student'],
        'student_first_step_resumed_s': best['resumed'],
        'student_first_step_resumed_no_cache_s': best['resumed_no_cache'],
        'resumed_over_no_cache': best['resumed'] / best['resumed_no_cache'],
        'cache_entries': len(os.listdir(os.path.join(fresh, 'compilation_cache'))),
    }
    return out


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--rounds', type=int, default=2)
    parser.add_argument('--jobs', default=','.join(JOBS))
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'first_step.json'))
    a = parser.parse_args(argv)
    record: dict[str, Any] = {'benchmark': 'time to first step, fresh vs resumed',
                              'machine': machine_info(), 'load_before': load_average(),
                              'jobs': {}}
    with tempfile.TemporaryDirectory(prefix='jaxdistill-first-step-') as root:
        data_dir = os.path.join(root, 'tfds')
        for name in a.jobs.split(','):
            record['jobs'][name] = measure(name, JOBS[name], root, data_dir, a.rounds)
            s = record['jobs'][name]['summary']
            print(f"{name}: student time to first step fresh "
                  f"{s['student_first_step_fresh_s']:.2f} s, resumed "
                  f"{s['student_first_step_resumed_s']:.2f} s (cache) / "
                  f"{s['student_first_step_resumed_no_cache_s']:.2f} s (no cache)", flush=True)
    finish_record(record, a.out)


if __name__ == '__main__':
    main()
