"""Scores across tokenizers: each model on its own tokens; fidelity where the tokens agree.

The student's ``perplexity``, ``accuracy`` and ``bits_per_byte`` are its own, on its rows;
the teacher's on *its own* packing of the same test text (its tokens, its perplexity per
teacher token), so both bits per byte share one denominator (the test split's UTF-8 bytes).
``agreement`` and ``kl_to_teacher`` compare the two models only where they are comparable:
at student positions whose next token is the same string in both vocabularies (``xt_same``,
after the same text), as ``agreement`` = the student's top-1 maps by string to the teacher's
top-1, and ``kl_to_teacher`` = the vocabulary-mapped KL of ``aligned_kl`` at T = 1.
``aligned_positions`` is the share of student targets where that holds.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.crosstok import losses as xl
from jaxdistill.crosstok.losses import CrossVocab
from jaxdistill.data import text
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks.evaluate import token_scores


def _own(model, model_vars, inputs, targets, mask):
    logits, _, _ = model.apply(model_vars['params'], model_vars['state'], inputs, train=False)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    m = mask.astype(jnp.float32)
    nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
    correct = jnp.argmax(logp, -1) == targets
    return logp, {'nll': jnp.sum(nll * m), 'correct': jnp.sum(correct * m),
                  'tokens': jnp.sum(m)}


class Evaluator:
    """`tasks.lm.Evaluator` for a teacher and a student with different tokenizers."""

    def __init__(self, task, mesh, teacher, teacher_vars, student, vocab: CrossVocab):
        self.task, self.mesh, self.teacher_vars = task, mesh, teacher_vars
        self._scores = token_scores
        s2t = jnp.asarray(np.concatenate([vocab.student_to_teacher, np.full(
            max(vocab.student_vocab - len(vocab.student_to_teacher), 0), -1, np.int32)]))

        def sums(model_vars, batch):
            student_vars, t_vars = model_vars
            logp_s, out = _own(student, student_vars, batch['inputs'], batch['targets'],
                               batch['mask'])
            t_logits, _, _ = teacher.apply(t_vars['params'], t_vars['state'],
                                           batch['teacher_inputs'], train=False)
            logp_t = xl.at_positions(jax.nn.log_softmax(t_logits.astype(jnp.float32), -1),
                                     batch['xt_pos'])
            same = batch['xt_same'] & batch['mask']
            kl = xl.vocab_kl(logp_s, logp_t, shared_student=vocab.shared_student,
                             shared_teacher=vocab.shared_teacher, fold=vocab.fold, where=same)
            agree = s2t[jnp.argmax(logp_s, -1)] == jnp.argmax(logp_t, -1)
            f = same.astype(jnp.float32)
            return {**out, 'kl': jnp.sum(kl), 'agree': jnp.sum(agree * f), 'same': jnp.sum(f)}

        self._sums = jax.jit(sums)
        teacher_sums = jax.jit(lambda mv, b: _own(teacher, mv, b['inputs'], b['targets'],
                                                  b['mask'])[1])
        totals: dict[str, float] = {}
        for batch in text.eval_batches(task.cross.teacher_rows['test'],
                                       global_batch=task.config.data.eval_batch_size,
                                       process_index=jax.process_index(),
                                       process_count=jax.process_count()):
            out = jax.device_get(teacher_sums(teacher_vars, mesh_lib.to_global(mesh, batch)))
            for k, v in out.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        self._teacher = token_scores(totals, task.test_bytes)
        self.test_examples = int(task.stats['test']['tokens'])

    def teacher_scores(self) -> dict[str, float]:
        return dict(self._teacher)

    def __call__(self, student_vars: dict) -> dict[str, float]:
        t = self.task._sum(self._sums, (student_vars, self.teacher_vars), self.mesh)
        n, same = max(t['tokens'], 1.0), max(t['same'], 1.0)
        return {**self._scores(t, self.task.test_bytes), 'agreement': t['agree'] / same,
                'kl_to_teacher': t['kl'] / same, 'aligned_positions': t['same'] / n}
