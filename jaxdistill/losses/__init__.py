"""Distillation losses: pure functions, per-example output, no hidden reduction.

Every logit loss has the signature::

    fn(student_logits, teacher_logits, *, temperature=1.0, where=None, axis=-1, **hyper)

and returns one value per example (per token): the input shape without ``axis``. Reduction is
the caller's, explicit and documented (see :func:`token_mean`). Inputs are upcast to at least
float32 before any arithmetic (bf16/fp16 logits give float32 losses; float64 stays float64), so
a bf16 teacher and an fp32 student are compared in one precision.

Masks (``where``), the same convention for every logit loss:

* ``where.shape == logits.shape`` without ``axis`` (a **token mask**, e.g. ``[B, T]`` for
  ``[B, T, V]`` logits): rows where it is False are padding; their output is exactly 0 and they
  get zero gradient. Any per-token loss on a token-masked batch equals the loss on the batch with
  those rows sliced out, with zeros in their place.
* ``where.ndim == logits.ndim`` (a **vocabulary mask**, broadcast to the logits shape, e.g.
  ``[1, V]`` or ``[B, V]``): entries where it is False are removed from *both* distributions
  before the softmax, exactly as if those columns were sliced out. Rows with no valid entry give 0.

Do not mask with ``-inf`` logits; pass ``where`` instead (``-inf`` makes ``0 * inf`` terms).

The package, one module per family, each loss registered with what it is (`LossSpec`):

* `registry`: `register`, `get`, `spec`, hyper-parameter rules and `validate_hyper`;
* `divergences`: ``kd``, ``forward_kl``, ``reverse_kl``, ``jsd``, ``skew_kl``, ``skew_rkl``,
  ``tvd``, ``logit_mse``; `decomposed`: ``dkd``, ``dist`` and their parts;
* `sparse`: ``topk_kl``, `SparseTeacher`, `dense_logprobs`; `cross_entropy`: ``ce``;
* `features`: ``feature_mse``, ``feature_cosine``, ``attention_transfer``; `relations`:
  ``rkd``, ``similarity_mse``; `reduction`: `token_mean`;
* `token`: the memory-efficient token-level paths (chunked, vocabulary-sharded);
* `docs`: docs/losses.md's table, written from the registry.

The table of losses, with formulas, papers and conventions: ``docs/losses.md``; the reference
values they are checked against: ``tests/losses/``. The combined objective
``alpha * distill + (1 - alpha) * ce`` is the train loop's: ``alpha`` always weights the
*distillation* term (Tunix/NeMo convention; torchdistill uses the opposite).
"""

# Registration order is the order of each kind's losses in docs/losses.md.
# isort: off
from jaxdistill.losses.core import check_logits, check_same_vocab, upcast
from jaxdistill.losses.registry import (
    KINDS,
    POINTWISE,
    REGISTRY,
    SPECS,
    Choice,
    Doc,
    LossSpec,
    Rule,
    check_hyper,
    get,
    hyper_names,
    names,
    register,
    spec,
    unregister,
    validate_hyper,
)
from jaxdistill.losses.sparse import SparseTeacher, dense_logprobs, topk_kl
from jaxdistill.losses.divergences import (
    forward_kl,
    jsd,
    kd,
    logit_mse,
    reverse_kl,
    skew_kl,
    skew_rkl,
    tvd,
)
from jaxdistill.losses.decomposed import dist, dist_parts, dkd, dkd_parts
from jaxdistill.losses.cross_entropy import (
    ce,
    soft_cross_entropy,
    softmax_cross_entropy,
)
from jaxdistill.losses.features import (
    attention_transfer,
    feature_cosine,
    feature_mse,
)
from jaxdistill.losses.relations import rkd, similarity_mse
from jaxdistill.losses.reduction import token_mean
# isort: on

__all__ = [
    'KINDS', 'POINTWISE', 'REGISTRY', 'SPECS', 'Choice', 'Doc', 'LossSpec', 'Rule',
    'SparseTeacher', 'attention_transfer', 'ce', 'check_hyper', 'check_logits',
    'check_same_vocab', 'dense_logprobs', 'dist', 'dist_parts', 'dkd', 'dkd_parts',
    'feature_cosine', 'feature_mse', 'forward_kl', 'get', 'hyper_names', 'jsd', 'kd',
    'logit_mse', 'names', 'register', 'reverse_kl', 'rkd', 'similarity_mse', 'skew_kl',
    'skew_rkl', 'soft_cross_entropy', 'softmax_cross_entropy', 'spec', 'token_mean',
    'topk_kl', 'tvd', 'unregister', 'upcast', 'validate_hyper',
]
