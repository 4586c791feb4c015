"""Evaluation on the test split: accuracy, and how faithfully a student copies its teacher.

Logits are computed on device; the metrics themselves are float64 numpy over the
gathered logits, so they do not depend on the device layout.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import Mesh

from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib


def make_predict(model: Model, mesh: Mesh) -> Callable:
    def predict(model_vars, images):
        logits, _, _ = model.apply(model_vars['params'], model_vars['state'], images, train=False)
        return logits.astype(np.float32)

    return jax.jit(predict, out_shardings=mesh_lib.batch_sharding(mesh))


def predict_all(predict: Callable, model_vars: dict[str, Any], batches: Iterable[dict],
                mesh: Mesh) -> tuple[np.ndarray, np.ndarray]:
    """Logits ``[N, C]`` and labels ``[N]`` for every real (unpadded) example, in order."""
    logits, labels = [], []
    for batch in batches:
        mask = batch.pop('mask')
        g = mesh_lib.to_global(mesh, {**batch, 'mask': mask})
        out = predict(model_vars, g['image'])
        out, lab, m = (np.asarray(multihost_utils.process_allgather(x, tiled=True))
                       for x in (out, g['label'], g['mask']))
        logits.append(out[m])
        labels.append(lab[m])
    return np.concatenate(logits), np.concatenate(labels)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, np.float64)
    z = z - z.max(axis=-1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))


def accuracy(logits: np.ndarray, labels: np.ndarray) -> float:
    return float(np.mean(np.argmax(logits, -1) == labels))


def agreement(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Fraction of examples where the student's top-1 class is the teacher's."""
    return float(np.mean(np.argmax(student_logits, -1) == np.argmax(teacher_logits, -1)))


def kl_to_teacher(student_logits: np.ndarray, teacher_logits: np.ndarray) -> float:
    """Mean over examples of KL(p_teacher || p_student) at temperature 1, in nats."""
    log_t, log_s = log_softmax(teacher_logits), log_softmax(student_logits)
    return float(np.mean(np.sum(np.exp(log_t) * (log_t - log_s), axis=-1)))


def count_params(params: Any) -> int:
    """The number of parameters (array elements) in a pytree: a report's ``params`` column."""
    return int(sum(np.prod(x.shape) for x in jax.tree.leaves(params)))


def fidelity(student_logits, teacher_logits, labels) -> dict[str, float]:
    return {'accuracy': accuracy(student_logits, labels),
            'agreement': agreement(student_logits, teacher_logits),
            'kl_to_teacher': kl_to_teacher(student_logits, teacher_logits)}


# ------------------------------------------------------------------- sentence embeddings
def cosine_matrix(embeddings: np.ndarray) -> np.ndarray:
    """``[N, N]`` float64 cosine similarities; rows are re-normalised (zero rows give 0)."""
    x = np.asarray(embeddings, np.float64)
    x = x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)
    return x @ x.T


def rankdata(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n with ties sharing their average rank (scipy's ``method='average'``)."""
    x = np.asarray(x).ravel()
    order = np.argsort(x, kind='stable')
    sorted_x = x[order]
    # Runs of equal values: every member gets the mean of the run's positions (1-based).
    starts = np.flatnonzero(np.r_[True, sorted_x[1:] != sorted_x[:-1]])
    ends = np.r_[starts[1:], len(x)]
    average = (starts + ends + 1) / 2.0
    ranks = np.empty(len(x), np.float64)
    ranks[order] = np.repeat(average, ends - starts)
    return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman's rank correlation: the Pearson correlation of the (tie-averaged) ranks."""
    ra, rb = rankdata(a), rankdata(b)
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = np.sqrt((ra * ra).sum() * (rb * rb).sum())
    return float((ra * rb).sum() / denom) if denom > 0 else 0.0


def similarity_spearman(student: np.ndarray, teacher: np.ndarray) -> float:
    """Spearman between the two models' cosine similarities over every pair ``i < j``: do
    they order the pairs of sentences alike (the standard STS-style score, with the teacher
    in place of human ratings)?"""
    upper = np.triu_indices(len(teacher), k=1)
    return spearman(cosine_matrix(student)[upper], cosine_matrix(teacher)[upper])


def nearest_neighbours(embeddings: np.ndarray, k: int) -> np.ndarray:
    """``[N, k]`` indices of each row's k most cosine-similar *other* rows, nearest first
    (ties by lower index)."""
    sims = cosine_matrix(embeddings)
    np.fill_diagonal(sims, -np.inf)
    return np.argsort(-sims, axis=-1, kind='stable')[:, :k]


def nn_agreement(student: np.ndarray, teacher: np.ndarray, k: int = 10) -> float:
    """Mean over sentences of |student's k nearest ∩ teacher's k nearest| / k."""
    if not 0 < k < len(teacher):
        raise ValueError(f'k={k} needs 0 < k < number of sentences ({len(teacher)})')
    ns, nt = nearest_neighbours(student, k), nearest_neighbours(teacher, k)
    return float(np.mean([len(set(s) & set(t)) / k for s, t in zip(ns, nt)]))

def token_scores(t: dict[str, float], test_bytes: int) -> dict[str, float]:
    """Perplexity, next-token accuracy and bits per byte from summed test NLL / hits / tokens."""
    n = max(t['tokens'], 1.0)
    return {'perplexity': math.exp(t['nll'] / n), 'accuracy': t['correct'] / n,
            'bits_per_byte': t['nll'] / max(test_bytes, 1) / math.log(2)}
