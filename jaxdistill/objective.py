"""The training objective: a weighted sum of loss terms built from ``distill.losses``.

Each entry is ``{name, weight, ...hyper}``; ``weight`` and ``temperature`` may be a
number or a schedule ``{'schedule': 'constant'|'linear'|'cosine', 'start': a,
'end': b, 'steps': n}`` (``steps`` defaults to the stage's length). ``ce`` is the
label term; every other name is a function of `jaxdistill.losses`. Each term is logged
as ``distill/<name>`` (unweighted, reduced) and the total as ``loss``.

Everything is validated by `build` at config time, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from jaxdistill import losses
from jaxdistill.errors import ConfigError

Schedule = Callable[[jax.Array], jax.Array]
# Exact on a sparse (top-k) teacher: `losses.topk_kl`; kd adds its T^2 (see `_sparse_term`).
SPARSE_EXACT = ('kd', 'forward_kl', 'topk_kl')


class SparseTeacher(NamedTuple):
    """A teacher known only by its top-k log-probabilities per token (a cache or an API).

    ``logprobs`` are full-vocabulary log-probabilities at T = 1 (float32 ``[..., k]``),
    ``ids`` their vocabulary ids. ``kd``, ``forward_kl`` and ``topk_kl`` use them exactly
    (`losses.topk_kl`, top-k renormalised unless ``topk_kl`` says ``mode='tail'``); any
    other logit loss sees `dense_logprobs`: the top-k, and the remaining mass spread evenly
    over the other ids.
    """

    ids: jax.Array
    logprobs: jax.Array


def dense_logprobs(teacher: SparseTeacher, vocab_size: int) -> jax.Array:
    """``[..., V]`` log-probabilities: the top-k, and ``log(r / (V - k))`` elsewhere, where
    ``r = 1 - sum(top-k)`` (a floor of -1e4 when ``r`` is ~0, so no entry is -inf)."""
    lp = teacher.logprobs.astype(jnp.float32)
    k = lp.shape[-1]
    rest = jnp.clip(1.0 - jnp.sum(jnp.exp(lp), axis=-1, keepdims=True), 0.0, 1.0)
    fill = jnp.where(rest > 0, jnp.log(jnp.maximum(rest, 1e-30) / max(vocab_size - k, 1)), -1e4)
    dense = jnp.broadcast_to(jnp.maximum(fill, -1e4), lp.shape[:-1] + (vocab_size,))
    return jnp.put_along_axis(dense, teacher.ids.astype(jnp.int32), lp, axis=-1, inplace=False)
LABEL_LOSSES = ('ce',)
NEEDS_LABELS = ('dkd',)
BATCH_LEVEL = ('dist', 'rkd', 'similarity_mse')
FEATURE_LOSSES = ('feature_mse', 'feature_cosine', 'attention_transfer', 'rkd', 'similarity_mse')
RELATIONAL = ('rkd', 'similarity_mse')  # relations between examples: any widths
PROJECTED = ('feature_mse', 'feature_cosine')  # a learned projection when widths differ
SCHEDULED = ('weight', 'temperature')


def _schedule(value: Any, total_steps: int, key: str) -> Schedule | float:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, Mapping):
        raise ConfigError(f'{key}={value!r} must be a number or a schedule dict '
                          "{'schedule': 'linear', 'start': 1.0, 'end': 0.0}")
    value = dict(value)
    kind = value.pop('schedule', 'constant')
    start = float(value.pop('start', value.pop('value', 0.0)))
    end = float(value.pop('end', start))
    steps = int(value.pop('steps', total_steps))
    if value:
        raise ConfigError(f'{key}: unknown schedule keys {sorted(value)} '
                          '(known: schedule, start, end, steps)')
    if steps <= 0:
        raise ConfigError(f'{key}.steps={steps} must be positive')
    if kind == 'constant':
        return start
    if kind == 'linear':
        return lambda step: start + (end - start) * jnp.clip(step / steps, 0.0, 1.0)
    if kind == 'cosine':
        return lambda step: end + (start - end) * 0.5 * (
            1.0 + jnp.cos(math.pi * jnp.clip(step / steps, 0.0, 1.0)))
    raise ConfigError(f"{key}.schedule={kind!r} must be 'constant', 'linear' or 'cosine'")


def _weight(value: Any, total_steps: int, key: str) -> Schedule | float:
    """A term's weight: a number or schedule that is finite and >= 0 over its whole range.

    A negative weight would make the optimiser *maximise* its term (a KL to the teacher
    trained upwards, silently); constant, linear and cosine schedules are monotone, so
    their range is spanned by ``start`` and ``end``.
    """
    weight = _schedule(value, total_steps, key)
    if callable(weight):
        raw = value.to_dict() if hasattr(value, 'to_dict') else dict(value)
        start = float(raw.get('start', raw.get('value', 0.0)))
        span = (start, float(raw.get('end', start)))
        shown = f'{key}={raw} (from {span[0]:g} to {span[1]:g})'
    else:
        span, shown = (weight, weight), f'{key}={weight:g}'
    if not all(math.isfinite(w) and w >= 0 for w in span):
        raise ConfigError(f'{shown} must be finite and >= 0 throughout training: a negative weight '
                          'maximises its loss (use 0 to switch a term off)')
    return weight


def _at(value: Schedule | float, step: jax.Array) -> jax.Array | float:
    # A constant stays a Python float, so the losses can see T = 1 and skip the division
    # (`losses._tempered`): the KD term's student logsumexp is then the cross-entropy's.
    return jnp.asarray(value(step), jnp.float32) if callable(value) else float(value)


@dataclasses.dataclass(frozen=True, eq=False)
class Term:
    name: str
    weight: Schedule | float
    temperature: Schedule | float | None
    hyper: Mapping[str, Any]
    taps: tuple[str, str] | None = None  # (student layer, teacher layer) of feature losses
    key: str = ''  # where the term came from, for error messages and projector names

    @property
    def needs_teacher(self) -> bool:
        return self.name not in LABEL_LOSSES


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    terms: tuple[Term, ...]
    # Several teachers combined by loss terms (``distill.ensemble='terms'``): teacher logits
    # arrive stacked ``[K, ...]`` and each teacher-based logit term is the weighted sum of
    # its value against every teacher. None: one teacher distribution.
    teacher_weights: tuple[float, ...] | None = None

    @property
    def needs_teacher(self) -> bool:
        return any(t.needs_teacher for t in self.terms)

    @property
    def metric_names(self) -> tuple[str, ...]:
        """``distill/<name>`` per term; repeated names get the entry index appended."""
        names = [t.name for t in self.terms]
        return tuple(f'distill/{n}' if names.count(n) == 1 else f'distill/{n}_{i}'
                     for i, n in enumerate(names))

    @property
    def student_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.taps[0] for t in self.terms if t.taps))

    @property
    def teacher_taps(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(t.taps[1] for t in self.terms if t.taps))

    def describe(self) -> list[dict[str, Any]]:
        """The terms as plain data, for provenance."""
        out = []
        for t in self.terms:
            entry = {'name': t.name, 'weight': _describe(t.weight), **dict(t.hyper)}
            if t.temperature is not None:
                entry['temperature'] = _describe(t.temperature)
            if t.taps:
                entry['student'], entry['teacher'] = t.taps
            out.append(entry)
        return out

    def projections(self, student_shapes: Mapping[str, tuple[int, ...]],
                    teacher_shapes: Mapping[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
        """Checks the tapped shapes; returns ``{term key: (d_student, d_teacher)}`` for the
        learned projections that feature losses need where widths differ."""
        out = {}
        for t in self.terms:
            if not t.taps:
                continue
            s_shape, t_shape = student_shapes[t.taps[0]], teacher_shapes[t.taps[1]]
            if t.name in RELATIONAL:
                continue  # relations between examples: any widths
            if s_shape[:-1] != t_shape[:-1]:
                raise ConfigError(
                    f'{t.key}: student layer {t.taps[0]!r} {list(s_shape)} and teacher layer '
                    f'{t.taps[1]!r} {list(t_shape)} differ in more than the feature (last) '
                    'axis: pair layers with the same spatial / sequence size')
            if t.name in PROJECTED and s_shape[-1] != t_shape[-1]:
                out[t.key] = (s_shape[-1], t_shape[-1])
        return out

    def __call__(self, step: jax.Array, student_logits: jax.Array,
                 teacher_logits: jax.Array | None, targets: jax.Array,
                 mask: jax.Array | None = None, *,
                 label_mask: jax.Array | None = None,
                 student_features: Mapping[str, jax.Array] | None = None,
                 teacher_features: Mapping[str, jax.Array] | None = None,
                 projections: Mapping[str, jax.Array] | None = None,
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns ``(loss, metrics)``: the mean over valid examples of the weighted sum.

        ``targets`` are label probabilities ``[B, C]`` (one-hot, or mixed by mixup) or
        integer labels with one axis fewer than the logits (``[B]``, tokens ``[B, T]``);
        feature terms read the tapped ``*_features`` and learned ``projections``.
        ``label_mask`` marks the rows whose labels may be used: terms that read labels
        (``ce``, ``dkd``) average over those rows only, the others over every valid row.
        """
        total = jnp.zeros((), jnp.float32)
        metrics = {}
        for term, metric in zip(self.terms, self.metric_names):
            if term.taps:
                value = self._feature_term(term, student_features, teacher_features,
                                           projections or {}, mask)
            else:
                rows = mask
                if label_mask is not None and term.name in LABEL_LOSSES + NEEDS_LABELS:
                    rows = label_mask if mask is None else mask & label_mask
                value = self._term(term, step, student_logits, teacher_logits, targets, rows)
            metrics[metric] = value
            total = total + _at(term.weight, step) * value
        metrics['loss'] = total
        return total, metrics

    def _feature_term(self, term, student_features, teacher_features, projections, mask):
        fn = losses.get(term.name)
        h_s = student_features[term.taps[0]]
        h_t = jax.lax.stop_gradient(teacher_features[term.taps[1]])
        kwargs = dict(term.hyper)
        if term.key in projections:
            kwargs['projection'] = projections[term.key]
        if term.name in BATCH_LEVEL:
            return fn(h_s.reshape(h_s.shape[0], -1), h_t.reshape(h_t.shape[0], -1), **kwargs)
        per_example = fn(h_s, h_t, **kwargs)
        if mask is not None:
            mask = mask.reshape(mask.shape + (1,) * (per_example.ndim - mask.ndim))
        return losses.token_mean(per_example, mask)

    def _term(self, term, step, student_logits, teacher_logits, targets, mask):
        integer_labels = targets.ndim == student_logits.ndim - 1
        if term.name == 'ce':
            if integer_labels:  # tokens: no [B, T, V] one-hot
                per_example = losses.softmax_cross_entropy(student_logits, targets)
            else:
                per_example = optax.softmax_cross_entropy(
                    student_logits.astype(jnp.float32), targets.astype(jnp.float32))
            return losses.token_mean(per_example, mask)
        kwargs = dict(term.hyper)
        if term.temperature is not None:
            kwargs['temperature'] = _at(term.temperature, step)
        if term.name in NEEDS_LABELS:
            kwargs['labels'] = targets if integer_labels else jnp.argmax(targets, axis=-1)
        if isinstance(teacher_logits, SparseTeacher):
            return self._sparse_term(term, student_logits, teacher_logits, kwargs, mask)
        fn = losses.get(term.name)
        def against(t_logits):
            if term.name in BATCH_LEVEL:
                return fn(student_logits, t_logits, **kwargs)
            return losses.token_mean(fn(student_logits, t_logits, **kwargs), mask)

        if self.teacher_weights is None:
            return against(teacher_logits)
        return sum(w * against(teacher_logits[k]) for k, w in enumerate(self.teacher_weights))


    def _sparse_term(self, term, student_logits, teacher: SparseTeacher, kwargs, mask):
        if term.name in SPARSE_EXACT:
            t = kwargs.get('temperature', 1.0)
            mode = kwargs.get('mode', 'renormalise') if term.name == 'topk_kl' else 'renormalise'
            value = losses.topk_kl(student_logits, teacher.logprobs, teacher.ids, mode=mode,
                                   temperature=t)
            value = value * t * t if term.name == 'kd' else value
        else:
            dense = dense_logprobs(teacher, student_logits.shape[-1])
            fn = losses.get(term.name)
            if term.name in BATCH_LEVEL:
                return fn(student_logits, dense, **kwargs)
            value = fn(student_logits, dense, **kwargs)
        return losses.token_mean(value, mask)


def _describe(value):
    return value if isinstance(value, float) else 'schedule'


def build(entries: Sequence[Mapping[str, Any]], total_steps: int,
          key: str = 'distill.losses',
          teacher_weights: Sequence[float] | None = None) -> Objective:
    """Validates ``entries`` and returns the `Objective` (no compilation happens here).

    ``teacher_weights`` (normalised): one weight per teacher when several teachers are
    combined by loss terms rather than by mixing their probabilities.
    """
    terms = []
    for i, raw in enumerate(entries):
        where = f'{key}[{i}]'
        if not isinstance(raw, Mapping) and not hasattr(raw, 'to_dict'):
            raise ConfigError(f'{where}={raw!r} must be a dict {{name, weight, ...}}')
        entry = dict(raw.to_dict() if hasattr(raw, 'to_dict') else raw)
        name = entry.pop('name', None)
        if not isinstance(name, str):
            raise ConfigError(f"{where} has no 'name': e.g. {{'name': 'kd', 'weight': 0.9}}")
        weight = _weight(entry.pop('weight', 1.0), total_steps, f'{where}.weight')
        temperature = None
        taps = None
        if name in FEATURE_LOSSES:
            taps = (entry.pop('student', None), entry.pop('teacher', None))
            if not all(isinstance(t, str) and t for t in taps):
                raise ConfigError(
                    f"{where} ({name!r}) needs the layers to compare: 'student' and 'teacher' "
                    "module paths, e.g. {'name': 'feature_mse', 'student': 'conv0', "
                    "'teacher': 'conv1'} (--config.mode=list_features lists them)")
        if name == 'ce':
            if entry:
                raise ConfigError(f"{where} ('ce') takes only a weight, got {sorted(entry)}")
        else:
            losses.get(name)  # unknown names raise with the known ones listed
            if 'temperature' in entry:
                temperature = _schedule(entry.pop('temperature'), total_steps,
                                        f'{where}.temperature')
                for t in _extremes(temperature, total_steps):
                    losses.validate_hyper(name, temperature=t)
            losses.validate_hyper(name, **entry)
        terms.append(Term(name, weight, temperature, entry, taps, where))
    return Objective(tuple(terms),
                     tuple(float(w) for w in teacher_weights) if teacher_weights else None)


def _extremes(value, total_steps: int) -> list[float]:
    if not callable(value):
        return [value]
    steps = jnp.linspace(0, total_steps, 11)
    return [float(value(s)) for s in steps]


def label_only() -> Objective:
    """Plain cross-entropy: how the teacher and the baseline student train."""
    return build([{'name': 'ce', 'weight': 1.0}], total_steps=1)
