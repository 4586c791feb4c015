"""The loss registry: each loss's function and what it is (its `LossSpec`), in one place.

A loss describes itself when it is registered: its kind, whether it reads labels, whether it
is batch-level, the rules its hyper-parameters obey, and the forms other code needs (per-entry
terms for the token-level memory paths, its exact form on a sparse teacher, its parts). The
objective (`jaxdistill.objective`), the token-level paths (`jaxdistill.losses.token`) and
the documentation table (`jaxdistill.losses.docs`) read these specs; nothing else keeps a
list of loss names. Adding a loss is one function and one `register` call.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import jax

from jaxdistill.errors import ConfigError, closest
from jaxdistill.losses.core import _is_concrete

Array = jax.Array

Kind = Literal['logit', 'feature', 'relational', 'sparse', 'label']
KINDS: tuple[str, ...] = ('logit', 'sparse', 'label', 'feature', 'relational')
"""``logit``: student vs teacher logits. ``sparse``: student logits vs a teacher's top-k
log-probabilities. ``label``: student logits vs the data's labels (no teacher). ``feature``:
tapped hidden states position by position. ``relational``: relations between the examples of
a batch of tapped embeddings (any widths)."""

# Call-time data, not configuration: validate_hyper refuses them as hyper-parameters.
_DATA_ARGS = frozenset({'where', 'labels', 'projection'})


@dataclasses.dataclass(frozen=True)
class Rule:
    """A numeric hyper-parameter's allowed values: a predicate, what it says, how to fix it."""

    test: Callable[[Any], bool]
    requirement: str  # e.g. 'must be > 0'
    fix: str  # e.g. 'use a positive number'

    def check(self, loss: str, key: str, value: Any, strict: bool) -> None:
        """Raises ConfigError for a bad number; traced values pass unless ``strict``."""
        if not _is_concrete(value):
            if strict:
                raise ConfigError(f'{key}={value!r} for loss {loss!r} must be a number')
            return
        if not math.isfinite(value) or not self.test(value):
            raise ConfigError(f'{key}={value!r} is invalid for loss {loss!r}: {key} '
                              f'{self.requirement}; {self.fix}')


@dataclasses.dataclass(frozen=True)
class Choice:
    """A string hyper-parameter: one of ``options``."""

    options: tuple[str, ...]

    @property
    def requirement(self) -> str:
        return 'one of ' + ', '.join(repr(o) for o in self.options)

    def check(self, loss: str, key: str, value: Any, strict: bool) -> None:
        del strict  # strings are never traced
        if value not in self.options:
            raise ConfigError(f'{key}={value!r} is invalid for loss {loss!r}: use one of '
                              f'{self.options} ({closest(str(value), self.options)})')


POSITIVE = Rule(lambda v: v > 0, 'must be > 0', 'use a positive number')
UNIT = Rule(lambda v: 0 <= v <= 1, 'must be in [0, 1]', 'use a weight between 0 and 1')
NON_NEGATIVE = Rule(lambda v: v >= 0, 'must be >= 0', 'use a non-negative weight')
TEMPERATURE = Rule(lambda v: v > 0, 'must be > 0', 'use e.g. 1.0 (typical: 1 to 4)')
COMMON_RULES: Mapping[str, Rule | Choice] = {'temperature': TEMPERATURE}
"""Rules every loss's hyper-parameter of that name obeys."""


@dataclasses.dataclass(frozen=True)
class Doc:
    """The loss's row in docs/losses.md (markdown); the rest of the row comes from its spec."""

    formula: str
    use: str
    paper: str = '—'
    notes: str = ''


@dataclasses.dataclass(frozen=True)
class LossSpec:
    """What a loss is, for the code that calls it by name (config -> objective).

    Attributes:
      name: the name configs use (``distill.losses[i].name``).
      fn: the public function.
      kind: one of `KINDS`.
      needs_labels: reads the data's labels (``labels=`` for logit losses); the objective
        averages it over the rows whose labels may be used.
      batch_level: returns one scalar for the batch (relations between examples), which the
        objective uses as is instead of averaging per-example values.
      rules: hyper-parameter name -> `Rule` / `Choice` (on top of `COMMON_RULES`).
      check: a check across hyper-parameters (e.g. ``topk_kl``'s tail needs ``T = 1``).
      projected: a feature loss that takes a learned ``projection`` where widths differ.
      terms: per-vocabulary-entry terms ``(log p_s, p_s, log p_t, p_t, *, temperature,
        **hyper)`` whose sum over the vocabulary is the loss: then the chunked and
        vocabulary-sharded paths (`jaxdistill.losses.token`) can evaluate it.
      sparse: the exact form against a `SparseTeacher` ``(student_logits, teacher, **hyper)``;
        None: a logit loss sees the teacher's `dense_logprobs` instead.
      soft_labels: for a label loss, the form taking label probabilities (mixup) rather than
        integer labels.
      parts: a function returning the loss's named parts (``{'total': ..., ...}``).
      doc: its row in docs/losses.md.
    """

    name: str
    fn: Callable[..., Array]
    kind: Kind = 'logit'
    needs_labels: bool = False
    batch_level: bool = False
    rules: Mapping[str, Rule | Choice] = dataclasses.field(default_factory=dict)
    check: Callable[[Mapping[str, Any]], None] | None = None
    projected: bool = False
    terms: Callable[..., Array] | None = None
    sparse: Callable[..., Array] | None = None
    soft_labels: Callable[..., Array] | None = None
    parts: Callable[..., dict[str, Array]] | None = None
    doc: Doc | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ConfigError(f'loss {self.name!r}: kind={self.kind!r} must be one of {KINDS}')

    @property
    def needs_teacher(self) -> bool:
        return self.kind != 'label'

    @property
    def tapped(self) -> bool:
        """Compares tapped intermediate layers (``student``/``teacher`` in its config entry)."""
        return self.kind in ('feature', 'relational')

    @property
    def hyper(self) -> tuple[str, ...]:
        """Its hyper-parameters: the keyword-only arguments that are not call-time data."""
        params = inspect.signature(self.fn).parameters.values()
        return tuple(p.name for p in params
                     if p.kind is inspect.Parameter.KEYWORD_ONLY and p.name not in _DATA_ARGS)


SPECS: dict[str, LossSpec] = {}
"""Loss name -> `LossSpec`, in registration order."""
REGISTRY: dict[str, Callable[..., Array]] = {}
"""Loss name (as written in configs) -> function."""
POINTWISE: dict[str, Callable[..., Array]] = {}
"""Name -> per-entry terms, for the losses that are a sum over the vocabulary of per-entry
terms of the two log-softmaxes: those `jaxdistill.losses.token` can evaluate chunk by chunk
or with the vocabulary sharded across devices."""


def register(name: str, fn: Callable[..., Array], **spec: Any) -> LossSpec:
    """Registers loss ``fn`` as ``name`` (the fields of `LossSpec`); returns its spec.

    Examples:
      >>> import jax.numpy as jnp
      >>> from jaxdistill import losses
      >>> def l1(student_logits, teacher_logits, *, temperature=1.0, where=None, axis=-1):
      ...     return jnp.abs(student_logits - teacher_logits).mean(axis) / temperature
      >>> spec = losses.register('l1', l1, kind='logit')
      >>> losses.get('l1') is l1, spec.hyper
      (True, ('temperature', 'axis'))
      >>> _ = losses.unregister('l1')
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ConfigError(f'loss name {name!r} must be an identifier, e.g. {"my_kd"!r}')
    if name in SPECS:
        raise ConfigError(f'loss {name!r} is already registered: pick another name, or '
                          'unregister it first')
    entry = LossSpec(name, fn, **spec)
    SPECS[name] = entry
    REGISTRY[name] = fn
    if entry.terms is not None:
        POINTWISE[name] = entry.terms
    return entry


def unregister(name: str) -> LossSpec:
    """Removes loss ``name`` (e.g. one a test registered); returns its spec."""
    entry = spec(name)
    del SPECS[name], REGISTRY[name]
    POINTWISE.pop(name, None)
    return entry


def spec(name: str) -> LossSpec:
    """The `LossSpec` of ``name``; raises ConfigError with the closest names if unknown.

    Raises:
      ConfigError: e.g. ``unknown loss 'kdd': did you mean 'kd'? known: attention_transfer,
        ce, ...``.
    """
    try:
        return SPECS[name]
    except (KeyError, TypeError):
        known = ', '.join(sorted(SPECS))
        hint = closest(str(name), SPECS)
        message = f'unknown loss {name!r}: {hint}'
        if not hint.startswith('known:'):
            message += f' known: {known}'
        raise ConfigError(message) from None


def get(name: str) -> Callable[..., Array]:
    """Returns the loss called ``name``; raises ConfigError with the closest names if unknown.

    Examples:
      >>> from jaxdistill import losses
      >>> losses.get('kd') is losses.kd
      True
      >>> losses.get('kdd')
      Traceback (most recent call last):
      ...
      jaxdistill.errors.ConfigError: unknown loss 'kdd': did you mean 'kd'? known: ...
    """
    return spec(name).fn


def names(*kinds: str) -> tuple[str, ...]:
    """The registered names, in registration order; only those of ``kinds`` if given."""
    return tuple(n for n, s in SPECS.items() if not kinds or s.kind in kinds)


def hyper_names(name: str) -> tuple[str, ...]:
    """The hyper-parameters (configurable keyword arguments) of loss ``name``."""
    return spec(name).hyper


def check_values(name: str, hyper: Mapping[str, Any], strict: bool = False) -> None:
    """Checks hyper-parameter values. Traced values are skipped unless ``strict``."""
    entry = SPECS.get(name)
    rules = {**COMMON_RULES, **(entry.rules if entry else {})}
    for key, value in hyper.items():
        if key in rules:
            rules[key].check(name, key, value, strict)
    if entry is not None and entry.check is not None:
        entry.check(hyper)


def validate_hyper(name: str, **hyper: Any) -> None:
    """Checks a loss name and its hyper-parameters at config time, before anything compiles.

    Raises ConfigError naming the key for: an unknown loss, an unknown hyper-parameter name
    (with the closest known names), a non-numeric value, and a value its `LossSpec` rules
    out (``temperature <= 0``, JSD ``beta`` or skew ``alpha`` outside ``[0, 1]``, negative
    DKD/DIST/RKD weights, an unknown ``topk_kl`` mode, ``mode='tail'`` with
    ``temperature != 1``, ...).

    Examples:
      >>> from jaxdistill import losses
      >>> losses.validate_hyper('jsd', temperature=2.0, beta=0.5)
      >>> losses.validate_hyper('jsd', beta=1.5)
      Traceback (most recent call last):
      ...
      jaxdistill.errors.ConfigError: beta=1.5 is invalid for loss 'jsd': beta must be in [0, 1]; use a weight between 0 and 1
    """  # noqa: E501
    check_hyper(name, **hyper)
    check_values(name, hyper, strict=True)


def check_hyper(name: str, **hyper: Any) -> None:
    """:func:`validate_hyper` for call time: traced values (schedules under jit) pass unchecked.

    Names are always checked; values only where they are Python numbers or strings.
    """
    known = hyper_names(name)
    for key in hyper:
        if key not in known:
            raise ConfigError(f'loss {name!r} has no hyper-parameter {key!r}: '
                              f'{closest(key, known)} (hyper-parameters: {", ".join(known)})')
    check_values(name, hyper)
