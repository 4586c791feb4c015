"""Packing your own text (`jaxdistill.data.packed`): MB/s and peak memory against corpus size.

    python -m benchmarks.packing --mb 25 --tokenizer byte    # one measurement, one JSON line

Each measurement runs in a fresh process (`benchmarks.comparisons.text_packing` starts one
per size and tokenizer), so peak RSS (``ru_maxrss``) is that corpus's alone. The corpus is
generated first, streamed to a .jsonl file (never whole in memory): paragraphs of Python's
own documentation (``pydoc_data.topics``, offline) drawn at random into ~4 kB documents.
Timed: `packed.open_or_pack` from the files to the finished cache (read, decode, tokenize,
pack, write). Memory: the process's peak RSS after packing, and its growth during packing
(peak after - RSS before). A streaming packer's growth does not depend on the corpus size.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import tempfile
import time

import numpy as np


def _paragraphs() -> list[str]:
    from pydoc_data.topics import topics

    return [p.strip() for t in topics.values() for p in t.split('\n\n') if len(p.strip()) > 40]


def write_corpus(path: str, mb: float, seed: int = 0) -> int:
    """Writes ~``mb`` MB of .jsonl documents; returns the bytes written."""
    paragraphs = _paragraphs()
    rng = np.random.default_rng(seed)
    written = 0
    with open(path, 'w', encoding='utf-8') as f:
        while written < mb * 2**20:
            doc, size = [], 0
            while size < 4096:
                p = paragraphs[int(rng.integers(len(paragraphs)))]
                doc.append(p)
                size += len(p)
            line = json.dumps({'text': '\n\n'.join(doc)}, ensure_ascii=False) + '\n'
            f.write(line)
            written += len(line.encode('utf-8'))
    return written


def _rss_bytes() -> int:
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE')


def _tokenizer(kind: str, folder: str):
    from jaxdistill.data.tokenizer import BPETokenizer, ByteTokenizer

    if kind == 'byte':
        return ByteTokenizer()
    sample = os.path.join(folder, 'sample.jsonl')
    write_corpus(sample, 4, seed=1)
    with open(sample) as f:
        texts = [json.loads(line)['text'] for line in f]
    os.remove(sample)
    return BPETokenizer.train(texts, 8192)


def measure(mb: float, tokenizer: str, seq_len: int = 1024) -> dict:
    from jaxdistill.data import corpus, packed

    folder = tempfile.mkdtemp(prefix='jaxdistill-packing-')
    try:
        tok = _tokenizer(tokenizer, folder)
        size = write_corpus(os.path.join(folder, 'corpus.jsonl'), mb)
        c = corpus.FileCorpus(os.path.join(folder, '*.jsonl'), 'text', test_fraction=0.01)
        before = _rss_bytes()
        t0 = time.perf_counter()
        rows, meta = packed.open_or_pack(c, tok, seq_len, os.path.join(folder, 'cache'),
                                         say=lambda _: None)
        seconds = time.perf_counter() - t0
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        tokens = sum(s['tokens'] for s in meta['splits'].values())
        return {'corpus_mb': size / 2**20, 'tokenizer': tok.name, 'seq_len': seq_len,
                'seconds': seconds, 'mb_per_s': size / 2**20 / seconds,
                'tokens_per_s': tokens / seconds, 'rows': len(rows['train']) + len(rows['test']),
                'peak_rss_mb': peak / 2**20, 'rss_before_mb': before / 2**20,
                'rss_growth_mb': (peak - before) / 2**20,
                'load_average': list(os.getloadavg())}
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--mb', type=float, default=25.0)
    parser.add_argument('--tokenizer', choices=('byte', 'bpe'), default='byte')
    parser.add_argument('--seq_len', type=int, default=1024)
    args = parser.parse_args()
    print(json.dumps(measure(args.mb, args.tokenizer, args.seq_len)))


if __name__ == '__main__':
    main()
