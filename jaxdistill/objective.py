"""The training objective: a weighted sum of loss terms built from ``distill.losses``.

Each entry is ``{name, weight, ...hyper}``; ``weight`` and ``temperature`` may be a
number or a schedule ``{'schedule': 'constant'|'linear'|'cosine', 'start': a,
'end': b, 'steps': n}`` (``steps`` defaults to the stage's length). ``ce`` is the
label term; every other name is a loss registered in `jaxdistill.losses`, whose `LossSpec`
says how to call it (its kind, labels, batch level, sparse form). Each term is logged as
``distill/<name>`` (unweighted, reduced) and the total as ``loss``.

Everything is validated by `build` at config time, before anything is compiled.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from jaxdistill import losses
from jaxdistill.errors import ConfigError

Schedule = Callable[[jax.Array], jax.Array]
# A teacher known by its top-k log-probabilities (defined with the sparse losses; kept here for
# the code that built it from `jaxdistill.objective`).
SparseTeacher = losses.SparseTeacher
dense_logprobs = losses.dense_logprobs


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
    def spec(self) -> losses.LossSpec:
        return losses.spec(self.name)

    @property
    def needs_teacher(self) -> bool:
        return self.spec.needs_teacher


@dataclasses.dataclass(frozen=True, eq=False)
class Objective:
    terms: tuple[Term, ...]
    # Several teachers combined by loss terms (``distill.ensemble='terms'``): teacher logits
    # arrive stacked ``[K, ...]`` and each teacher-based logit term is the weighted sum of
    # its value against every teacher. None: one teacher distribution.
    teacher_weights: tuple[float, ...] | None = None
    # Teacher and student with different tokenizers: the shared vocabulary of the
    # cross-tokenizer terms (`crosstok.data.CrossVocab`), set once the models are known.
    cross: Any = None

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
            if t.spec.kind == 'relational':
                continue  # relations between examples: any widths
            if s_shape[:-1] != t_shape[:-1]:
                raise ConfigError(
                    f'{t.key}: student layer {t.taps[0]!r} {list(s_shape)} and teacher layer '
                    f'{t.taps[1]!r} {list(t_shape)} differ in more than the feature (last) '
                    'axis: pair layers with the same spatial / sequence size')
            if t.spec.projected and s_shape[-1] != t_shape[-1]:
                out[t.key] = (s_shape[-1], t_shape[-1])
        return out

    def __call__(self, step: jax.Array, student_logits: jax.Array,
                 teacher_logits: jax.Array | None, targets: jax.Array,
                 mask: jax.Array | None = None, *,
                 label_mask: jax.Array | None = None,
                 student_features: Mapping[str, jax.Array] | None = None,
                 teacher_features: Mapping[str, jax.Array] | None = None,
                 projections: Mapping[str, jax.Array] | None = None,
                 window: Window | None = None,
                 precomputed: Mapping[int, jax.Array] | None = None,
                 ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Returns ``(loss, metrics)``: the mean over valid examples of the weighted sum.

        ``targets`` are label probabilities ``[B, C]`` (one-hot, or mixed by mixup) or
        integer labels with one axis fewer than the logits (``[B]``, tokens ``[B, T]``);
        feature terms read the tapped ``*_features`` and learned ``projections``.
        ``label_mask`` marks the rows whose labels may be used: terms that read labels
        (``ce``, ``dkd``) average over those rows only, the others over every valid row.
        ``window`` (gradient accumulation, from `accumulation_window`): this batch is one
        micro-batch of a larger one; each term is scaled to its share of that batch's mean.
        ``precomputed``: values of logit terms (by index) computed another way, chunk by
        chunk or on sharded logits (`jaxdistill.train.hidden_logits`).
        """
        total = jnp.zeros((), jnp.float32)
        metrics = {}
        for i, (term, metric) in enumerate(zip(self.terms, self.metric_names)):
            totals = None  # across tokenizers a term scales its own parts (`counts`)
            if term.taps:
                value = self._feature_term(term, student_features, teacher_features,
                                           projections or {}, mask)
            else:
                rows = rows_of(term, mask, label_mask)
                totals = (window.counts[i] if window is not None
                          and term.spec.kind == 'cross_token' else None)
                value = (precomputed[i] if precomputed and i in precomputed else
                         self._term(term, step, student_logits, teacher_logits, targets, rows,
                                    totals))
            if window is not None and totals is None:
                value = window.share(value, window.counts[i], rows_of(
                    term, mask, label_mask), student_logits.shape[:-1])
            metrics[metric] = value
            total = total + _at(term.weight, step) * value
        metrics['loss'] = total
        return total, metrics

    def _feature_term(self, term, student_features, teacher_features, projections, mask):
        spec = term.spec
        fn = spec.fn
        h_s = student_features[term.taps[0]]
        h_t = jax.lax.stop_gradient(teacher_features[term.taps[1]])
        kwargs = dict(term.hyper)
        if term.key in projections:
            kwargs['projection'] = projections[term.key]
        if spec.batch_level:
            return fn(h_s.reshape(h_s.shape[0], -1), h_t.reshape(h_t.shape[0], -1), **kwargs)
        per_example = fn(h_s, h_t, **kwargs)
        if mask is not None:
            mask = mask.reshape(mask.shape + (1,) * (per_example.ndim - mask.ndim))
        return losses.token_mean(per_example, mask)

    def _term(self, term, step, student_logits, teacher_logits, targets, mask, totals=None):
        spec = term.spec
        integer_labels = targets.ndim == student_logits.ndim - 1
        if spec.kind == 'label':
            return losses.token_mean(_label_term(spec, student_logits, targets, integer_labels),
                                     mask)
        kwargs = dict(term.hyper)
        if term.temperature is not None:
            kwargs['temperature'] = _at(term.temperature, step)
        if spec.needs_labels:
            kwargs['labels'] = targets if integer_labels else jnp.argmax(targets, axis=-1)
        if spec.kind == 'cross_token':  # another tokenizer (`jaxdistill.crosstok`)
            from jaxdistill.crosstok import objective as cross_objective

            return cross_objective.term(spec, kwargs, student_logits, targets, mask,
                                        teacher_logits, self.cross, totals)
        if isinstance(teacher_logits, losses.SparseTeacher):
            return self._sparse_term(spec, student_logits, teacher_logits, kwargs, mask)
        if spec.kind == 'sparse':
            raise ConfigError(
                f'{term.key} ({term.name!r}) compares the student with a sparse (top-k) teacher, '
                "and this run's teacher gives full logits: set distill.teacher_signal='cached' "
                "or use 'kd' / 'forward_kl'")

        def against(t_logits):
            if spec.batch_level:
                return spec.fn(student_logits, t_logits, **kwargs)
            return losses.token_mean(spec.fn(student_logits, t_logits, **kwargs), mask)

        if self.teacher_weights is None:
            return against(teacher_logits)
        return sum(w * against(teacher_logits[k]) for k, w in enumerate(self.teacher_weights))

    def _sparse_term(self, spec, student_logits, teacher: losses.SparseTeacher, kwargs, mask):
        if spec.sparse is not None:  # exact on the top-k (`losses.topk_kl`)
            value = spec.sparse(student_logits, teacher, **kwargs)
        else:
            dense = losses.dense_logprobs(teacher, student_logits.shape[-1])
            if spec.batch_level:
                return spec.fn(student_logits, dense, **kwargs)
            value = spec.fn(student_logits, dense, **kwargs)
        return losses.token_mean(value, mask)


def _label_term(spec: losses.LossSpec, student_logits, targets, integer_labels: bool):
    """A label loss's per-example values: integer labels (tokens: no ``[B, T, V]`` one-hot),
    or label probabilities ``[B, C]`` (one-hot, or mixed by mixup)."""
    if integer_labels:
        return spec.fn(student_logits, targets)
    if spec.soft_labels is None:
        raise ConfigError(f'loss {spec.name!r} takes integer labels, and this task gives label '
                          'probabilities (mixup): set data.mixup=0 or use ce')
    return spec.soft_labels(student_logits, targets)


def rows_of(term: Term, mask, label_mask):
    """The rows a logit term averages over: ``mask``, and for label terms ``label_mask``."""
    if label_mask is not None and term.spec.needs_labels:
        return label_mask if mask is None else mask & label_mask
    return mask


def _count(rows, shape) -> jax.Array:
    if rows is None:
        return jnp.asarray(math.prod(shape), jnp.float32)
    return jnp.sum(jnp.broadcast_to(rows, shape), dtype=jnp.float32)


class Window(NamedTuple):
    """A gradient-accumulation window: per term, the valid entries of the *whole* batch its
    mean divides by (None: a feature or batch-level term, averaged over the micro-batches)."""

    counts: tuple[jax.Array | None, ...]
    micro_batches: int

    def share(self, value, count, rows, shape) -> jax.Array:
        """A micro-batch's term mean as its share of the whole batch's mean: ``sum / count``
        becomes ``sum / total``, so the shares add up to one large batch's value."""
        if count is None:
            return value / self.micro_batches
        return value * _count(rows, shape) / jnp.maximum(count, 1.0)


def accumulation_window(objective: Objective, logits_shape: tuple[int, ...], mask, label_mask,
                        micro_batches: int, teacher: Any = None) -> Window:
    """The `Window` of a batch split into ``micro_batches``, from its (whole-batch) masks;
    ``logits_shape`` is the whole batch's ``[B, ..., V]``; ``teacher``: the whole batch's
    `crosstok.losses.CrossTeacher` (its terms count their aligned positions and spans)."""
    def count(t):
        if t.taps or t.spec.batch_level:
            return None
        if t.spec.kind == 'cross_token':
            from jaxdistill.crosstok import objective as cross_objective

            return cross_objective.counts(t.spec, teacher, rows_of(t, mask, label_mask))
        return _count(rows_of(t, mask, label_mask), logits_shape[:-1])

    counts = tuple(count(t) for t in objective.terms)
    return Window(counts, micro_batches)


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
        spec = losses.spec(name)  # unknown names raise with the known ones listed
        temperature = None
        taps = None
        if spec.tapped:
            taps = (entry.pop('student', None), entry.pop('teacher', None))
            if not all(isinstance(t, str) and t for t in taps):
                raise ConfigError(
                    f"{where} ({name!r}) needs the layers to compare: 'student' and 'teacher' "
                    "module paths, e.g. {'name': 'feature_mse', 'student': 'conv0', "
                    "'teacher': 'conv1'} (--config.mode=list_features lists them)")
        if spec.kind == 'label':
            if entry:
                raise ConfigError(f"{where} ({name!r}) takes only a weight, got {sorted(entry)}")
        else:
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
