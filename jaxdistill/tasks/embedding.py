"""Sentence embeddings: offline sentences, the teacher's own tokenizer; similarity fidelity.

``config.task='embedding'``: ``data.name='pysentences'`` (prose sentences of Python's
documentation, `jaxdistill.data.sentences`) or your own text, one sentence or passage per
record (``data.files`` / a TFDS text dataset at ``data.text_key``, `jaxdistill.data.corpus`),
``data.tokenizer='teacher'`` (the
``tokenizer.json`` beside an ``hf:`` teacher checkpoint) or ``'hf:DIR'``, and
``data.seq_len`` tokens per sentence. Every sentence is padded to ``seq_len`` (one shape,
one compilation); longer ones are truncated, keeping the final ``[SEP]``, with a
`jaxdistill.hf.TruncationWarning`, and counted in the provenance. ``seq_len`` may not
exceed the teacher's own maximum (256 for MiniLM).

Models map ``{'input_ids', 'attention_mask'}`` ``[B, L]`` to an output whose ``logits_key``
entry is the sentence embedding ``[B, d]``; for ``bert`` that is ``'embedding'`` (mean over
the attention mask, then L2 normalisation, as the all-MiniLM-L6-v2 model card specifies),
tappable as ``'mean_pool'``. There are no labels and no logits, so ``distill.losses`` holds
feature terms only, on that tap: ``feature_cosine``/``feature_mse`` (a learned projection
when the widths differ), ``similarity_mse`` or ``rkd`` (relations within the batch).

Scores on the held-out sentences (float64 numpy, `jaxdistill.tasks.evaluate`): ``spearman``
between the student's and the teacher's cosine similarities over all pairs,
``nn_agreement_at_10`` (the fraction of the teacher's 10 nearest neighbours of a sentence
that are among the student's 10), ``sentences_per_second`` (the same batch of
``data.eval_batch_size`` test sentences for every model, the best of 3 timings of at least
0.5 s after one compiling run, on whatever machine runs the job), and for students
``size_ratio`` (teacher parameters / student parameters) and ``speedup`` (student /
teacher sentences per second).
The teacher's own ``spearman`` and ``nn_agreement_at_10`` compare it with itself: 1.0 unless
the evaluation is broken (a sanity value). Without labels there is nothing to train a
baseline on, so with ``train.baseline`` the ``baseline`` entry is the student *at
initialisation* (the distilled student's step 0), scored the same way.
"""

from __future__ import annotations

import hashlib
import pathlib
import time
from collections.abc import Callable
from typing import Any

import grain
import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxdistill import hf, losses
from jaxdistill.data import corpus as corpus_lib
from jaxdistill.data import sentences, text
from jaxdistill.data.pipeline import data_dir
from jaxdistill.errors import CheckpointError, ConfigError, DataError
from jaxdistill.hf import teacher as hf_teacher
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks import BaseTask, StepInputs, evaluate

DATASETS = (sentences.NAME,)
NEIGHBOURS = 10
EXAMPLE_LOSS = "{'name': 'feature_cosine', 'student': 'mean_pool', 'teacher': 'mean_pool'}"


def _check_config(config) -> None:
    d = config.data
    if d.mixup or d.labelled_fraction != 1:
        raise ConfigError("data.mixup and data.labelled_fraction apply to classification: set "
                          "data.mixup=0 and data.labelled_fraction=1 for task='embedding'")
    if d.seq_len < 2:
        raise ConfigError(f'data.seq_len={d.seq_len} must be >= 2 tokens ([CLS] and [SEP])')
    if config.teachers:
        raise ConfigError("task='embedding' distils one teacher: set teachers=()")
    if not config.teacher.checkpoint:
        raise ConfigError("task='embedding' has no labels to train a teacher on: set "
                          "teacher.checkpoint='hf:minilm', 'hf:DIR' or a jaxdistill workdir")
    for i, entry in enumerate(config.distill.losses):
        name = dict(entry).get('name')
        if name not in losses.names('feature', 'relational'):
            raise ConfigError(
                f"distill.losses[{i}] ({name!r}): task='embedding' has sentence embeddings, "
                f'not labels or logits; use feature losses on them, e.g. {EXAMPLE_LOSS}, '
                "'similarity_mse' or 'rkd' on the same tap")


def tokenizer_dir(config) -> pathlib.Path:
    """The directory of ``tokenizer.json``: beside the teacher's weights, or ``data.tokenizer``."""
    return hf_teacher.tokenizer_dir(config, 'embedding')


def _model_limit(directory: pathlib.Path) -> int | None:
    has_config = any((directory / f).is_file()
                     for f in ('config.json', 'sentence_bert_config.json'))
    return hf.model_max_length(directory) if has_config else None


class EmbeddingTask(BaseTask):
    """Sentence-embedding distillation on ``{'input_ids', 'attention_mask'}`` rows."""

    name = 'embedding'
    has_labels = False  # the baseline is the untrained student (see the module docstring)
    columns = (('Spearman vs teacher', 'spearman', 'num'),
               ('NN@10 agreement', 'nn_agreement_at_10', 'pct'),
               ('sentences/s', 'sentences_per_second', 'num'), ('params', 'params', 'num'),
               ('size ratio', 'size_ratio', 'num'), ('steps', 'steps', 'num'))

    @classmethod
    def preamble(cls, results: dict[str, Any]) -> str:
        return (f"Dataset `{results['provenance']['dataset']}`, {results['test_examples']:,} "
                "held-out sentences. Spearman: rank correlation of the student's and the "
                "teacher's cosine similarities over every pair of sentences; NN@10: the "
                "fraction of the teacher's 10 nearest neighbours of a sentence among the "
                "student's 10; sentences/s: one batch, this machine; size ratio: teacher / "
                'student parameters. The teacher row compares it with itself (sanity: 1).')

    @classmethod
    def summary(cls, results: dict[str, Any]) -> list[str]:
        if 'baseline' not in results:
            return []
        b, s = results['baseline'], results['student']
        return [f"Distillation moved the Spearman correlation with the teacher from "
                f"{b['spearman']:.4f} (the untrained student: without labels there is no "
                f"baseline to train) to {s['spearman']:.4f}, and NN@10 agreement from "
                f"{100 * b['nn_agreement_at_10']:.2f} % to "
                f"{100 * s['nn_agreement_at_10']:.2f} %.", '']

    def __init__(self, config):
        _check_config(config)
        self.config, d = config, config.data
        self.tokenizer_dir = tokenizer_dir(config)
        try:
            tokenizer = hf.load_tokenizer(self.tokenizer_dir)
        except CheckpointError as e:
            raise CheckpointError(f'data.tokenizer={d.tokenizer!r}: {e}') from None
        limit = _model_limit(self.tokenizer_dir)
        if limit is not None and d.seq_len > limit:
            raise ConfigError(f'data.seq_len={d.seq_len} exceeds the maximum sequence length '
                              f'{limit} of {self.tokenizer_dir}: lower data.seq_len')
        self.vocab_size = tokenizer.get_vocab_size()
        ddir = data_dir(d)
        if corpus_lib.as_globs(d.files) or d.name not in DATASETS:
            self._read_corpus(corpus_lib.from_config(d))
        else:
            self.train_sentences = sentences.load(ddir, 'train')
            self.test_sentences = sentences.load(ddir, 'test')
            self.dataset = f'tfds:{sentences.NAME}/{sentences.version(ddir)}'
            meta = sentences.metadata(ddir)
            self._data_provenance = {'dataset_sha256': meta['sha256'],
                                     'python_version': meta['python_version']}
        self.train_rows, self.truncated_train = _encode(tokenizer, self.train_sentences,
                                                        d.seq_len)
        self.test_rows, self.truncated_test = _encode(tokenizer, self.test_sentences, d.seq_len)
        self.sample = {k: v[:1] for k, v in self.train_rows.items()}

    def _read_corpus(self, corpus: corpus_lib.Corpus) -> None:
        """One sentence or passage per record of ``data.files`` (or a TFDS text dataset),
        in file order; held in memory as padded rows (``2 * seq_len`` int32 per record)."""
        corpus.check()
        split: dict[str, list[str]] = {'train': [], 'test': []}
        for name, doc in corpus.records():
            split[name].append(doc)
        self.train_sentences, self.test_sentences = split['train'], split['test']
        for split, items in (('train', self.train_sentences), ('test', self.test_sentences)):
            if not items:
                raise DataError(f'{corpus.name}: the {split} split has no records; give more '
                                'text, data.test_files, or a larger data.test_fraction')
        digest = hashlib.sha256()
        for s in self.train_sentences + ['\0'] + self.test_sentences:
            digest.update(s.encode('utf-8', errors='surrogatepass') + b'\0')
        self.dataset = corpus.name
        self._data_provenance = {'dataset_sha256': digest.hexdigest(), 'python_version': None,
                                 'undecodable_bytes': corpus.bad_bytes}

    # -- checks ---------------------------------------------------------------------
    def _check_model(self, model: Model, key: str) -> int:
        module = model.module
        for kwarg, need, fix in (('vocab_size', self.vocab_size, "the tokenizer's ids"),
                                 ('max_len', self.config.data.seq_len, 'data.seq_len')):
            have = getattr(module, kwarg, None)
            if isinstance(have, int) and have < need:
                raise ConfigError(f'{key}.kwargs.{kwarg}={have} is below {fix} ({need}): '
                                  f'set {key}.kwargs.{kwarg} >= {need}')
        params_state = jax.eval_shape(model.init, jax.random.key(0), self.sample)
        out = jax.eval_shape(
            lambda ps: model.apply(ps[0], ps[1], self.sample, train=False)[0], params_state)
        if out.ndim != 2:
            raise ConfigError(f"{key} returns {out.shape} for one sentence; task='embedding' "
                              f'needs a sentence embedding [batch, width]: for bert set '
                              f"{key}.logits_key='embedding'")
        return out.shape[-1]

    def check_models(self, teacher: Model, student: Model) -> None:
        """Both models read the tokenizer's ids and return one embedding per sentence."""
        self._check_model(teacher, 'teacher')
        self._check_model(student, 'student')

    # -- data -----------------------------------------------------------------------
    def train_batches(self, seed: int, rows: str = 'all') -> grain.MapDataset:
        del rows  # no labels to withhold
        return text.train_batches(self.train_rows, global_batch=self.config.data.batch_size,
                                  seed=seed, process_index=jax.process_index(),
                                  process_count=jax.process_count())

    def provenance(self) -> dict[str, Any]:
        d = self.config.data
        return {'dataset': self.dataset, 'train_sentences': len(self.train_sentences),
                'test_sentences': len(self.test_sentences), **self._data_provenance,
                'tokenizer': str(self.tokenizer_dir / hf.TOKENIZER_FILE),
                'vocab_size': self.vocab_size, 'seq_len': d.seq_len,
                'truncated_train': self.truncated_train, 'truncated_test': self.truncated_test}

    # -- the step -------------------------------------------------------------------
    def prepare_fn(self, mixup: float = 0.0) -> Callable[[dict, jax.Array], StepInputs]:
        del mixup  # refused at config time

        def prepare(batch: dict, rng: jax.Array) -> StepInputs:
            del rng
            inputs = {'input_ids': batch['input_ids'], 'attention_mask': batch['attention_mask']}
            # No labels: feature terms never read targets (label losses are refused).
            no_labels = jnp.zeros(batch['input_ids'].shape[:1], jnp.int32)
            return StepInputs(inputs, no_labels, None, None)

        return prepare

    # -- evaluation -----------------------------------------------------------------
    def embed(self, fn: Callable, model_vars: dict, mesh: Mesh) -> np.ndarray:
        """``[N, d]`` float32 embeddings of every test sentence, in order."""
        rows, n = self.test_rows, len(self.test_sentences)
        batch, count = self.config.data.eval_batch_size, jax.process_count()
        out = []
        for start in range(0, n, batch):  # the last batch repeats the last row, then is cut
            ids = start + np.arange(batch // count) * count + jax.process_index()
            local = {k: v[np.minimum(ids, n - 1)] for k, v in rows.items()}
            emb = fn(model_vars, mesh_lib.to_global(mesh, local))
            out.append(np.asarray(multihost_utils.process_allgather(emb, tiled=True)))
        return np.concatenate(out)[:n]

    def throughput(self, fn: Callable, model_vars: dict, mesh: Mesh, trials: int = 3,
                   min_seconds: float = 0.5) -> float:
        """Sentences per second on the first test batch: best of ``trials`` timings, each
        repeating the batch for at least ``min_seconds`` (a fast student's single call is
        too short to time), after one compiling call. The best trial is the one least
        disturbed by other work on a shared machine."""
        size = self.config.data.eval_batch_size
        batch = mesh_lib.to_global(mesh, {k: v[:size] for k, v in self.test_rows.items()})
        jax.block_until_ready(fn(model_vars, batch))
        best = 0.0
        for _ in range(trials):
            calls, t0 = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - t0) < min_seconds or not calls:
                jax.block_until_ready(fn(model_vars, batch))
                calls += 1
            best = max(best, calls * size / elapsed)
        return best

    def scorer(self, model: Model, mesh: Mesh) -> Callable[[dict], dict[str, float]]:
        """A model's scores against itself (only a teacher has no other reference)."""
        return lambda model_vars: Evaluator(self, mesh, model, model_vars, model).teacher_scores()

    def evaluator(self, mesh: Mesh, teacher: Model, teacher_vars: dict,
                  student: Model) -> Evaluator:
        return Evaluator(self, mesh, teacher, teacher_vars, student)


def _encode(tokenizer: Any, items: list[str], seq_len: int) -> tuple[dict[str, np.ndarray], int]:
    """Rows padded to ``seq_len`` (over-long sentences truncated with a warning), and how
    many sentences were cut."""
    rows = hf.encode(tokenizer, items, seq_len, pad_to=seq_len)
    cut = sum(len(e.ids) > seq_len for e in tokenizer.encode_batch(items))
    return rows, int(cut)


def _embed_fn(model: Model, mesh: Mesh) -> Callable:
    def embed(model_vars, batch):
        out, _, _ = model.apply(model_vars['params'], model_vars['state'], batch, train=False)
        return out.astype(jnp.float32)

    return jax.jit(embed, out_shardings=mesh_lib.batch_sharding(mesh))


def similarity_scores(student: np.ndarray, teacher: np.ndarray) -> dict[str, float]:
    return {'spearman': evaluate.similarity_spearman(student, teacher),
            'nn_agreement_at_10': evaluate.nn_agreement(student, teacher, NEIGHBOURS)}


class Evaluator:
    """Scores students against the teacher's test embeddings, computed once."""

    def __init__(self, task: EmbeddingTask, mesh: Mesh, teacher: Model, teacher_vars: dict,
                 student: Model):
        self.task, self.mesh = task, mesh
        teacher_fn, self._student_fn = _embed_fn(teacher, mesh), _embed_fn(student, mesh)
        self.teacher_embeddings = task.embed(teacher_fn, teacher_vars, mesh)
        self.teacher_speed = task.throughput(teacher_fn, teacher_vars, mesh)
        self.teacher_params = evaluate.count_params(teacher_vars['params'])
        self.test_examples = len(task.test_sentences)

    def teacher_scores(self) -> dict[str, float]:
        return {**similarity_scores(self.teacher_embeddings, self.teacher_embeddings),
                'sentences_per_second': self.teacher_speed}

    def __call__(self, student_vars: dict) -> dict[str, float]:
        embeddings = self.task.embed(self._student_fn, student_vars, self.mesh)
        speed = self.task.throughput(self._student_fn, student_vars, self.mesh)
        return {**similarity_scores(embeddings, self.teacher_embeddings),
                'sentences_per_second': speed, 'speedup': speed / self.teacher_speed,
                'size_ratio': self.teacher_params / evaluate.count_params(student_vars['params'])}
