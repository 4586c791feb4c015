"""The two teacher -> student pairs every comparison runs on, and their analytic FLOP counts.

* ``image``: a CIFAR ResNet-20 (BatchNorm) teacher -> a two-block CNN student, 32x32x3
  images, 10 classes, ``kd`` (T = 4, weight 0.9) + ``ce`` (0.1): the base config's objective.
* ``lm``: a 4-layer d=256 decoder teacher -> a 2-layer d=128 student, vocabulary 8192,
  ``kd`` (T = 1) + ``ce`` at 0.5 each: ``configs/lm_text.py``'s objective.

``--quick`` keeps the architectures and shrinks the batch (and the LM's sequence) so the
whole suite runs in minutes on 2 shared cores. Inputs are random: speed does not depend on
the values, and no dataset has to be prepared.
"""

from __future__ import annotations

import dataclasses
import types
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill import config as config_lib
from jaxdistill import objective as objective_lib
from jaxdistill.config import loss_entry
from jaxdistill.models import CNN, Decoder, ResNet20
from jaxdistill.models.adapter import Model
from jaxdistill.tasks.classification import ClassificationTask
from jaxdistill.tasks.lm import LanguageModelTask

NUM_CLASSES = 10
SIZES = {
    'full': {'image': dict(batch=64), 'lm': dict(batch=8, seq=256)},
    'quick': {'image': dict(batch=16), 'lm': dict(batch=8, seq=32)},  # 8 rows: scaling_8dev
}
LM_TEACHER = dict(vocab_size=8192, num_layers=4, d_model=256, num_heads=4, mlp_dim=1024)
LM_STUDENT = dict(vocab_size=8192, num_layers=2, d_model=128, num_heads=4, mlp_dim=512)


@dataclasses.dataclass(frozen=True)
class Pair:
    """One teacher, one student, one batch, and what the distillation step computes."""

    name: str
    teacher: Model
    student: Model
    batch: dict[str, np.ndarray]  # the global batch, on the host
    prepare: Callable  # the task's ``prepare(batch, rng) -> StepInputs``
    losses: tuple  # ``distill.losses`` entries
    shape: dict[str, int]
    decoders: tuple[dict, dict] | None = None  # the LM pair's teacher and student kwargs

    def objective(self) -> objective_lib.Objective:
        return objective_lib.build(self.losses, total_steps=1000)

    def optimizer_config(self):
        """The base config's optimizer (AdamW, warm-up + cosine, clipping at norm 1)."""
        return config_lib.base_config().optimizer


def _task_prepare(task_cls: type, **attributes: Any) -> Callable:
    """The task's real ``prepare_fn``, without opening its dataset.

    The tasks' constructors load data; ``prepare_fn`` reads only the attributes given here
    (``num_classes`` for classification, nothing for LM), so a namespace stands in for them.
    """
    return task_cls.prepare_fn(types.SimpleNamespace(**attributes))


def image_pair(batch: int, teacher_dtype: str = 'float32') -> Pair:
    rng = np.random.default_rng(0)
    data = {'image': rng.standard_normal((batch, 32, 32, 3), np.float32),
            'label': rng.integers(0, NUM_CLASSES, batch).astype(np.int32)}
    return Pair(
        name='image',
        teacher=Model(ResNet20(num_classes=NUM_CLASSES, dtype=teacher_dtype), name='teacher'),
        student=Model(CNN(channels=(16, 32), dense=64, num_classes=NUM_CLASSES),
                      name='student'),
        batch=data,
        prepare=_task_prepare(ClassificationTask, num_classes=NUM_CLASSES),
        losses=(loss_entry('kd', weight=0.9, temperature=4.0), loss_entry('ce', weight=0.1)),
        shape=dict(batch=batch, height=32, width=32, channels=3, classes=NUM_CLASSES))


def lm_pair(batch: int, seq: int, teacher_dtype: str = 'float32', *,
            teacher_cfg: dict[str, int] = LM_TEACHER, student_cfg: dict[str, int] = LM_STUDENT,
            student_options: dict[str, Any] | None = None) -> Pair:
    """``student_options``: extra `Decoder` arguments (``scan_layers``, ``remat``) to try."""
    rng = np.random.default_rng(0)
    tokens = rng.integers(0, teacher_cfg['vocab_size'], (batch, seq + 1)).astype(np.int32)
    mask = np.ones((batch, seq), bool)
    mask[0, seq - seq // 8:] = False  # a padded row end: masks are exercised, not just ones
    data = {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'mask': mask}
    teacher = Decoder(**teacher_cfg, max_len=seq, dtype=jnp.dtype(teacher_dtype))
    student = Decoder(**student_cfg, max_len=seq, **(student_options or {}))
    return Pair(
        name='lm', teacher=Model(teacher, name='teacher'), student=Model(student, name='student'),
        batch=data, prepare=_task_prepare(LanguageModelTask),
        losses=(loss_entry('kd', weight=0.5, temperature=1.0), loss_entry('ce', weight=0.5)),
        shape=dict(batch=batch, seq=seq, vocab=teacher_cfg['vocab_size']),
        decoders=(teacher_cfg, student_cfg))


def build(name: str, quick: bool, teacher_dtype: str = 'float32') -> Pair:
    size = SIZES['quick' if quick else 'full'][name]
    if name == 'image':
        return image_pair(size['batch'], teacher_dtype)
    return lm_pair(size['batch'], size['seq'], teacher_dtype)


def init_teacher(pair: Pair, seed: int = 1) -> dict[str, Any]:
    """Random teacher variables ``{'params', 'state'}`` (speed does not depend on them)."""
    params, state = pair.teacher.init(jax.random.key(seed), sample_inputs(pair))
    return {'params': params, 'state': state}


def sample_inputs(pair: Pair) -> np.ndarray:
    return pair.batch['image' if pair.name == 'image' else 'inputs']


# ------------------------------------------------------------------------------ FLOPs
def dense_conv_flops(module: nn.Module, inputs: np.ndarray) -> float:
    """Multiply-add FLOPs of every ``kernel`` (Conv and Dense) in one forward pass.

    For a kernel of shape ``[..., c_in, c_out]`` producing an output ``[..., c_out]``, each
    output position costs ``prod(kernel.shape)`` multiply-adds (a Dense layer is a 1-element
    kernel window), so FLOPs = ``2 * prod(output.shape[:-1]) * prod(kernel.shape)``. Shapes
    come from ``jax.eval_shape``: nothing is computed. Elementwise work is not counted (the
    MFU convention); XLA's own count (`harness.compiled_flops`) includes it, and leaves out
    the taps that fall on ``'SAME'`` zero padding, which this count includes (for the 8x8
    maps of ResNet-20's last stage that is ~16% of a 3x3 conv).
    """
    def run():
        variables = module.init(jax.random.key(0), inputs, train=False)
        _, inter = module.apply(variables, inputs, train=False, mutable=['intermediates'],
                                capture_intermediates=True)
        # Partitioned (sharding-annotated) kernels flatten to a `.value` leaf: unbox them.
        return nn.meta.unbox(variables['params']), inter['intermediates']

    params, outputs = jax.eval_shape(run)
    total = 0.0
    for path, kernel in jax.tree_util.tree_flatten_with_path(params)[0]:
        keys = [p.key for p in path]
        if keys[-1] != 'kernel':
            continue
        node = outputs
        for key in keys[:-1]:
            node = node[key]
        out = node['__call__'][0]
        total += 2.0 * np.prod(out.shape[:-1]) * np.prod(kernel.shape)
    return total


def decoder_flops(cfg: dict[str, int], batch: int, seq: int) -> float:
    """Matmul FLOPs of one `Decoder` forward over ``batch x seq`` tokens.

    Per token and layer: the q, k, v and output projections (``4 * 2 * d^2`` with as many
    key/value heads as query heads), the SwiGLU MLP (``3 * 2 * d * mlp``) and attention
    scores plus the weighted sum (``2 * 2 * seq * d``: the full causal square is computed,
    then masked); once per token, the output projection (``2 * d * vocab``).
    """
    d, mlp, layers, vocab = cfg['d_model'], cfg['mlp_dim'], cfg['num_layers'], cfg['vocab_size']
    per_layer = 8 * d * d + 6 * d * mlp + 4 * seq * d
    return float(batch * seq * (layers * per_layer + 2 * d * vocab))


def analytic_flops(pair: Pair) -> dict[str, float]:
    """Teacher forward and student forward FLOPs; a training step costs ~3x a forward."""
    if pair.name == 'image':
        x = pair.batch['image']
        return {'teacher_forward': dense_conv_flops(pair.teacher.module, x),
                'student_forward': dense_conv_flops(pair.student.module, x)}
    b, t = pair.shape['batch'], pair.shape['seq']
    teacher_cfg, student_cfg = pair.decoders
    return {'teacher_forward': decoder_flops(teacher_cfg, b, t),
            'student_forward': decoder_flops(student_cfg, b, t)}


def distill_step_flops(flops: dict[str, float]) -> float:
    """Teacher forward once, student forward + backward (backward ~ 2x forward)."""
    return flops['teacher_forward'] + 3.0 * flops['student_forward']
