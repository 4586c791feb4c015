"""jaxdistill/train/hidden_logits.py: distill.token_loss in the real train step.

The chunked path (logits recomputed from the decoders' final hidden states, a chunk of
tokens at a time) and the vocabulary-sharded path must give the dense path's update: the
same jitted step (`train.make_train_step`) is built per mode from the same state and batch
and the updated parameters and logged losses are compared.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from jaxdistill import config as config_lib
from jaxdistill import objective, train
from jaxdistill.config import loss_entry
from jaxdistill.errors import ConfigError
from jaxdistill.models import modules
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.tasks import StepInputs
from jaxdistill.train import hidden_logits, softmax_terms

V = 96


def _model(name, **kwargs):
    block = ml_collections.ConfigDict(dict(module='decoder', kwargs=dict(
        vocab_size=V, num_heads=2, max_len=16, **kwargs)))
    return modules.make_model(block, name)


TEACHER = _model('teacher', num_layers=2, d_model=32, mlp_dim=64, tie_embeddings=False)
STUDENT = _model('student', num_layers=1, d_model=16, mlp_dim=32)


def _batch(seed=0, batch=16, length=16):
    rng = np.random.default_rng(seed)
    tokens = rng.integers(3, V, (batch, length + 1)).astype(np.int32)
    mask = np.arange(length)[None, :] < rng.integers(1, length + 1, batch)[:, None]
    return {'inputs': tokens[:, :-1], 'targets': tokens[:, 1:], 'mask': mask,
            'labelled': rng.random(batch) < 0.7}


def _prepare(batch, rng):
    del rng
    teacher = None
    if 'topk_ids' in batch:
        teacher = objective.SparseTeacher(batch['topk_ids'], batch['topk_logprobs'])
    return StepInputs(batch['inputs'], batch['targets'], batch['mask'],
                      batch['labelled'][:, None], teacher)


OPT = optax.sgd(1.0)


@functools.cache
def _init(tensor):
    """``(mesh, host state, shardings, teacher variables)`` for a mesh, initialised once: each
    step donates its state, so `_step` places a fresh copy (initialising compiles, and that
    was a third of this file's time)."""
    mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=tensor)))
    sample = jnp.zeros((1, 16), jnp.int32)  # the parameters depend on its shape only
    t_params, t_state = TEACHER.init(jax.random.key(1), sample)
    state, shardings = train.create_train_state(STUDENT, OPT, jax.random.key(2), sample, mesh)
    return mesh, jax.device_get(state), shardings, {'params': t_params, 'state': t_state}


def _step(mode, obj, batch, *, tensor=1, accum=1, teacher=TEACHER, at_step=0):
    mesh, state, shardings, teacher_vars = _init(tensor)
    state = jax.device_put(state, shardings)
    opt = OPT
    step = train.make_train_step(
        STUDENT, obj, opt, mesh=mesh, state_shardings=shardings, seed=0, prepare=_prepare,
        teacher=teacher, teacher_shardings=jax.tree.map(lambda _: mesh_lib.replicated(mesh),
                                                        teacher_vars),
        grad_accum_steps=accum, token_loss=mode, chunk_size=40)  # 40: chunks cross rows
    state = state.replace(step=jnp.full((), at_step, jnp.int32))  # scheduled weights' step
    state, metrics = step(state, teacher_vars, mesh_lib.to_global(mesh, batch))
    return jax.device_get(state.params), jax.device_get(metrics)


def _same(a, b, keys):
    for x, y in zip(jax.tree.leaves(a[0]), jax.tree.leaves(b[0])):
        np.testing.assert_allclose(x, y, atol=2e-6, rtol=1e-5)
    for k in keys:
        np.testing.assert_allclose(a[1][k], b[1][k], rtol=1e-5, err_msg=k)


LOSSES = [loss_entry('kd', weight=0.5, temperature=2.0), loss_entry('jsd', weight=0.2, beta=0.3),
          loss_entry('ce', weight=0.3)]
KEYS = ('loss', 'distill/kd', 'distill/jsd', 'distill/ce', 'grad_norm')


def test_chunked_equals_dense():
    obj = objective.build(LOSSES, 10)
    batch = _batch()
    dense = _step('dense', obj, batch)
    _same(_step('chunked', obj, batch), dense, KEYS)
    _same(_step('chunked', obj, batch, accum=2), dense, KEYS)  # with accumulation too


def test_vocab_sharded_equals_dense():
    obj = objective.build(LOSSES, 10)
    batch = _batch(1)
    _same(_step('vocab_sharded', obj, batch, tensor=2), _step('dense', obj, batch, tensor=2),
          KEYS)


def test_chunked_with_a_cached_sparse_teacher():
    obj = objective.build([loss_entry('kd', weight=0.6), loss_entry('ce', weight=0.4)], 10)
    batch = _batch(2)
    rng = np.random.default_rng(3)
    ids = np.stack([rng.permutation(V)[:8] for _ in range(16 * 16)]).reshape(16, 16, 8)
    logits = rng.normal(size=(16, 16, V))
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    batch['topk_ids'] = ids.astype(np.int32)
    batch['topk_logprobs'] = np.take_along_axis(logp, ids, -1).astype(np.float32)
    _same(_step('chunked', obj, batch, teacher=None), _step('dense', obj, batch, teacher=None),
          ('loss', 'distill/kd', 'distill/ce'))


def _resolve(mode, vocab=V, student=STUDENT, losses=LOSSES, tensor=1, task='lm'):
    c = config_lib.base_config()
    c.task, c.distill.token_loss = task, mode
    return hidden_logits.resolve(c, student, objective.build(losses, 10), vocab,
                                 {'data': 8 // tensor, 'tensor': tensor})


def test_auto_and_bad_modes():
    assert _resolve('auto') == 'dense'
    assert _resolve('auto', vocab=32768) == 'chunked'
    assert _resolve('auto', vocab=32768, task='classification') == 'dense'
    dist = [loss_entry('dist'), loss_entry('ce')]
    assert _resolve('auto', vocab=32768, losses=dist) == 'dense'
    with pytest.raises(ConfigError, match="cannot split batch-level loss 'dist'"):
        _resolve('chunked', losses=dist)
    with pytest.raises(ConfigError, match='set mesh.tensor > 1'):
        _resolve('vocab_sharded')
    with pytest.raises(ConfigError, match='not divisible by mesh.tensor=5'):
        _resolve('vocab_sharded', tensor=5)
    with pytest.raises(ConfigError, match="distill.token_loss='fast' is not one of"):
        _resolve('fast')
    mlp = modules.make_model(ml_collections.ConfigDict(dict(module='mlp', kwargs={})), 's')
    with pytest.raises(ConfigError, match='a decoder student'):
        _resolve('chunked', student=mlp)


def test_hidden_logits_shape():
    h = hidden_logits.HiddenLogits(jnp.ones((2, 3, 4)), jnp.ones((4, 7)))
    assert h.shape == (2, 3, 7) and h.ndim == 3


def test_chunked_equals_dense_with_scheduled_weights():
    """Step-dependent weights and temperature (read at step 4 of 10), a term whose weight is
    0 there, ce + kd with label and padding masks, 256 tokens in chunks of 40 (the last one
    padded): the loss, every term's value and the update equal the dense path's."""
    losses = [loss_entry('kd', weight={'schedule': 'linear', 'start': 0.9, 'end': 0.1},
                         temperature={'schedule': 'cosine', 'start': 3.0, 'end': 1.0}),
              loss_entry('tvd', weight={'schedule': 'linear', 'start': 0.5, 'end': 0.0,
                                        'steps': 4}),
              loss_entry('ce', weight={'schedule': 'linear', 'start': 0.1, 'end': 0.9})]
    obj = objective.build(losses, 10)
    batch = _batch(4)
    keys = ('loss', 'distill/kd', 'distill/tvd', 'distill/ce', 'grad_norm')
    dense = _step('dense', obj, batch, at_step=4)
    assert float(dense[1]['distill/tvd']) > 0  # reported, though weighted 0 at this step
    _same(_step('chunked', obj, batch, at_step=4), dense, keys)


def _logit_products(jaxpr, shape) -> int:
    """Matrix products in ``jaxpr`` (and the jaxprs inside it) giving ``shape`` (logits)."""
    count = 0
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == 'dot_general' and eqn.outvars[0].aval.shape == shape:
            count += 1
        for value in eqn.params.values():
            for sub in value if isinstance(value, (tuple, list)) else (value,):
                sub = getattr(sub, 'jaxpr', sub)  # a ClosedJaxpr's
                if hasattr(sub, 'eqns'):
                    count += _logit_products(sub, shape)
    return count


def test_fused_gradient_forms_each_chunks_logits_once():
    """The gradient of the chunked terms forms each model's chunk logits once (forward),
    never again in the backward pass; and it equals the dense gradient."""
    obj = objective.build([loss_entry('kd', weight=0.7, temperature=2.0),
                           loss_entry('ce', weight=0.3)], 10)
    rng = np.random.default_rng(5)
    hs, ht = rng.normal(size=(2, 3, 11, 8)).astype(np.float32)
    ws, wt = rng.normal(size=(2, 8, V)).astype(np.float32)
    targets = rng.integers(0, V, (3, 11))
    mask = rng.random((3, 11)) < 0.8
    rows = {0: mask, 1: mask & (rng.random((3, 1)) < 0.7)}
    step = jnp.zeros((), jnp.int32)

    def chunked(hs, ws):
        teacher = hidden_logits.HiddenLogits(jnp.asarray(ht), jnp.asarray(wt))
        return hidden_logits.fused_means(obj, step, hidden_logits.HiddenLogits(hs, ws), teacher,
                                         targets, rows, 4, {0: 0.7, 1: 0.3})[1]

    def dense(hs, ws):
        zs, zt = hs @ ws, jnp.asarray(ht @ wt)
        return sum(s * obj._term(obj.terms[i], step, zs, zt, targets, rows[i])
                   for i, s in ((0, 0.7), (1, 0.3)))

    got, want = (jax.grad(f, argnums=(0, 1))(jnp.asarray(hs), jnp.asarray(ws))
                 for f in (chunked, dense))
    for g, w in zip(got, want):
        np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(chunked(hs, ws), dense(hs, ws), rtol=1e-5)
    jaxpr = jax.make_jaxpr(jax.grad(chunked, argnums=(0, 1)))(hs, ws).jaxpr
    # a chunk's logits [4, V]: the student's and the teacher's, in the forward pass only
    assert _logit_products(jaxpr, (4, V)) == 2


@pytest.mark.parametrize('losses', [
    [loss_entry('kd', weight=0.5, temperature=1.0), loss_entry('ce', weight=0.5)],
    [loss_entry('kd', weight=0.4, temperature=2.0), loss_entry('forward_kl', weight=0.3),
     loss_entry('ce', weight=0.3)]])
def test_chunked_closed_form_equals_dense(losses):
    """Objectives of ce / kd / forward_kl at constant temperatures take the closed-form
    chunk gradient (`softmax_terms`): the update and every logged value equal the dense
    path's, with label and padding masks and accumulation."""
    obj = objective.build(losses, 10)
    assert softmax_terms.plan(obj, range(len(obj.terms)), 0) is not None
    batch = _batch(6)
    keys = ('loss', 'grad_norm') + tuple(f'distill/{e["name"]}' for e in losses)
    dense = _step('dense', obj, batch)
    _same(_step('chunked', obj, batch), dense, keys)
    _same(_step('chunked', obj, batch, accum=2), dense, keys)
