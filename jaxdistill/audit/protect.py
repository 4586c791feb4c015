"""Output protections a model owner can put on the teacher's served or cached outputs.

``distill.protection.name`` switches one on for everything the student learns from (the
online teacher inside the step, and the cache of ``teacher_signal='cached'``); the students
are still *scored* against the unprotected teacher. Each maps the teacher's logits ``z``
(per example or per token) to the logits of the distribution that is served:

* ``topk``: only the ``k`` most likely classes keep their (renormalised) probability; the
  rest are served as ~0 (an API returning top-k log-probabilities; k=1 is the label alone).
* ``round``: probabilities rounded to ``decimals`` decimal places, renormalised (APIs that
  print rounded scores); classes rounded to 0 are served as ~0.
* ``temperature``: each query is served at its own temperature ``T = exp(spread * (2u -
  1))``, ``u`` uniform from a hash of the query's content, so asking again returns the same
  answer and averaging repeated queries cannot undo it.
* ``antidistill``: antidistillation sampling (Savani et al. 2025, arXiv 2504.13146) applied
  to served distributions: ``log p_T + lam * d``, where ``d(c) = <g, grad_theta log
  p_proxy(c | x)>`` is how much one step of training a proxy student on class/token ``c``
  raises its loss on the owner's held-out labelled data (``g`` the gradient of that loss),
  standardised per query. Savani et al. compute ``d`` by finite differences of a proxy
  at ``theta +- eps g``; here it is the exact directional derivative (one jvp). The proxy
  is the student's architecture at initialisation (seed ``proxy_seed``) - what a
  distiller starting from scratch would be - and the held-out data the first 256 train
  examples (rows), which the owner has.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.errors import ConfigError

NAMES = ('', 'topk', 'round', 'temperature', 'antidistill')
FLOOR = -30.0  # log-probability served for classes a protection removes


def check(cfg, key: str = 'distill.protection') -> None:
    if cfg.name not in NAMES:
        raise ConfigError(f'{key}.name={cfg.name!r} is not one of {list(NAMES)} ("": none)')
    if cfg.name == 'topk' and cfg.k < 1:
        raise ConfigError(f'{key}.k={cfg.k} must be >= 1 (the classes served)')
    if cfg.name == 'round' and not 0 <= cfg.decimals <= 6:
        raise ConfigError(f'{key}.decimals={cfg.decimals} must be in [0, 6]')
    if cfg.name == 'temperature' and not cfg.spread > 0:
        raise ConfigError(f'{key}.spread={cfg.spread} must be > 0 (log-temperature range)')
    if cfg.name == 'antidistill' and not cfg.lam > 0:
        raise ConfigError(f'{key}.lam={cfg.lam} must be > 0 (e.g. 2.0)')


def topk(z: jax.Array, k: int) -> jax.Array:
    logp = jax.nn.log_softmax(z.astype(jnp.float32), -1)
    kth = jax.lax.top_k(logp, k)[0][..., -1:]
    kept = jnp.where(logp >= kth, logp, -jnp.inf)
    return jnp.maximum(jax.nn.log_softmax(kept, -1), FLOOR)


def round_probs(z: jax.Array, decimals: int) -> jax.Array:
    p = jax.nn.softmax(z.astype(jnp.float32), -1)
    q = jnp.round(p * 10.0 ** decimals) / 10.0 ** decimals
    q = jnp.where(jnp.sum(q, -1, keepdims=True) > 0, q, jax.nn.one_hot(jnp.argmax(p, -1),
                                                                      p.shape[-1]))
    return jnp.maximum(jnp.log(q / jnp.sum(q, -1, keepdims=True)), FLOOR)


def query_uniform(inputs: jax.Array) -> jax.Array:
    """A uniform in [0, 1) per query (row of ``inputs``), a hash of its content."""
    from jaxdistill.audit.watermark import _fmix

    x = inputs.reshape(inputs.shape[0], -1)
    bits = (jax.lax.bitcast_convert_type(x.astype(jnp.float32), jnp.uint32)
            if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.uint32))
    pos = jnp.arange(bits.shape[1], dtype=jnp.uint32) * jnp.uint32(0x9E3779B1)
    h = _fmix(jnp.sum(_fmix(bits ^ pos, jnp), -1, dtype=jnp.uint32), jnp)
    return (h >> jnp.uint32(8)).astype(jnp.float32) / float(1 << 24)


def temperature(z: jax.Array, inputs: jax.Array, spread: float) -> jax.Array:
    u = query_uniform(inputs).reshape((-1,) + (1,) * (z.ndim - 1))
    return jax.nn.log_softmax(z.astype(jnp.float32) / jnp.exp(spread * (2 * u - 1)), -1)


def antidistill_direction(proxy, proxy_vars, grad_held_out, inputs) -> jax.Array:
    """``d [..., C]``: directional derivative of the proxy's log-probabilities along the
    held-out loss gradient, standardised over classes."""
    def logp(params):
        out = proxy.apply(params, proxy_vars['state'], inputs, train=False)[0]
        return jax.nn.log_softmax(out.astype(jnp.float32), -1)

    _, d = jax.jvp(logp, (proxy_vars['params'],), (grad_held_out,))
    d = d - d.mean(-1, keepdims=True)
    return d / (d.std(-1, keepdims=True) + 1e-6)


@dataclasses.dataclass(frozen=True, eq=False)  # hashed by identity: it holds arrays
class Protected:
    """A teacher (a `Model` or an `Ensemble`) whose outputs go through a protection."""

    inner: Any
    name: str
    k: int = 1
    decimals: int = 1
    spread: float = 1.0
    lam: float = 1.0
    proxy: Any = None
    proxy_vars: Any = None
    grad: Any = None

    def apply(self, params, state, inputs, *, train: bool = False, rng=None, taps=()):
        z, new_state, features = self.inner.apply(params, state, inputs, train=train,
                                                  rng=rng, taps=taps)
        return self.serve(z, inputs), new_state, features

    def serve(self, z: jax.Array, inputs: jax.Array) -> jax.Array:
        if self.name == 'topk':
            return topk(z, self.k)
        if self.name == 'round':
            return round_probs(z, self.decimals)
        if self.name == 'temperature':
            return temperature(z, inputs, self.spread)
        d = antidistill_direction(self.proxy, self.proxy_vars, self.grad, inputs)
        return jax.nn.log_softmax(jax.nn.log_softmax(z.astype(jnp.float32), -1)
                                  + self.lam * d, -1)

    def __getattr__(self, name: str) -> Any:  # feature_shapes, module, ... of the teacher
        if name == 'inner':
            raise AttributeError(name)
        return getattr(self.inner, name)


def wrap(teacher, config, task, student) -> Any:
    """``teacher`` behind ``distill.protection`` (itself when none is set)."""
    cfg = config.distill.get('protection')
    if cfg is None or not cfg.name:
        return teacher
    kw = dict(k=int(cfg.k), decimals=int(cfg.decimals), spread=float(cfg.spread),
              lam=float(cfg.lam))
    if cfg.name != 'antidistill':
        return Protected(teacher, cfg.name, **kw)
    params, state = student.init(jax.random.key(int(cfg.proxy_seed)), task.sample)
    proxy_vars = {'params': params, 'state': state}
    inputs, targets, mask = _held_out(task)

    def loss(p):
        out = student.apply(p, state, inputs, train=False)[0].astype(jnp.float32)
        nll = -jnp.take_along_axis(jax.nn.log_softmax(out, -1), targets[..., None], -1)[..., 0]
        return jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)

    grad = jax.grad(loss)(params)
    return Protected(teacher, 'antidistill', proxy=student, proxy_vars=proxy_vars, grad=grad,
                     **kw)


def _held_out(task, n: int = 256):
    """The owner's labelled data for the proxy's loss: the first ``n`` train examples."""
    if hasattr(task, 'train_rows'):
        from jaxdistill.data import text

        source = text.as_source(task.train_rows)  # packed rows: read these rows only
        rows = source.take(np.arange(min(n // 8, len(source))))
        return (jnp.asarray(rows['inputs']), jnp.asarray(rows['targets']),
                jnp.asarray(rows['mask'], jnp.float32))
    from jaxdistill import data as data_lib

    d = task.config.data
    examples = [data_lib.pipeline.to_example(task.splits.train[i], d.image_key, d.label_key)
                for i in range(min(n, len(task.splits.train)))]
    images = np.stack([e['image'] for e in examples]).astype(np.float32)
    labels = np.asarray([e['label'] for e in examples], np.int32)
    return jnp.asarray(images), jnp.asarray(labels), jnp.ones(len(labels), jnp.float32)
