"""TFDS builder `pytext`: Python's own documentation as an offline language-model corpus.

Every CPython ships ``pydoc_data.topics`` (the text behind ``help('for')``: the language
reference's chapters, ~465 kB of English with code). Nothing is downloaded.

Documents (deterministic): each topic is cut at its ``====`` section headings, giving
documents named ``topic`` (the part before the first section) and ``topic/Heading``. Topics
overlap (``try`` is also a section of ``compound``), so a document whose body (the text below
its heading) occurs inside another document's body is dropped, and of identical bodies only
the first name (sorted) is kept. On Python 3.11.7 this leaves 113 documents, 373,907
UTF-8 bytes, and the splits share no paragraph longer than 100 characters (the only shared
one longer than 80 is a "Changed in version 3.6" note).

Split (fixed, by name, so it does not depend on the order or number of documents): a
document is ``test`` when ``int(sha256(name), 16) % 10 == 0``, else ``train`` (3.11.7: 102
train documents / 327,886 bytes, 11 test documents / 46,021 bytes).

Reproducibility caveat: the text is whatever the preparing interpreter ships, and CPython
patch releases do edit these docs. Version 1.0.0 names the recipe, not the bytes; the
prepared dataset records ``python_version`` and the ``sha256`` of its documents in
``builder.info.metadata`` (quote both with results). Reading never depends on the local
Python, only preparing does.
"""

from __future__ import annotations

import hashlib
import os
import platform
import re
from collections.abc import Iterator

import grain
import numpy as np
import tensorflow_datasets as tfds

from jaxdistill.data.pipeline import prepare_offline
from jaxdistill.data.tokenizer import BOS_ID, EOS_ID, PAD_ID, BPETokenizer, ByteTokenizer
from jaxdistill.errors import ConfigError

NAME = 'pytext'
TEST_MODULUS = 10  # 1 in 10 documents (by name hash) is test


def _sections(topic: str, text: str) -> list[tuple[str, str]]:
    """Cuts a topic at reST section headings (a title line underlined by as many '=')."""
    lines = text.split('\n')
    starts, names = [0], [topic]
    for i in range(1, len(lines)):
        title, rule = lines[i - 1].strip(), lines[i]
        if title and re.fullmatch(r'=+', rule) and len(rule) == len(lines[i - 1]):
            starts.append(i - 1)
            names.append(f'{topic}/{title}')
    starts.append(len(lines))
    return [(name, '\n'.join(lines[a:b]).strip('\n'))
            for name, a, b in zip(names, starts, starts[1:])]


def _body(text: str) -> str:
    """The text below a document's two heading lines (title and underline)."""
    parts = text.split('\n', 2)
    return (parts[2] if len(parts) == 3 else text).strip()


def documents() -> list[tuple[str, str]]:
    """``(name, text)`` of every document of this interpreter's pydoc topics, sorted by name."""
    from pydoc_data.topics import topics

    docs = [d for topic in sorted(topics) for d in _sections(topic, topics[topic])]
    bodies = {name: _body(text) for name, text in docs}

    def redundant(name: str) -> bool:
        body = bodies[name]
        return any(other != name and body in bodies[other]
                   and (len(bodies[other]) > len(body) or other < name) for other in bodies)

    return sorted((name, text) for name, text in docs if not redundant(name))


def split_of(name: str) -> str:
    """``'test'`` or ``'train'``: a pure function of the document name."""
    digest = int(hashlib.sha256(name.encode('utf-8')).hexdigest(), 16)
    return 'test' if digest % TEST_MODULUS == 0 else 'train'


def _digest(docs: list[tuple[str, str]]) -> str:
    h = hashlib.sha256()
    for name, text in docs:
        h.update(name.encode('utf-8') + b'\0' + text.encode('utf-8') + b'\0')
    return h.hexdigest()


class Pytext(tfds.core.GeneratorBasedBuilder):
    """Python's pydoc topics as a TFDS text dataset (ArrayRecord, no TensorFlow)."""

    VERSION = tfds.core.Version('1.0.0')
    RELEASE_NOTES = {'1.0.0': 'pydoc_data.topics sections, deduplicated, 1/10 test by '
                              'sha256(name).'}

    def _info(self) -> tfds.core.DatasetInfo:
        docs = documents()
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({'name': tfds.features.Text(),
                                                 'text': tfds.features.Text()}),
            homepage='https://docs.python.org/3/reference/',
            metadata=tfds.core.MetadataDict(python_version=platform.python_version(),
                                            sha256=_digest(docs), documents=len(docs)),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # nothing to download: the text ships with Python
        docs = documents()
        return {split: self._generate_examples([d for d in docs if split_of(d[0]) == split])
                for split in ('train', 'test')}

    def _generate_examples(self, docs):
        for name, text in docs:
            yield name, {'name': name, 'text': text}


def builder(data_dir: str) -> tfds.core.DatasetBuilder:
    """The `pytext` builder in ``data_dir``, prepared once (offline) as ArrayRecord."""
    b = tfds.builder(NAME, data_dir=os.path.expanduser(data_dir))
    if not b.is_prepared():
        prepare_offline(b)
    return b


def load_texts(data_dir: str, split: str) -> list[str]:
    """The texts of ``split`` in name order (the order TFDS stored them in is a hash order)."""
    source = builder(data_dir).as_data_source(split=split)
    records = [source[i] for i in range(len(source))]
    records.sort(key=lambda r: r['name'])
    return [r['text'].decode('utf-8') for r in records]


def get_tokenizer(kind: str, *, data_dir: str, vocab_size: int = 0):
    """``'byte'``, or ``'bpe'``: a BPE trained on the train split once, then read back.

    The BPE is cached as ``bpe-{vocab_size}.json`` next to the prepared data, so every
    process and every run of one data dir uses the same merges.
    """
    if kind == 'byte':
        return ByteTokenizer()
    if kind != 'bpe':
        raise ConfigError(f"tokenizer={kind!r} is unknown: use 'byte' or 'bpe'")
    path = os.path.join(builder(data_dir).data_dir, f'bpe-{vocab_size}.json')
    if not os.path.exists(path):
        BPETokenizer.train(load_texts(data_dir, 'train'), vocab_size).save(path)
    return BPETokenizer.load(path)


def pack(docs_token_ids, seq_len: int, *, bos_id: int = BOS_ID, eos_id: int = EOS_ID,
         pad_id: int = PAD_ID) -> dict[str, np.ndarray]:
    """Packs documents into next-token rows ``{'inputs', 'targets', 'mask'}``, ``[N, seq_len]``.

    The documents, each as ``BOS doc EOS``, are concatenated into one stream; row ``i``
    covers stream positions ``i * seq_len .. (i + 1) * seq_len`` (``seq_len + 1`` tokens:
    ``inputs = row[:-1]``, ``targets = row[1:]``), so every stream token but the first is a
    target exactly once. Only the final row is padded; ``mask`` is False exactly on padded
    targets. Attention is **not** blocked across documents: a row may see the end of the
    previous document before its BOS, as in GPT-2/lm1b-style packing; the EOS/BOS pair
    marks the boundary. (Exact per-document attention would need segment ids.)
    """
    if seq_len < 1:
        raise ConfigError(f'seq_len={seq_len} must be >= 1')
    pieces = []
    for ids in docs_token_ids:
        pieces += [[bos_id], list(ids), [eos_id]]
    stream = np.fromiter((t for p in pieces for t in p), dtype=np.int32)
    n_rows = max(1, -(-(len(stream) - 1) // seq_len))
    padded = np.full(n_rows * seq_len + 1, pad_id, np.int32)
    padded[:len(stream)] = stream
    starts = np.arange(n_rows)[:, None] * seq_len + np.arange(seq_len + 1)[None, :]
    rows = padded[starts]
    mask = starts[:, 1:] < len(stream)
    return {'inputs': rows[:, :-1], 'targets': rows[:, 1:], 'mask': mask}


def load_packed(data_dir: str, tokenizer, seq_len: int, split: str) -> dict[str, np.ndarray]:
    """``split`` of `pytext`, tokenized with ``tokenizer`` and packed to ``seq_len``."""
    ids = [tokenizer.encode(text) for text in load_texts(data_dir, split)]
    return pack(ids, seq_len, bos_id=tokenizer.bos_id, eos_id=tokenizer.eos_id,
                pad_id=tokenizer.pad_id)


class PackedSource:
    """Packed rows as a random-access source: ``source[i]`` is row ``i`` of every array."""

    def __init__(self, packed: dict[str, np.ndarray]) -> None:
        self.arrays = packed

    def __len__(self) -> int:
        return len(next(iter(self.arrays.values())))  # any array: all have one row per item

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}

    def take(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[np.asarray(ids)] for k, v in self.arrays.items()}


def as_source(packed) -> PackedSource:
    """Arrays (``{'inputs', 'targets', 'mask'}``) or anything with ``take`` and ``len`` (the
    streamed rows of `jaxdistill.data.packed`) as a random-access row source."""
    return packed if hasattr(packed, 'take') else PackedSource(packed)


def train_batches(packed, *, global_batch: int, seed: int,
                  process_index: int = 0, process_count: int = 1) -> grain.MapDataset:
    """This process's rows of global batch ``step`` as ``ds[step]`` (as `pipeline.train_dataset`).

    Row indices are shuffled by Grain (a new permutation every epoch, from ``seed``) and
    process ``p`` takes rows ``[p * B/P, (p + 1) * B/P)`` of every global batch (the block
    its devices hold), so batch ``s`` is a pure function of ``(seed, s)`` and the processes
    together read exactly the single-process global batch, in the same order.
    """
    if global_batch % process_count:
        raise ConfigError(f'data.batch_size={global_batch} is not divisible by the '
                          f'{process_count} processes: use a multiple of {process_count}')
    source = as_source(packed)
    local = global_batch // process_count
    own = process_index * local  # this process's contiguous block of every global batch
    ids = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    ids = ids.batch(global_batch, drop_remainder=True)
    return ids.map(lambda batch_ids: source.take(np.asarray(batch_ids)[own:own + local]))


def eval_batches(packed, *, global_batch: int, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """Every row once, in order, in full batches; rows past the end repeat the last row with
    ``mask`` all False, so token means over ``mask`` count each real target once."""
    source = as_source(packed)
    n, local = len(source), global_batch // process_count
    for start in range(0, n, global_batch):
        ids = start + np.arange(local) * process_count + process_index
        batch = source.take(np.minimum(ids, n - 1))
        batch['mask'] = batch['mask'] & (ids < n)[:, None]
        yield batch
