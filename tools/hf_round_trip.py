"""The README's Hugging Face round trip, measured: every step a separate process, timed.

    python tools/hf_round_trip.py WORKDIR [--steps 300] [--teacher_run DIR]

1. train the ``configs/lm_text.py`` teacher (BPE tokenizer, 2048 ids) on ``pytext``
   (or reuse ``--teacher_run``, a finished lm_text workdir);
2. export that teacher as a Hugging Face directory (`jaxdistill.hf.export.save_pretrained`,
   with its tokenizer);
3. write ``pytext``'s documents as ``train.jsonl`` / ``test.jsonl`` (your own text);
4. distil with ``configs/hf_lm.py:hf:DIR``: the exported directory as an ``hf:`` teacher, its
   tokenizer, ``data.files`` = the .jsonl, the student cut to every other layer;
5. export the student (``--config.mode=export --config.export.format=hf``);
6. reload it in a fresh process with `jaxdistill.hf.load_causal_lm` and score the test file
   (perplexity and bits per byte, numpy, no jaxdistill evaluator);
7. the same student shape at random initialisation, equal steps (``configs/hf_lm.py:...,random``).

Writes ``WORKDIR/round_trip.json`` and prints the README table.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY = sys.executable


def _run(args: list[str], log: str) -> float:
    t0 = time.perf_counter()
    with open(log, 'w') as f:
        done = subprocess.run(args, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT,
                              env=dict(os.environ, PYTHONPATH=ROOT))
    if done.returncode:
        raise SystemExit(f'{" ".join(args)} failed (exit {done.returncode}); see {log}')
    return time.perf_counter() - t0


def _main(*flags: str) -> list[str]:
    return [PY, '-m', 'jaxdistill.main', *flags]


EXPORT_TEACHER = '''
import sys
from jaxdistill import run
from jaxdistill.hf.export import save_pretrained
from tests.helpers import load_config
c = load_config('lm_text.py')
for kv in sys.argv[3:]:
    key, value = kv.split('=', 1)
    node = c
    for part in key.split('.')[:-1]:
        node = node[part]
    node[key.split('.')[-1]] = type(node[key.split('.')[-1]])(value)
c.teacher.checkpoint = sys.argv[1]
p = run.plan(c, sys.argv[1] + '_export_probe')
v = run.load_teacher(p)
save_pretrained(p.teacher.module, v['params'], sys.argv[2], tokenizer=p.task.tokenizer,
                provenance={'source': 'configs/lm_text.py teacher', 'workdir': sys.argv[1]})
'''

SCORE = '''
import json, math, sys
import numpy as np
import jax
from jaxdistill.data import text
from jaxdistill.hf import load_causal_lm
module, params, tok = load_causal_lm(sys.argv[1])
docs = [json.loads(line)['text'] for line in open(sys.argv[2])]
rows = text.pack([tok.encode(d) for d in docs], int(sys.argv[3]), bos_id=tok.bos_id,
                 eos_id=tok.eos_id, pad_id=tok.pad_id)
apply = jax.jit(lambda x: module.apply({'params': params}, x))
nll = 0.0
for i in range(0, len(rows['inputs']), 16):
    z = np.asarray(apply(rows['inputs'][i:i + 16]), np.float64)
    z = z - z.max(-1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
    t, m = rows['targets'][i:i + 16], rows['mask'][i:i + 16]
    nll += -np.take_along_axis(logp, t[..., None], -1)[..., 0][m].sum()
n, nbytes = int(rows['mask'].sum()), sum(len(d.encode()) for d in docs)
print(json.dumps({'perplexity': math.exp(nll / n), 'bits_per_byte': nll / nbytes / math.log(2),
                  'tokens': n, 'bytes': nbytes}))
'''

# Small enough for a shared 2-core CPU: a 4-layer d=64 BPE-1024 teacher on 64-token rows.
SEQ = 64
TEACHER_FLAGS = ['data.tokenizer=bpe', 'data.vocab_size=1024', f'data.seq_len={SEQ}',
                 'data.batch_size=16', 'teacher.kwargs.vocab_size=1024',
                 'teacher.kwargs.d_model=64', 'teacher.kwargs.num_heads=2',
                 'teacher.kwargs.mlp_dim=256', f'teacher.kwargs.max_len={SEQ}',
                 'student.kwargs.vocab_size=1024', f'student.kwargs.max_len={SEQ}',
                 'teacher.steps=TEACHER_STEPS']


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('workdir')
    parser.add_argument('--steps', type=int, default=100)
    parser.add_argument('--teacher_steps', type=int, default=150)
    parser.add_argument('--teacher_run', default='')
    parser.add_argument('--data_dir', default='')
    args = parser.parse_args()
    w = os.path.abspath(args.workdir)
    os.makedirs(w, exist_ok=True)
    data = [f'--config.data.data_dir={args.data_dir}'] if args.data_dir else []
    flags = [f.replace('TEACHER_STEPS', str(args.teacher_steps)) for f in TEACHER_FLAGS]
    seconds, out = {}, {'steps': args.steps, 'load_average_before': os.getloadavg()}
    teacher_run = args.teacher_run or os.path.join(w, 'teacher_run')
    if not args.teacher_run:  # the teacher alone: 2 throwaway student steps
        seconds['train_teacher'] = _run(_main(
            '--config=configs/lm_text.py', f'--workdir={teacher_run}', '--config.train.steps=2',
            '--config.optimizer.warmup_steps=0', *data,
            *[f'--config.{f}' for f in flags]), os.path.join(w, 'teacher.log'))
    hf_dir = os.path.join(w, 'teacher_hf')
    seconds['export_teacher'] = _run(
        [PY, '-c', EXPORT_TEACHER, teacher_run, hf_dir, *flags,
         *([f'data.data_dir={args.data_dir}'] if args.data_dir else [])],
        os.path.join(w, 'export_teacher.log'))
    sys.path.insert(0, ROOT)
    from jaxdistill.data import text

    corpus = os.path.join(w, 'corpus')
    os.makedirs(corpus, exist_ok=True)
    ddir = args.data_dir or os.path.expanduser('~/tensorflow_datasets')
    for split in ('train', 'test'):
        with open(os.path.join(corpus, f'{split}.jsonl'), 'w') as f:
            for doc in text.load_texts(ddir, split):
                f.write(json.dumps({'text': doc}) + '\n')
    common = [f'--config.data.files={corpus}/train.jsonl',
              f'--config.data.test_files={corpus}/test.jsonl',
              f'--config.train.steps={args.steps}', f'--config.data.seq_len={SEQ}',
              '--config.data.batch_size=16', '--config.train.eval_every=0',
              '--config.optimizer.warmup_steps=10', *data]
    cut = os.path.join(w, 'cut')
    seconds['distil'] = _run(_main(f'--config=configs/hf_lm.py:hf:{hf_dir}', f'--workdir={cut}',
                                   *common), os.path.join(w, 'distil.log'))
    seconds['export_student'] = _run(_main(
        f'--config=configs/hf_lm.py:hf:{hf_dir}', f'--workdir={cut}', *common,
        '--config.mode=export', '--config.export.format=hf'), os.path.join(w, 'export.log'))
    t0 = time.perf_counter()
    done = subprocess.run([PY, '-c', SCORE, os.path.join(cut, 'export', 'hf'),
                           os.path.join(corpus, 'test.jsonl'), str(SEQ)], cwd=ROOT,
                          capture_output=True, text=True, check=True,
                          env=dict(os.environ, PYTHONPATH=ROOT))
    seconds['reload_and_score'] = time.perf_counter() - t0
    out['reloaded_student'] = json.loads(done.stdout.strip().splitlines()[-1])
    rand = os.path.join(w, 'random')
    seconds['distil_random_init'] = _run(_main(
        f'--config=configs/hf_lm.py:hf:{hf_dir},random', f'--workdir={rand}', *common),
        os.path.join(w, 'random.log'))
    for name, run_dir in (('cut', cut), ('random', rand)):
        with open(os.path.join(run_dir, 'results.json')) as f:
            r = json.load(f)
        out[name] = {k: {m: r[k].get(m) for m in ('perplexity', 'bits_per_byte', 'accuracy',
                                                  'params', 'steps')}
                     for k in ('teacher', 'baseline', 'student')}
    out.update(seconds=seconds, load_average_after=os.getloadavg())
    with open(os.path.join(w, 'round_trip.json'), 'w') as f:
        json.dump(out, f, indent=1)
    print('| model | init | steps | test perplexity | bits per byte |\n|---|---|---|---|---|')
    rows = [('teacher (lm_text, exported, hf:)', '-', 'teacher', 'cut'),
            ('baseline (labels only)', 'cut from teacher', 'baseline', 'cut'),
            ('student (kd + ce)', 'cut from teacher', 'student', 'cut'),
            ('baseline (labels only)', 'random', 'baseline', 'random'),
            ('student (kd + ce)', 'random', 'student', 'random')]
    for label, init, key, run_name in rows:
        s = out[run_name][key]
        print(f"| {label} | {init} | {s['steps']} | {s['perplexity']:.3f} | "
              f"{s['bits_per_byte']:.4f} |")
    r = out['reloaded_student']
    print(f"| student reloaded by load_causal_lm (fresh process) | cut | {args.steps} | "
          f"{r['perplexity']:.3f} | {r['bits_per_byte']:.4f} |")
    print('seconds: ' + ', '.join(f'{k} {v:.0f}' for k, v in seconds.items()))
    assert math.isclose(r['perplexity'], out['cut']['student']['perplexity'], rel_tol=1e-3)


if __name__ == '__main__':
    main()
