"""The cross-tokenizer data path: the teacher's tokenizer, aligned batches, the step's view.

``teacher.tokenizer`` names the teacher's tokenizer (``''``: an ``hf:`` teacher's own
``tokenizer.json``, else ``data.tokenizer``; or ``'byte'``, ``'bpe'`` (``data.vocab_size``
merges), ``'bpe:N'``, ``'hf:DIR'``); ``data.tokenizer`` stays the student's.
``distill.cross_tokenizer`` switches the alignment on; it is switched on by itself, with a
one-line note, when the two tokenizers differ or a loss needs it (``uld``, ``aligned_kl``).

Both tokenizations of every document are aligned by byte offsets (`align.Stream`, ~20 bytes
per token each); each batch's teacher tokens and alignment arrays are cut from them in the
data pipeline (`AlignedSource.take`, on the prefetch thread), so the step only gathers. For a
corpus packed on disk (``data.files``, a TFDS text dataset) the streams are written once
beside its packed rows and memory-mapped (`crosstok.streams`): host memory does not grow with
the corpus, and later runs do not tokenize the text again. The bundled corpus's are held in
memory. A cached teacher's top-k is built and read a batch at a time like the
same-tokenizer cache's (`teacher_train_take`, `check_cache`).
"""

from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

from jaxdistill.crosstok import align
from jaxdistill.crosstok import bytes as xbytes
from jaxdistill.crosstok.losses import Alignment, CrossTeacher, CrossVocab
from jaxdistill.errors import ConfigError

LOSSES = ('uld', 'aligned_kl', 'byte_kl')  # the losses that compare two tokenizations
ALLOWED = LOSSES + ('ce',)  # what an objective may hold when the tokenizers differ


def wanted(config) -> bool:
    names = {e['name'] for e in config.distill.losses}
    return bool(config.distill.cross_tokenizer) or bool(names & set(LOSSES))


def teacher_tokenizer(config, student_tokenizer, data_dir: str):
    """The teacher's tokenizer named by ``teacher.tokenizer`` (see the module docstring)."""
    import pathlib

    from jaxdistill.data import text
    from jaxdistill.hf import teacher as hf_teacher
    from jaxdistill.hf.tokenizer import load_lm_tokenizer

    spec = str(config.teacher.tokenizer or '')
    ckpt = str(config.teacher.checkpoint or '')
    if spec in ('', 'teacher') and hf_teacher.is_hf(ckpt):
        return load_lm_tokenizer(hf_teacher.resolve(ckpt), key='teacher.tokenizer')
    if spec == 'teacher':
        raise ConfigError("teacher.tokenizer='teacher' reads tokenizer.json beside an hf: "
                          f'teacher, and teacher.checkpoint={ckpt!r} is not one: set '
                          "teacher.tokenizer='hf:DIR', 'byte' or 'bpe:N'")
    if not spec:
        return student_tokenizer
    if spec.startswith('hf:'):
        return load_lm_tokenizer(pathlib.Path(spec[3:]).expanduser(), key='teacher.tokenizer')
    kind, _, size = spec.partition(':')
    if kind not in ('byte', 'bpe') or (size and not size.isdigit()):
        raise ConfigError(f"teacher.tokenizer={spec!r} is unknown: use '' (the teacher's own), "
                          "'byte', 'bpe', 'bpe:N' or 'hf:DIR'")
    vocab = int(size) if size else int(config.data.vocab_size)
    if kind == 'bpe' and vocab < 300:
        raise ConfigError(f"teacher.tokenizer={spec!r} needs a BPE size >= 300: write "
                          "'bpe:2048' (or set data.vocab_size)")
    return text.get_tokenizer(kind, data_dir=data_dir, vocab_size=vocab)


class AlignedSource:
    """Packed student rows plus, per row, the teacher's tokens and the alignment arrays."""

    def __init__(self, rows: Any, aligner: align.Aligner):
        from jaxdistill.data import text

        self.rows, self.aligner = text.as_source(rows), aligner

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[0] for k, v in self.take(np.array([i])).items()}

    def take(self, ids) -> dict[str, np.ndarray]:
        ids = np.asarray(ids)
        return {**self.rows.take(ids), **self.aligner.rows(ids)}


def step_teacher(batch: dict, sparse: Any = None) -> CrossTeacher:
    """The batch's `CrossTeacher` (inside the jitted step); ``sparse``: a cached teacher's
    decoded top-k (`signals.cache.decode`), None when the teacher runs in the step."""
    alignment = Alignment(batch['xt_pos'], batch['xt_aligned'], batch['xt_same'],
                          batch['xt_span'], batch['xt_teacher_span'], batch['xt_span_mask'],
                          batch.get('xt_byte_pos'), batch.get('xt_byte_depth'),
                          batch.get('xt_byte_lo'), batch.get('xt_byte_hi'), batch.get('xt_byte'))
    return CrossTeacher(batch['teacher_inputs'], batch['teacher_targets'],
                        batch['teacher_mask'], alignment, None, sparse,
                        batch.get('xt_target_lp'))


def with_logits(teacher: CrossTeacher, logits: jax.Array) -> CrossTeacher:
    return teacher._replace(logits=logits)


def _documents(config, split: str, data_dir: str) -> list[str]:
    from jaxdistill.data import corpus as corpus_lib
    from jaxdistill.data import text

    d = config.data
    if not corpus_lib.as_globs(d.files) and d.name in (text.NAME,):
        return text.load_texts(data_dir, split)
    return list(corpus_lib.from_config(d).documents(split))


def _on_disk(config, task, teacher_tok, s_surf, t_surf) -> dict[str, tuple] | None:
    """Both tokenizations of a corpus packed on disk (``data.files``, a TFDS text dataset),
    memory-mapped from beside its packed rows (`crosstok.streams`; process 0 writes them
    once); None for the bundled corpus, which is held in memory."""
    from jaxdistill.crosstok import streams
    from jaxdistill.data import corpus as corpus_lib
    from jaxdistill.data.packed import PackedRows, tokenizer_sha256

    if not isinstance(task.train_rows, PackedRows):
        return None
    corpus = corpus_lib.from_config(config.data)
    args = (os.path.dirname(task.train_rows.path), corpus.records,
            {'student': (task.tokenizer, 'data.tokenizer', s_surf),
             'teacher': (teacher_tok, 'teacher.tokenizer', t_surf)},
            tokenizer_sha256(teacher_tok))
    say = print if jax.process_index() == 0 else (lambda _: None)
    if jax.process_index() == 0:
        out = streams.open_or_build(*args, say=say)
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices('jaxdistill: cross-tokenizer streams')
        if jax.process_index() != 0:
            out = streams.open_or_build(*args, is_writer=False, say=say)
    return out


class CrossTokenizer:
    """Both tokenizations of the train and test text, aligned (built once per run)."""

    def __init__(self, config, task, data_dir: str, teacher_tok):
        from jaxdistill.data import text

        self.student_tokenizer, self.teacher_tokenizer = task.tokenizer, teacher_tok
        self.seq_len = int(config.data.seq_len)
        self.teacher_len = int(config.teacher.seq_len or config.data.seq_len)
        self.map = align.vocab_map(task.tokenizer, teacher_tok)
        s_surf = align.vocab_surfaces(task.tokenizer, 'data.tokenizer')
        t_surf = align.vocab_surfaces(teacher_tok, 'teacher.tokenizer')
        self.trie = xbytes.prefix_trie(t_surf, teacher_tok.eos_id)
        self.student_surfaces = s_surf
        self.aligners, self.teacher_rows = {}, {}
        on_disk = _on_disk(config, task, teacher_tok, s_surf, t_surf)
        for split, rows in (('train', task.train_rows), ('test', task.test_rows)):
            if on_disk:
                s, t, matched = on_disk[split]
            else:
                docs = _documents(config, split, data_dir)
                s = align.encode_stream(task.tokenizer, docs, 'data.tokenizer', s_surf)
                t = align.encode_stream(teacher_tok, docs, 'teacher.tokenizer', t_surf)
                matched = None
            al = align.Aligner(s, t, self.seq_len, self.teacher_len, self.map,
                               pad_id=teacher_tok.pad_id, trie=self.trie, matched=matched)
            _check_rows(al, rows, split)
            self.aligners[split] = al
            if split == 'test':  # the teacher's own rows: its scores as in its own run
                self.teacher_rows[split] = text.pack(
                    _stream_docs(t), self.teacher_len, bos_id=teacher_tok.bos_id,
                    eos_id=teacher_tok.eos_id, pad_id=teacher_tok.pad_id)
        train = self.aligners['train']
        self.stats = {'shared_vocab': int(len(self.map.shared_student)),
                      'teacher_len': self.teacher_len,
                      'teacher_rows_truncated': int(train.truncated),
                      'normalisation_changed_chars': int(train.t.changed_chars
                                                         + train.s.changed_chars)}

    def source(self, rows, split: str = 'train') -> AlignedSource:
        return AlignedSource(rows, self.aligners[split])

    def vocab(self, student_vocab: int, teacher_vocab: int) -> CrossVocab:
        cats = xbytes.student_categories(self.student_surfaces, self.student_tokenizer.eos_id,
                                         int(student_vocab))
        return CrossVocab(self.map.shared_student, self.map.shared_teacher,
                          self.map.student_to_teacher, int(student_vocab), int(teacher_vocab),
                          xbytes.byte_vocab(self.trie, cats, int(teacher_vocab)))

    def teacher_train_take(self, ids) -> dict[str, np.ndarray]:
        """Train rows ``ids``' teacher tokens and byte offsets (the teacher cache is built
        from these, a batch at a time)."""
        al, ids = self.aligners['train'], np.asarray(ids)
        r = al.rows(ids)
        return {'inputs': r['teacher_inputs'], 'targets': r['teacher_targets'],
                'ends': al.teacher_ends(ids)}

    def check_cache(self, cache, path: str, batch: int = 1024) -> None:
        """A cache's teacher tokens and offsets are this run's (else it was built with
        another tokenizer or text): one line naming the path. ``cache`` is read a batch at a
        time (`store.StoreRows`, or arrays in memory)."""
        from jaxdistill.data import text

        source = text.as_source(cache)
        n = self.aligners['train'].num_rows
        for start in range(0, n, batch):
            ids = np.arange(start, min(start + batch, n))
            got = source.take(ids) if len(source) == n else {}
            mine = self.teacher_train_take(ids)
            if ('xt_teacher_ids' not in got
                    or not np.array_equal(got['xt_teacher_ids'], mine['inputs'])
                    or not np.array_equal(got['xt_teacher_end'], mine['ends'])):
                raise ConfigError(f'distill.cache.path={path} holds teacher tokens that are not '
                                  "this run's teacher.tokenizer's of this text: it was built "
                                  'with another tokenizer; point distill.cache.path elsewhere '
                                  'or remove it to rebuild it')

    def teacher_sample(self) -> np.ndarray:
        return self.aligners['train'].rows(np.array([0]))['teacher_inputs']


def _stream_docs(stream: align.Stream) -> list[np.ndarray]:
    """The documents' token ids back from a stream (without their BOS and EOS)."""
    bounds = [*stream.doc_starts.tolist(), len(stream.ids)]
    return [stream.ids[a + 1:b - 1] for a, b in zip(bounds, bounds[1:])]


def _check_rows(al: align.Aligner, rows, split: str) -> None:
    """The student stream cuts the rows the task packed (first and last row compared)."""
    from jaxdistill.data import text

    source = text.as_source(rows)
    n = len(source)
    if n != al.num_rows:
        raise ConfigError(f'cross-tokenizer alignment: the {split} split packs into {n} rows '
                          f'but its text into {al.num_rows}: the packed rows are not of this '
                          'text (remove data.cache_dir\'s packed rows to rebuild them)')
    ids = np.array([0, n - 1])
    got, mine = source.take(ids), al.student_rows(ids)
    for k in ('inputs', 'targets', 'mask'):
        if not np.array_equal(np.asarray(got[k]), mine[k]):
            raise ConfigError(f'cross-tokenizer alignment: the packed {split} rows differ from '
                              'the text tokenized again; remove the packed rows to rebuild them')


def setup(config, task, data_dir: str) -> CrossTokenizer | None:
    """The run's `CrossTokenizer` when the alignment is on (see the module docstring)."""
    from jaxdistill.data.packed import tokenizer_sha256

    teacher_tok = teacher_tokenizer(config, task.tokenizer, data_dir)
    differ = tokenizer_sha256(teacher_tok) != tokenizer_sha256(task.tokenizer)
    if not (differ or wanted(config)):
        return None
    names = [e['name'] for e in config.distill.losses]
    if differ and not config.distill.cross_tokenizer and jax.process_index() == 0:
        print(f'note: the teacher\'s tokenizer ({_describe(teacher_tok)}) is not the student\'s '
              f'({_describe(task.tokenizer)}): distill.cross_tokenizer is on (losses '
              f'{", ".join(n for n in names if n in LOSSES) or "none"})')
    _check(config, differ)
    return CrossTokenizer(config, task, data_dir, teacher_tok)


def _describe(tokenizer) -> str:
    return f'{getattr(tokenizer, "name", type(tokenizer).__name__)}, {tokenizer.vocab_size} ids'


def check_config(config) -> None:
    """The checks that need no tokenizer (before the teacher is looked for): the spec of
    ``teacher.tokenizer``, and what a run declared cross-tokenizer may hold."""
    spec = str(config.teacher.tokenizer or '')
    kind, _, size = spec.partition(':')
    if spec and spec != 'teacher' and not spec.startswith('hf:') and (
            kind not in ('byte', 'bpe') or (size and not size.isdigit())):
        raise ConfigError(f"teacher.tokenizer={spec!r} is unknown: use '' (the teacher's own), "
                          "'byte', 'bpe', 'bpe:N' or 'hf:DIR'")
    from jaxdistill import losses

    for i, entry in enumerate(config.distill.losses):
        entry = dict(entry)
        if entry.get('name') in LOSSES:
            name = entry.pop('name')
            entry.pop('weight', None)
            try:
                losses.validate_hyper(name, **entry)
            except ConfigError as e:
                raise ConfigError(f'distill.losses[{i}]: {e}') from None
    declared = spec and spec not in ('teacher', str(config.data.tokenizer))
    if config.task == 'lm' and (declared or wanted(config)):
        _check(config, bool(declared))


def _check(config, differ: bool) -> None:
    names = [e['name'] for e in config.distill.losses]
    for i, name in enumerate(names):
        if name not in ALLOWED:
            raise ConfigError(
                f'distill.losses[{i}]={name!r} compares two distributions over one vocabulary, '
                f'and distill.cross_tokenizer is on: use {" / ".join(LOSSES)} (with ce)')
    if not set(names) & set(LOSSES):
        raise ConfigError("distill.cross_tokenizer is on but distill.losses has no cross-"
                          "tokenizer term: add {'name': 'byte_kl'}, {'name': 'aligned_kl'} or "
                          "{'name': 'uld'}")
    if config.teachers:
        raise ConfigError('distill.cross_tokenizer distils one teacher: set teachers=()')
    if config.distill.teacher_signal not in ('online', 'cached'):
        raise ConfigError(f'distill.teacher_signal={config.distill.teacher_signal!r} does not '
                          "work across tokenizers: use 'online' or 'cached'")
    if differ and not config.teacher.checkpoint:
        raise ConfigError('teacher.checkpoint is empty, and a teacher trained here would read '
                          "the student's tokens: train it with its own tokenizer first "
                          '(--config.data.tokenizer=... in its own workdir) and set '
                          'teacher.checkpoint to that workdir')
    if int(config.teacher.seq_len) < 0:
        raise ConfigError(f'teacher.seq_len={config.teacher.seq_len} must be >= 0 (0: '
                          'data.seq_len)')
