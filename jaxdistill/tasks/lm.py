"""Language modelling: packed next-token rows of text; perplexity, bits per byte, fidelity.

``config.task='lm'``: the ``data`` block names the text (``data.files``: your own .jsonl /
.txt / .parquet files, or ``data.name``: ``pytext``, Python's own documentation, bundled, or
any TFDS text dataset prepared as ArrayRecord, at ``data.text_key``), a tokenizer
(``data.tokenizer``: ``'byte'``, ``'bpe'`` with ``data.vocab_size``, or a Hugging Face
``tokenizer.json``: ``'teacher'``, the one beside an ``hf:`` teacher, or ``'hf:DIR'``, with the
BOS/EOS/pad ids its tokenizer_config.json / config.json name) and a row length
(``data.seq_len``). ``pytext`` is small and packed in memory; everything else is tokenized and
packed once, streaming, into ArrayRecord rows (`jaxdistill.data.packed`) that each process
reads its batches from, so the corpus may be larger than memory. Models map tokens
``[B, T]`` to logits ``[B, T, V]``; every loss is a per-token mean over ``mask`` (padding
never counts).

Scores on the test split, per target token: ``perplexity`` (exp of the mean NLL),
``accuracy`` (next-token top-1), ``agreement`` (student top-1 == teacher top-1) and
``kl_to_teacher`` (KL(teacher || student) at T = 1, nats); and ``bits_per_byte``: the summed
NLL of every target token over the test split's UTF-8 bytes, / ln 2, which compares models
with different tokenizers. They are sums reduced on device and divided on the host, so they
do not depend on the device layout.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Iterator
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from jaxdistill.crosstok import data as crosstok
from jaxdistill.data import corpus as corpus_lib
from jaxdistill.data import packed as packed_lib
from jaxdistill.data import text
from jaxdistill.data.pipeline import data_dir
from jaxdistill.errors import ConfigError
from jaxdistill.hf import teacher as hf_teacher
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks import BaseTask, StepInputs
from jaxdistill.tasks.evaluate import token_scores

TEXT_DATASETS = (text.NAME,)  # bundled, packed in memory; any other text streams from a cache
BPE_SAMPLE_BYTES = 64 << 20  # a BPE for data.files learns its merges on this much train text


def _check_config(config) -> None:
    d = config.data
    if d.seq_len < 2:
        raise ConfigError(f'data.seq_len={d.seq_len} must be >= 2 tokens for task=\'lm\'')
    if d.mixup:
        raise ConfigError("data.mixup mixes images: set data.mixup=0 for task='lm'")
    if d.labelled_fraction != 1:
        raise ConfigError("data.labelled_fraction applies to classification: set it to 1 for "
                          "task='lm' (text needs no labels)")
    if d.tokenizer == 'bpe' and d.vocab_size < 300:
        raise ConfigError(f"data.tokenizer='bpe' needs data.vocab_size >= 300, got "
                          f'{d.vocab_size} (e.g. 2048)')


class LanguageModelTask(BaseTask):
    """Next-token prediction on packed text rows ``{'inputs', 'targets', 'mask'}``."""

    name = 'lm'
    has_labels = True  # a label-only baseline can be trained
    unit, what = 'target tokens', 'token'
    columns = (('test perplexity', 'perplexity', 'num'),
               ('next-token accuracy', 'accuracy', 'pct'),
               *BaseTask.columns[1:])

    def __init__(self, config):
        _check_config(config)
        self.config, d = config, config.data
        # 'teacher' / 'hf:DIR': the checkpoint's own tokenizer.json (jaxdistill.hf.tokenizer)
        self._hf_tokenizer = (hf_teacher.lm_tokenizer(config)
                              if hf_teacher.uses_hf_tokenizer(d.tokenizer) else None)
        if corpus_lib.as_globs(d.files) or d.name not in TEXT_DATASETS:
            self._open_corpus(d)
        else:
            self._open_pytext(d)
        self.sample = text.as_source(self.train_rows).take([0])['inputs']
        # teacher and student with different tokenizers (None: one tokenizer)
        self.cross = crosstok.setup(config, self, data_dir(d))
        self.teacher_sample = self.cross.teacher_sample() if self.cross else self.sample

    def _open_pytext(self, d) -> None:
        ddir = data_dir(d)
        self.tokenizer = self._hf_tokenizer or text.get_tokenizer(
            d.tokenizer, data_dir=ddir, vocab_size=d.vocab_size)
        self.train_rows = text.load_packed(ddir, self.tokenizer, d.seq_len, 'train')
        self.test_rows = text.load_packed(ddir, self.tokenizer, d.seq_len, 'test')
        info = text.builder(ddir).info
        self.dataset = f'tfds:{text.NAME}/{info.version}'
        self.stats = {split: {'rows': len(rows['inputs']), 'tokens': int(rows['mask'].sum()),
                              'bytes': sum(len(t.encode('utf-8'))
                                           for t in text.load_texts(ddir, split))}
                      for split, rows in (('train', self.train_rows), ('test', self.test_rows))}
        self.data_provenance = {}

    def _open_corpus(self, d) -> None:
        """Streams the text into packed ArrayRecord rows once (process 0; the others wait and
        read them), then opens them lazily."""
        corpus = corpus_lib.from_config(d)
        root = os.path.expanduser(d.cache_dir) if d.cache_dir else corpus.default_cache_dir
        many = jax.process_count() > 1
        if jax.process_index() == 0:
            self.tokenizer = self._hf_tokenizer or _corpus_tokenizer(d, corpus, root)
            rows, meta = packed_lib.open_or_pack(corpus, self.tokenizer, d.seq_len, root)
        if many:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices('jaxdistill: packed text')
            if jax.process_index() != 0:
                self.tokenizer = self._hf_tokenizer or _corpus_tokenizer(d, corpus, root,
                                                                         train=False)
                rows, meta = packed_lib.open_or_pack(corpus, self.tokenizer, d.seq_len, root,
                                                     is_writer=False)
        self.train_rows, self.test_rows = rows['train'], rows['test']
        self.dataset = corpus.name
        self.stats = meta['splits']
        self.data_provenance = {
            'packed_cache': os.path.dirname(rows['train'].path),
            'fingerprint_sha256': rows['train'].fingerprint_sha256,
            'undecodable_bytes': meta['undecodable_bytes']}

    # -- checks ---------------------------------------------------------------------
    def _vocab(self, model: Model, key: str, sample=None) -> int:
        sample = self.sample if sample is None else sample
        params_state = jax.eval_shape(model.init, jax.random.key(0), sample)
        logits = jax.eval_shape(
            lambda ps: model.apply(ps[0], ps[1], sample, train=False)[0], params_state)
        if logits.ndim != 3 or logits.shape[:2] != sample.shape:
            raise ConfigError(f'{key} returns logits of shape {logits.shape} for tokens '
                              f'{sample.shape}; expected [batch, length, vocab]')
        return logits.shape[-1]

    def check_models(self, teacher: Model, student: Model) -> None:
        """Both models cover the tokenizer's ids and share one vocabulary (or, across
        tokenizers, each model covers its own tokenizer's ids)."""
        t_vocab = self._vocab(teacher, 'teacher.module', self.teacher_sample)
        s_vocab = self._vocab(student, 'student.module')
        if self.cross:
            t_tok = self.cross.teacher_tokenizer
            if t_vocab < t_tok.vocab_size:
                raise ConfigError(f'the teacher has {t_vocab} outputs but its tokenizer '
                                  f'(teacher.tokenizer) has {t_tok.vocab_size} ids: name the '
                                  "tokenizer it was trained with in teacher.tokenizer")
            self.cross_vocab = self.cross.vocab(s_vocab, t_vocab)
        elif t_vocab != s_vocab:
            raise ConfigError(
                f'teacher vocabulary {t_vocab} != student vocabulary {s_vocab}: token-level '
                'distillation needs one tokenizer; set teacher.kwargs.vocab_size and '
                "student.kwargs.vocab_size equal, or name the teacher's own tokenizer in "
                'teacher.tokenizer (cross-tokenizer distillation, jaxdistill/crosstok)')
        if s_vocab < self.tokenizer.vocab_size:
            raise ConfigError(
                f'the models have {s_vocab} outputs but the {self.config.data.tokenizer} '
                f'tokenizer has {self.tokenizer.vocab_size} ids: set *.kwargs.vocab_size >= '
                f'{self.tokenizer.vocab_size}')

    # -- data -----------------------------------------------------------------------
    def train_batches(self, seed: int, rows: str = 'all') -> grain.MapDataset:
        del rows  # text has no labels to withhold: every row serves every stage
        return self.batches_from(self.train_rows, seed)

    def batches_from(self, rows, seed: int) -> grain.MapDataset:
        """Batches of other row-aligned arrays (the train rows with a teacher cache, or the
        teacher's completions), shuffled exactly as the train rows are."""
        if self.cross:
            rows = self.cross.source(rows, 'train')
        return text.train_batches(rows, global_batch=self.config.data.batch_size,
                                  seed=seed, process_index=jax.process_index(),
                                  process_count=jax.process_count())

    def test_batches(self) -> Iterator[dict[str, np.ndarray]]:
        rows = self.cross.source(self.test_rows, 'test') if self.cross else self.test_rows
        return text.eval_batches(rows, global_batch=self.config.data.eval_batch_size,
                                 process_index=jax.process_index(),
                                 process_count=jax.process_count())

    @property
    def test_bytes(self) -> int:
        """UTF-8 bytes of the test documents: the denominator of bits per byte."""
        return int(self.stats['test']['bytes'])

    def provenance(self) -> dict[str, Any]:
        d = self.config.data
        out = {'dataset': self.dataset, 'tokenizer': d.tokenizer,
               'vocab_size': self.tokenizer.vocab_size, 'seq_len': d.seq_len}
        for split, s in self.stats.items():
            out.update({f'{split}_rows': int(s['rows']), f'{split}_tokens': int(s['tokens']),
                        f'{split}_bytes': int(s['bytes'])})
        if self.cross:
            out.update(teacher_tokenizer=getattr(self.cross.teacher_tokenizer, 'name', ''),
                       teacher_vocab_size=self.cross.teacher_tokenizer.vocab_size,
                       **self.cross.stats)
        return {**out, **self.data_provenance}

    # -- the step -------------------------------------------------------------------
    def prepare_fn(self, mixup: float = 0.0) -> Callable[[dict, jax.Array], StepInputs]:
        del mixup  # rejected at config time for text

        def prepare(batch: dict, rng: jax.Array) -> StepInputs:
            del rng
            labelled = batch.get('labelled')  # False: rows a signal made (on-policy samples)
            # another tokenizer: the teacher's tokens and the alignment (`jaxdistill.crosstok`)
            teacher = crosstok.step_teacher(batch) if 'teacher_inputs' in batch else None
            return StepInputs(batch['inputs'], batch['targets'], batch['mask'],
                              None if labelled is None else labelled[:, None], teacher)

        return prepare

    # -- evaluation -----------------------------------------------------------------
    def samples(self, models: dict[str, tuple[Model, dict]], mesh: Mesh) -> list[dict[str, str]]:
        """The report's greedy continuations (`continuations`); across tokenizers the
        teacher reads other tokens than the prompts', so only the students continue."""
        if self.cross:
            models = {k: v for k, v in models.items() if not k.startswith('teacher')}
        return self.continuations(models, mesh)

    def continuations(self, models: dict[str, tuple[Model, dict]], mesh: Mesh, n: int = 3,
                      new_tokens: int = 48) -> list[dict[str, str]]:
        """Greedy continuations of ``n`` held-out prompts by every `Decoder` in ``models``
        (``name -> (model, {'params', 'state'})``), decoded to text for the report."""
        from jaxdistill.models import sampling
        from jaxdistill.models.decoder import Decoder

        decoders = {k: v for k, v in models.items() if isinstance(v[0].module, Decoder)}
        if not decoders:
            return []
        rows = text.as_source(self.test_rows)
        prompt_len = max(1, min(32, self.config.data.seq_len // 2))
        new = min(new_tokens, *(m.module.max_len - prompt_len for m, _ in decoders.values()))
        if new < 1:
            return []
        picked = rows.take(np.linspace(0, len(rows) - 1, n).astype(int))
        prompts = picked['inputs'][:, :prompt_len]
        lengths = np.full(len(prompts), prompt_len, np.int32)
        out = [{'prompt': self.tokenizer.decode(p.tolist())} for p in prompts]
        for name, (model, model_vars) in decoders.items():
            with mesh:
                tokens, _ = sampling.generate(model.module, model_vars['params'], prompts,
                                              lengths, new, jax.random.key(0), greedy=True)
            tokens = mesh_lib.to_host(tokens)
            for sample, row in zip(out, tokens):
                sample[name] = self.tokenizer.decode(row[prompt_len:prompt_len + new].tolist())
        return out

    def _sum(self, fn: Callable, model_vars: tuple, mesh: Mesh) -> dict[str, float]:
        totals: dict[str, float] = {}
        for batch in self.test_batches():
            out = jax.device_get(fn(model_vars, mesh_lib.to_global(mesh, batch)))
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        return totals

    def scorer(self, model: Model, mesh: Mesh) -> Callable[[dict], dict[str, float]]:
        """A model's own test scores (used while the teacher trains)."""
        sums = jax.jit(lambda mv, batch: _own_sums(model, mv[0], batch))
        return lambda model_vars: token_scores(self._sum(sums, (model_vars,), mesh),
                                              self.test_bytes)

    def evaluator(self, mesh: Mesh, teacher: Model, teacher_vars: dict,
                  student: Model) -> Evaluator:
        if self.cross:
            from jaxdistill.crosstok.evaluate import Evaluator as CrossEvaluator

            return CrossEvaluator(self, mesh, teacher, teacher_vars, student, self.cross_vocab)
        return Evaluator(self, mesh, teacher, teacher_vars, student)


def _log_probs(model: Model, model_vars: dict, inputs: jax.Array) -> jax.Array:
    logits, _, _ = model.apply(model_vars['params'], model_vars['state'], inputs, train=False)
    return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def _own_sums(model: Model, model_vars: dict, batch: dict) -> dict[str, jax.Array]:
    logp = _log_probs(model, model_vars, batch['inputs'])
    mask = batch['mask'].astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, batch['targets'][..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logp, -1) == batch['targets']
    return {'nll': jnp.sum(nll * mask), 'correct': jnp.sum(correct * mask),
            'tokens': jnp.sum(mask)}



class Evaluator:
    """Scores students against the teacher, token by token, over the whole test split."""

    def __init__(self, task: LanguageModelTask, mesh: Mesh, teacher: Model, teacher_vars: dict,
                 student: Model):
        self.task, self.mesh, self.teacher_vars = task, mesh, teacher_vars

        def sums(model_vars, batch):
            student_vars, t_vars = model_vars
            out = _own_sums(student, student_vars, batch)
            logp_s = _log_probs(student, student_vars, batch['inputs'])
            logp_t = jax.lax.stop_gradient(_log_probs(teacher, t_vars, batch['inputs']))
            mask = batch['mask'].astype(jnp.float32)
            kl = jnp.sum(jnp.exp(logp_t) * (logp_t - logp_s), axis=-1)
            agree = jnp.argmax(logp_s, -1) == jnp.argmax(logp_t, -1)
            return {**out, 'kl': jnp.sum(kl * mask), 'agree': jnp.sum(agree * mask)}

        self._sums = jax.jit(sums)
        teacher_sums = jax.jit(lambda mv, batch: _own_sums(teacher, mv[0], batch))
        self._teacher = token_scores(task._sum(teacher_sums, (teacher_vars,), mesh),
                                    task.test_bytes)
        self.test_examples = int(task.stats['test']['tokens'])  # target tokens

    def teacher_scores(self) -> dict[str, float]:
        return dict(self._teacher)

    def __call__(self, student_vars: dict) -> dict[str, float]:
        t = self.task._sum(self._sums, (student_vars, self.teacher_vars), self.mesh)
        n = max(t['tokens'], 1.0)
        return {**token_scores(t, self.task.test_bytes), 'agreement': t['agree'] / n,
                'kl_to_teacher': t['kl'] / n}


def _corpus_tokenizer(d, corpus, root: str, train: bool = True):
    """``'byte'``, or ``'bpe'``: merges learnt once on the first `BPE_SAMPLE_BYTES` of the
    train documents and kept beside the packed rows (named by the corpus's fingerprint)."""
    if d.tokenizer == 'byte' or d.tokenizer != 'bpe':
        return text.get_tokenizer(d.tokenizer, data_dir=data_dir(d), vocab_size=d.vocab_size)
    from jaxdistill.data.tokenizer import BPETokenizer

    ident = hashlib.sha256(json.dumps(corpus.fingerprint(), sort_keys=True).encode())
    path = os.path.join(root, f'bpe-{d.vocab_size}-{ident.hexdigest()[:12]}.json')
    if not os.path.exists(path):
        if not train:
            raise ConfigError(f'data.cache_dir: {path} was not written by process 0: put '
                              'data.cache_dir on a file system every process shares')
        corpus.check()
        BPETokenizer.train(_prefix(corpus.documents('train'), BPE_SAMPLE_BYTES),
                           d.vocab_size).save(path)
    return BPETokenizer.load(path)


def _prefix(docs, limit: int):
    total = 0
    for doc in docs:
        yield doc
        total += len(doc)
        if total >= limit:
            return
