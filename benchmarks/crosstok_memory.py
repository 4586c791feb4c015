"""Host memory of the cross-tokenizer alignment against corpus size: in memory vs on disk.

    python -m benchmarks.crosstok_memory --sizes 2,8        # writes benchmarks/crosstok_memory.json

For each corpus size and mode, a fresh process (so each peak is its own): a generated .jsonl
corpus (`benchmarks.packing.write_corpus`) packed for a byte-level student
(`data.packed.open_or_pack`), a BPE teacher tokenizer (8,192 ids, trained on other generated
text), then both tokenizations of the train split and their match, built ``memory`` (the
documents listed, `align.encode_stream` twice, `align.Aligner`: the path the bundled corpus
keeps) or ``disk`` (`crosstok.streams.open_or_build`, memory-mapped: the path of a packed
corpus), and every row's alignment read once, 64 rows at a time, as training reads them.
Reported: the process's anonymous memory (``RssAnon``: what the corpus cannot page out)
sampled every 10 ms, its peak growth over the value before the build, and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from typing import Any

import numpy as np

from benchmarks.harness import finish_record, load_average, machine_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SEQ, TEACHER_LEN = 128, 128


def _anon_mb() -> float:
    with open('/proc/self/status') as f:
        for line in f:
            if line.startswith('RssAnon:'):
                return int(line.split()[1]) / 1024
    return 0.0


class _Peak:
    def __init__(self):
        self.peak, self._stop = _anon_mb(), threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        while not self._stop.wait(0.01):
            self.peak = max(self.peak, _anon_mb())

    def stop(self) -> float:
        self._stop.set()
        self._thread.join()
        return max(self.peak, _anon_mb())


def measure(mb: float, mode: str) -> dict[str, Any]:
    from benchmarks.packing import write_corpus
    from jaxdistill.crosstok import align, streams
    from jaxdistill.data import corpus as corpus_lib
    from jaxdistill.data import packed
    from jaxdistill.data.tokenizer import BPETokenizer, ByteTokenizer

    folder = tempfile.mkdtemp(prefix='jaxdistill-xtok-mem-')
    try:
        write_corpus(os.path.join(folder, 'sample.jsonl.txt'), 2, seed=1)
        with open(os.path.join(folder, 'sample.jsonl.txt')) as f:
            teacher = BPETokenizer.train([json.loads(x)['text'] for x in f], 8192)
        size = write_corpus(os.path.join(folder, 'corpus.jsonl'), mb)
        corpus = corpus_lib.FileCorpus(os.path.join(folder, '*.jsonl'), 'text',
                                       test_fraction=0.01)
        student = ByteTokenizer()
        rows, _ = packed.open_or_pack(corpus, student, SEQ, os.path.join(folder, 'cache'),
                                      say=lambda _: None)
        vm = align.vocab_map(student, teacher)
        surf = {'s': align.vocab_surfaces(student), 't': align.vocab_surfaces(teacher)}
        before = _anon_mb()
        peak = _Peak()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter('ignore')
            if mode == 'memory':
                docs = list(corpus.documents('train'))
                s = align.encode_stream(student, docs, 'data.tokenizer', surf['s'])
                t = align.encode_stream(teacher, docs, 'teacher.tokenizer', surf['t'])
                al = align.Aligner(s, t, SEQ, TEACHER_LEN, vm)
            else:
                s, t, matched = streams.open_or_build(
                    os.path.dirname(rows['train'].path), corpus.records,
                    {'student': (student, 'data.tokenizer', surf['s']),
                     'teacher': (teacher, 'teacher.tokenizer', surf['t'])},
                    packed.tokenizer_sha256(teacher), say=lambda _: None)['train']
                al = align.Aligner(s, t, SEQ, TEACHER_LEN, vm, matched=matched)
        built = time.perf_counter() - t0
        checksum = 0
        for a in range(0, al.num_rows, 64):
            r = al.rows(np.arange(a, min(a + 64, al.num_rows)))
            checksum += int(r['xt_aligned'].sum())
        return {'mode': mode, 'corpus_mb': size / 2**20, 'student_tokens': len(s.ids),
                'teacher_tokens': len(t.ids), 'rows': al.num_rows,
                'aligned_positions': checksum, 'build_seconds': built,
                'rows_seconds': time.perf_counter() - t0 - built,
                'anon_before_mb': before, 'anon_peak_growth_mb': peak.stop() - before,
                'load_average': list(os.getloadavg())}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def in_process(mb: float, mode: str) -> dict[str, Any]:
    env = {**os.environ, 'PYTHONPATH': ROOT + os.pathsep + os.environ.get('PYTHONPATH', '')}
    out = subprocess.run([sys.executable, '-m', 'benchmarks.crosstok_memory', '--one',
                          f'{mode}:{mb}'], capture_output=True, text=True, env=env, cwd=ROOT,
                         check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--sizes', default='2,8', help='corpus MB, comma-separated')
    parser.add_argument('--one', help='MODE:MB: one measurement in this process')
    parser.add_argument('--out', default=os.path.join(ROOT, 'benchmarks',
                                                      'crosstok_memory.json'))
    a = parser.parse_args(argv)
    if a.one:
        mode, mb = a.one.split(':')
        print(json.dumps(measure(float(mb), mode)))
        return
    record: dict[str, Any] = {'benchmark': 'cross-tokenizer host memory',
                              'machine': machine_info(), 'load_before': load_average(),
                              'runs': []}
    for mb in (float(x) for x in a.sizes.split(',')):
        for mode in ('memory', 'disk'):
            r = in_process(mb, mode)
            record['runs'].append(r)
            print(f"{mode:6s} {r['corpus_mb']:5.1f} MB: anon +{r['anon_peak_growth_mb']:.1f} MB "
                  f"(build {r['build_seconds']:.1f} s, rows {r['rows_seconds']:.1f} s, "
                  f"{r['student_tokens']} / {r['teacher_tokens']} tokens)", flush=True)
    finish_record(record, a.out)


if __name__ == '__main__':
    main()
