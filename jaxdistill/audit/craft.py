"""Probes crafted from the audited teacher itself (``--probes=boundary|conferrable``).

The auditor owns the teacher white-box, so it can search the input space for where *this*
teacher is particular, instead of hoping that random mixes of test images land there. A
student that copied the teacher's function follows it at such inputs; a model that never saw
its outputs does not. Two searches, both started from the ambiguous mixes of
`models.image_probe` (so the probe seed still decides everything) and both deterministic:

``boundary``
    A few DeepFool steps (Moosavi-Dezfooli et al. 2016) on the teacher's margin between its
    top-2 classes at the start point, ``m(x) = log t_a(x) - log t_b(x)``: ``x <- x - m g /
    |g|^2`` with ``g = grad m``, projected on an L2 ball of ``radius`` around the start and
    on the data's range. It brings the teacher to its own decision boundary (top-2 near 50/50)
    with a small perturbation; where that boundary lies is particular to the teacher.
``conferrable``
    Targeted adversarial examples of the teacher that its **anchors** (the owner's
    independent models of its recipe, ``--anchors``) do not follow (Lukas et al., ICLR 2021,
    "Deep neural network fingerprinting by conferrable adversarial examples"): signed
    gradient ascent (``steps`` of ``eps / 4``, L_inf ball of ``eps``, the data's range) on
    ``log t_y(x) + mean_a log(1 - a_y(x))`` towards the teacher's runner-up class ``y`` at
    the start. Lukas et al. also ask that surrogate *students* of the teacher follow; the
    owner may have none, so only the anchor half of their objective is used.

``divergent``
    No search: of ``POOL`` times as many mixes, the ones where the teacher departs most from
    its anchors (mean ``KL(t || a)``), so the probes stay the distiller's own kind of input.
``sampled`` (language models)
    Instead of the test text, the teacher's own continuations of its first quarter, sampled
    at ``TEMPERATURE`` > 1: text off the corpus's manifold, which a copy of the teacher has
    seen it write (sequence-level students literally) and an independent model has not.

Crafting reads the teacher (and, for ``conferrable``, the anchors) only, never the suspect
or the references: they stay exchangeable under the null, so the permutation p-value keeps
its guarantee. The teacher is no longer exchangeable with its anchors on probes made from
it, so ``p_value_teachers`` is not reported for crafted probes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jaxdistill.audit.lineage import PROBES
from jaxdistill.audit.stats import AuditError

__all__ = ['PROBES', 'boundary', 'check', 'check_request', 'conferrable', 'craft_probe',
           'defaults', 'divergent', 'drawn', 'logit_fn', 'sampled_probe']
STEPS = {'boundary': 10, 'conferrable': 20}
RADIUS = 0.5  # boundary: L2 bound on the step (an 8x8 digit in [0, 1] has L2 ~3-4; tuned)
MARGIN = 0.0  # boundary: target |log t_a - log t_b| (0: on the boundary)
EPS = 0.05  # conferrable: L_inf bound on the perturbation (tuned)
POOL = 8  # divergent: candidate mixes drawn per probe kept
TEMPERATURE = 1.5  # sampled: the teacher's sampling temperature
IMAGE = ('boundary', 'conferrable', 'divergent')
BATCH = 1024

LogitFn = Callable[[jax.Array], jax.Array]


def logit_fn(loaded) -> LogitFn:
    """The float32 logits of a loaded model (`models.Loaded`) as a function of its inputs."""
    v = loaded.variables
    return lambda x: loaded.model.apply(v['params'], v['state'], x,
                                        train=False)[0].astype(jnp.float32)


def check_request(probes: str, anchors: int) -> None:
    """The checks that need no model: a known kind, and the anchors it crafts against."""
    if probes not in PROBES:
        raise AuditError(f'--probes={probes!r} is not one of {list(PROBES)}')
    if probes in ('conferrable', 'divergent') and anchors == 0:
        raise AuditError(f'--probes={probes} needs --anchors (the owner\'s independent '
                         'models of the teacher\'s recipe, which the crafted probes must not '
                         'fool): give --anchors=M,... or use --probes=boundary')


def check(probes: str, *, task: str, anchors: int, ambiguous: int) -> None:
    """One-line errors for a probe kind this audit cannot craft."""
    if probes not in PROBES:
        raise AuditError(f'--probes={probes!r} is not one of {list(PROBES)}')
    if probes == 'mixes':
        return
    if probes == 'sampled':
        if task != 'lm':
            raise AuditError('--probes=sampled: the teacher\'s sampled text is for language '
                             'models; for an image classifier use mixes, boundary, conferrable '
                             'or divergent')
        return
    if task != 'classification':
        raise AuditError(f'--probes={probes}: crafted probes are for image classifiers; a '
                         'language model is probed on text (--probes=mixes: its test text, or '
                         '--probes=sampled: the teacher\'s own samples)')
    if ambiguous <= 0:
        raise AuditError(f'--probes={probes} starts from the ambiguous mixes: give '
                         '--ambiguous > 0')
    check_request(probes, anchors)


def defaults(probes: str) -> dict:
    """The settings a probe kind is crafted with unless told otherwise (for the record)."""
    return {'boundary': {'steps': STEPS['boundary'], 'radius': RADIUS, 'margin': MARGIN},
            'conferrable': {'steps': STEPS['conferrable'], 'eps': EPS},
            'divergent': {'pool': POOL}, 'sampled': {'temperature': TEMPERATURE}}.get(probes, {})


def drawn(probes: str, ambiguous: int, pool: int = POOL) -> int:
    """How many mixes to draw for ``ambiguous`` probes of this kind (`divergent` keeps the
    ``ambiguous`` of ``pool`` times as many candidates)."""
    return ambiguous * int(pool) if probes == 'divergent' else ambiguous


def _sqnorm(x: jax.Array) -> jax.Array:
    return jnp.sum(jnp.square(x), axis=tuple(range(1, x.ndim)))


def _bcast(v: jax.Array, x: jax.Array) -> jax.Array:
    return v.reshape(v.shape + (1,) * (x.ndim - 1))


def boundary(teacher: LogitFn, x0: np.ndarray, *, steps: int = STEPS['boundary'],
             radius: float = RADIUS, lo: float = 0.0, hi: float = 1.0,
             margin: float = MARGIN) -> np.ndarray:
    """``x0 [N, ...]`` moved towards the teacher's boundary between its top-2 classes at
    ``x0`` (DeepFool steps, L2 ball of ``radius``, box ``[lo, hi]``). ``margin > 0``: to
    ``log t_a - log t_b = +margin`` (even probes) or ``-margin`` (odd), just on either side
    of the boundary, where the teacher decides and a model with its own boundary does not
    follow it on both sides."""

    @jax.jit
    def run(x0):
        top2 = jnp.argsort(teacher(x0), -1)[:, -2:]
        a, b = top2[:, 1], top2[:, 0]
        rows = jnp.arange(len(x0))
        target = margin * (1.0 - 2.0 * (rows % 2))

        def gap(x):
            z = teacher(x)
            m = z[rows, a] - z[rows, b]  # = log t_a - log t_b
            return m.sum(), m

        def step(x, _):
            g, m = jax.grad(gap, has_aux=True)(x)
            x = x - _bcast((m - target) / (_sqnorm(g) + 1e-12), g) * g
            d = x - x0
            scale = jnp.minimum(1.0, radius / (jnp.sqrt(_sqnorm(d)) + 1e-12))
            return jnp.clip(x0 + _bcast(scale, d) * d, lo, hi), None

        return jax.lax.scan(step, x0, None, length=steps)[0]

    return _batched(run, x0)


def conferrable(teacher: LogitFn, anchors: list[LogitFn], x0: np.ndarray, *,
                steps: int = STEPS['conferrable'], eps: float = EPS, lo: float = 0.0,
                hi: float = 1.0) -> np.ndarray:
    """``x0 [N, ...]`` pushed (signed gradient, L_inf ball of ``eps``, box ``[lo, hi]``)
    towards the teacher's runner-up class ``y`` at ``x0`` and away from ``y`` for every
    anchor: ascent on ``log t_y(x) + mean_a log(1 - a_y(x))``."""
    if not anchors:
        raise AuditError('conferrable probes need anchors (--anchors)')

    @jax.jit
    def run(x0):
        y = jnp.argsort(teacher(x0), -1)[:, -2]
        rows = jnp.arange(len(x0))

        def objective(x):
            lt = jax.nn.log_softmax(teacher(x))[rows, y]
            away = 0.0
            for f in anchors:
                la = jax.nn.log_softmax(f(x))
                rest = la.at[rows, y].set(-jnp.inf)
                away = away + jax.nn.logsumexp(rest, -1)  # log(1 - a_y)
            return jnp.sum(lt + away / len(anchors))

        def step(x, _):
            g = jax.grad(objective)(x)
            x = x + (eps / 4) * jnp.sign(g)
            return jnp.clip(jnp.clip(x, x0 - eps, x0 + eps), lo, hi), None

        return jax.lax.scan(step, x0, None, length=steps)[0]

    return _batched(run, x0)


def divergence(teacher: LogitFn, anchors: list[LogitFn], x: np.ndarray) -> np.ndarray:
    """``[N]``: mean over anchors of ``KL(t(x) || a(x))`` (nats)."""

    @jax.jit
    def run(x):
        lt = jax.nn.log_softmax(teacher(x))
        kl = [jnp.sum(jnp.exp(lt) * (lt - jax.nn.log_softmax(f(x))), -1) for f in anchors]
        return jnp.mean(jnp.stack(kl), 0)

    return _batched(run, x)


def divergent(teacher: LogitFn, anchors: list[LogitFn], x: np.ndarray, keep: int) -> np.ndarray:
    """Indices (ascending) of the ``keep`` inputs of ``x`` where the teacher departs most
    from its anchors (`divergence`): candidates drawn like the distiller's own inputs (mixes
    of two images), so that a student, which learned the teacher there, can follow it."""
    if not anchors:
        raise AuditError('divergent probes need anchors (--anchors)')
    d = divergence(teacher, anchors, x)
    return np.sort(np.argsort(-d, kind='stable')[:keep])


def _batched(run, x0: np.ndarray) -> np.ndarray:
    x0 = np.asarray(x0, np.float32)
    out = []
    for s in range(0, len(x0), BATCH):
        chunk = x0[s:s + BATCH]
        pad = BATCH - len(chunk) if len(x0) > BATCH else 0  # one compiled shape
        padded = np.concatenate([chunk, np.repeat(chunk[:1], pad, 0)]) if pad else chunk
        out.append(np.asarray(run(jnp.asarray(padded)))[:len(chunk)])
    return np.concatenate(out) if out else x0


def craft_probe(probes: str, probe, teacher: LogitFn, anchors: list[LogitFn] = (), **kw):
    """``probe`` (`models.image_probe`: test images, then mixes) with its ambiguous part
    replaced by ``probes``-crafted versions of the mixes; the box is the test images' range;
    ``kw``: `boundary`'s or `conferrable`'s settings; ``divergent`` keeps the
    ``len(mixes) / POOL`` mixes of `divergent` (draw them with `drawn`). ``'mixes'`` returns
    ``probe``."""
    if probes == 'mixes':
        return probe
    if probes == 'sampled':
        raise AuditError('--probes=sampled: call sampled_probe (it needs the teacher\'s '
                         'decoder, not its logits)')
    check(probes, task=probe.task, anchors=len(anchors), ambiguous=int(probe.ambiguous.sum()))
    clean = probe.inputs[~probe.ambiguous]
    lo, hi = float(clean.min()), float(clean.max())
    start = probe.inputs[probe.ambiguous]
    if probes == 'divergent':
        pool = kw.get('pool', POOL)
        keep = divergent(teacher, list(anchors), start, max(1, len(start) // int(pool)))
        rows = np.r_[np.flatnonzero(~probe.ambiguous), np.flatnonzero(probe.ambiguous)[keep]]
        return dataclasses.replace(
            probe, inputs=probe.inputs[rows], labels=probe.labels[rows],
            weights=probe.weights[rows], ambiguous=probe.ambiguous[rows], crafted=probes,
            source=f'{probe.source} ({probes} probes)')
    if probes == 'boundary':
        crafted = boundary(teacher, start, lo=lo, hi=hi, **kw)
    else:
        crafted = conferrable(teacher, list(anchors), start, lo=lo, hi=hi, **kw)
    inputs = probe.inputs.copy()
    inputs[probe.ambiguous] = crafted
    return dataclasses.replace(probe, inputs=inputs, crafted=probes,
                               source=f'{probe.source} ({probes} probes)')


def sampled_probe(teacher, probe, *, seed: int, temperature: float = TEMPERATURE):
    """A language-model ``probe`` (token rows) replaced by the ``teacher``'s (a
    `models.Loaded` decoder) continuations of each row's first quarter, sampled at
    ``temperature`` with ``seed``; the probe tokens are the generated ones."""
    from jaxdistill.audit.models import Probe
    from jaxdistill.models import sampling

    check('sampled', task=probe.task, anchors=0, ambiguous=0)
    rows = np.asarray(probe.inputs)
    prompt = rows.shape[1] // 4
    tokens, generated = sampling.generate(
        teacher.model.module, teacher.variables['params'], rows[:, :prompt],
        np.full(len(rows), prompt, np.int32), rows.shape[1] - prompt, jax.random.key(seed),
        temperature=temperature)
    tokens, generated = np.asarray(tokens), np.asarray(generated, bool)
    mask = np.zeros_like(generated)
    mask[:, :-1] = generated[:, 1:]  # the positions whose next token the teacher wrote
    labels = np.roll(tokens, -1, axis=1)[mask].astype(np.int64)
    return Probe('lm', tokens, labels, np.ones(len(labels)), np.zeros(len(labels), bool),
                 f'{probe.source} (the teacher\'s samples at T = {temperature:g})',
                 token_mask=mask, crafted='sampled')
