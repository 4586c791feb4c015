"""A cached teacher signal on your own corpus: peak host memory against corpus size.

    python -m benchmarks.signal_memory                      # 25 and 100 MB -> signal_memory.json
    python -m benchmarks.signal_memory --sizes 2,8 --out /tmp/signal_memory.json
    python -m benchmarks.signal_memory --one 25 [--whole]   # one measurement, one JSON line

Each measurement is a fresh process, so its peak RSS (``ru_maxrss``) is that corpus's alone.
The corpus is generated and streamed to a .jsonl file (`benchmarks.packing.write_corpus`);
then `configs/lm_text.py:smoke,cached` runs on it through ``data.files`` (byte tokens, rows
of 128, a top-4 float16 cache: 16 bytes per token), in two calls of the Python API in that
process: ``mode=cache_teacher`` (pack the corpus, train the 2-layer teacher 5 steps, run it
over every train row into the cache) and ``mode=train`` (5 student steps reading the cache,
then the test split scored). Reported: the peak RSS after both, the RSS before the first, the
seconds of each call, and the sizes.

``--whole`` is the reference: the same run with the packed train rows and the cache read
whole into memory (as before they were streamed), to show what holding the corpus costs at
that size and that the measurement sees it.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def files_config(files: str, cache_dir: str, seq_len: int = 128):
    """`configs/lm_text.py:smoke,cached` on ``data.files`` (what the tests run too)."""
    from jaxdistill.configs import lm_text

    c = lm_text.get_config('smoke,cached')
    c.data.name, c.data.files, c.data.cache_dir = '', files, cache_dir
    c.data.seq_len, c.data.eval_batch_size, c.data.test_fraction = seq_len, 256, 0.002
    for model in (c.teacher, c.student):
        model.kwargs.max_len = seq_len
    c.teacher.steps, c.train.steps, c.train.eval_every = 5, 5, 5
    c.train.baseline = False
    c.distill.cache.k = 4
    return c


def _hold_whole() -> None:
    """The reference path: train rows and cache whole in host memory."""
    import numpy as np

    from jaxdistill.data import text
    from jaxdistill.signals import store
    from jaxdistill.tasks import lm

    opened, open_rows = lm.LanguageModelTask._open_corpus, store.open_rows

    def whole_rows(self, d):
        opened(self, d)
        self.train_rows = self.train_rows.take(np.arange(len(self.train_rows)))

    def whole_store(*args):
        rows = open_rows(*args)
        return text.PackedSource(rows.take(np.arange(len(rows))))

    lm.LanguageModelTask._open_corpus = whole_rows
    store.open_rows = whole_store


def measure(mb: float, whole: bool = False) -> dict[str, Any]:
    import jax

    from benchmarks.packing import write_corpus
    from jaxdistill import run

    folder = tempfile.mkdtemp(prefix='jaxdistill-signal-memory-')
    try:
        os.makedirs(os.path.join(folder, 'text'))
        size = write_corpus(os.path.join(folder, 'text', 'c.jsonl'), mb)
        c = files_config(os.path.join(folder, 'text', '*.jsonl'), os.path.join(folder, 'packed'))
        if whole:
            _hold_whole()
        workdir, devices = os.path.join(folder, 'w'), jax.devices()[:1]
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        t0 = time.perf_counter()
        c.mode = 'cache_teacher'
        built = run.train_and_evaluate(c, workdir, devices=devices)
        t1 = time.perf_counter()
        c.mode = 'train'
        r = run.train_and_evaluate(c, workdir, devices=devices)
        t2 = time.perf_counter()
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        p = r['provenance']
        cache_bytes = os.path.getsize(os.path.join(workdir, 'teacher_cache', 'rows.array_record'))
        return {'corpus_mb': size / 2**20, 'whole': whole, 'seq_len': c.data.seq_len,
                'cache_k': p['cache_k'], 'cache_bytes_per_token': p['cache_bytes_per_token'],
                'train_rows': p['train_rows'], 'train_tokens': p['train_tokens'],
                'cache_file_mb': cache_bytes / 2**20,
                'pack_teacher_cache_s': t1 - t0, 'student_s': t2 - t1,
                'reused_cache': built['provenance']['teacher_cache'] == p['teacher_cache'],
                'student_train_loss': r['student']['train_loss'],
                'peak_rss_mb': peak / 2**20, 'rss_before_mb': before / 2**20,
                'rss_growth_mb': (peak - before) / 2**20, 'load_average': list(os.getloadavg())}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _command(mb: float, whole: bool) -> list[str]:
    return ([sys.executable, '-m', 'benchmarks.signal_memory', '--one', str(mb)]
            + (['--whole'] if whole else []))


def _env() -> dict[str, str]:  # one CPU device, no forced device count
    return dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='',
                PYTHONPATH=os.pathsep.join([ROOT, os.environ.get('PYTHONPATH', '')]))


def measure_in_process(mb: float, whole: bool = False, timeout: float = 3600) -> dict[str, Any]:
    """`measure` in a fresh Python process."""
    done = subprocess.run(_command(mb, whole), cwd=ROOT, env=_env(), capture_output=True,
                          text=True, timeout=timeout)
    if done.returncode:
        raise RuntimeError(f'{" ".join(_command(mb, whole))} failed: {done.stderr[-2000:]}')
    return json.loads(done.stdout.strip().splitlines()[-1])


def compare(sizes: tuple[float, float], whole_reference: bool = True) -> dict[str, Any]:
    """Both sizes streamed (the ratio: the large corpus's peak RSS over the small one's),
    and the small one held whole, for reference; each in its own process, run side by side
    (peak RSS is per process, so the others' load changes the times only)."""
    cases = {f'{sizes[0]:g}MB': (sizes[0], False), f'{sizes[1]:g}MB': (sizes[1], False)}
    if whole_reference:
        cases[f'{sizes[0]:g}MB_whole'] = (sizes[0], True)
    procs = {name: subprocess.Popen(_command(*case), cwd=ROOT, env=_env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
             for name, case in cases.items()}
    runs = {}
    for name, proc in procs.items():
        out, err = proc.communicate()
        if proc.returncode:
            raise RuntimeError(f'{" ".join(_command(*cases[name]))} failed: {err[-2000:]}')
        runs[name] = json.loads(out.strip().splitlines()[-1])
    small, large = runs[f'{sizes[0]:g}MB'], runs[f'{sizes[1]:g}MB']
    return {'description': f'teacher_signal=cached on a generated .jsonl corpus (data.files) '
                           f'of {sizes[1]:g} MB vs {sizes[0]:g} MB: pack, teacher cache (top-4 '
                           'float16), 5 student steps, test scores; peak RSS',
            'ratio': large['peak_rss_mb'] / small['peak_rss_mb'],
            'growth_difference_mb': large['rss_growth_mb'] - small['rss_growth_mb'],
            'runs': runs}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--one', type=float, help='one measurement of this many MB, as JSON')
    parser.add_argument('--whole', action='store_true', help='hold rows and cache in memory')
    parser.add_argument('--sizes', default='25,100', help='the two corpus sizes in MB')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks', 'signal_memory.json'))
    a = parser.parse_args(argv)
    if a.one is not None:
        print(json.dumps(measure(a.one, a.whole)), flush=True)
        return
    from benchmarks.harness import finish_record, load_average, machine_info

    sizes = tuple(float(s) for s in a.sizes.split(','))
    record = {'command': 'python -m benchmarks.signal_memory'
                         + (f' --sizes {a.sizes}' if a.sizes != '25,100' else ''),
              'machine': machine_info(), 'load_before': load_average(),
              **compare(sizes)}
    finish_record(record, a.out)


if __name__ == '__main__':
    main()
