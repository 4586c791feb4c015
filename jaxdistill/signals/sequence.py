"""``teacher_signal='sequence'``: the teacher's own completions of prompts, as a dataset.

Sequence-level distillation (Kim & Rush, 2016) and black-box distillation: all the student
gets from the teacher is text, as from an API. Each packed train row gives a prompt (its
first ``distill.sampling.prompt_len`` tokens); the teacher samples ``max_new_tokens``
tokens after it (temperature / top-k / top-p from ``distill.sampling``, chunk ``i`` with
``fold_in(key(seed), i)``, so the dataset is a pure function of the config). Row ``i`` of
the result is prompt ``i`` followed by its completion, packed like the data (``inputs``,
``targets``, ``mask``), with ``mask`` on the completion's targets only: the student
learns to continue prompts the way the teacher does, by cross-entropy.

The rows go to an ArrayRecord `store` (``WORKDIR/teacher_sequences``) keyed by a fingerprint
of the data (`store.rows_fingerprint`), the sampling settings and the teacher, so a rerun or a
resumed student reads the same completions and a changed setting is refused. As for the
``cached`` signal, host memory is bounded by a batch: the prompts are read
``distill.sampling.batch_size`` rows at a time (each process its block), the completions
written as they come, and training reads each batch's rows of the store lazily.

`Sequence` is the signal; ``distill.sampling`` (`sampling_defaults`, shared with
``on_policy``) is its config section.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxdistill import objective as objective_lib
from jaxdistill.data import text
from jaxdistill.errors import ConfigError
from jaxdistill.models import sampling
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.runtime import paths
from jaxdistill.signals import store
from jaxdistill.signals.base import BaseSignal, Context, Prepared


def directory(workdir: str) -> str:
    return paths.join(workdir, 'teacher_sequences')


def new_tokens(config) -> int:
    s = config.distill.sampling
    return s.max_new_tokens or config.data.seq_len - s.prompt_len


def sampling_defaults() -> ml_collections.ConfigDict:
    """``distill.sampling``: prompts and sampling for 'sequence' (the teacher samples) and
    'on_policy' (the student samples). A prompt is the first ``prompt_len`` tokens of a
    packed train row, completed by ``max_new_tokens`` sampled tokens (0: the rest of the
    row, data.seq_len - prompt_len)."""
    s = ml_collections.ConfigDict()
    s.prompt_len = 32
    s.max_new_tokens = 0
    s.temperature = 1.0
    s.top_k = 0  # 0: off
    s.top_p = 1.0  # 1: off
    s.batch_size = 256  # rows generated at once ('sequence')
    # A keyed green-list watermark in the teacher's samples ('sequence'; Kirchenbauer et al.
    # 2023): +delta on the logits of a gamma share of tokens chosen by hash(key, previous
    # token). key 0: off. Detect it with jaxdistill.audit.watermark (docs/audit.md).
    s.watermark = ml_collections.ConfigDict(dict(key=0, gamma=0.25, delta=2.0))
    return s


def check_sampling(config) -> None:
    """``distill.sampling`` against ``data.seq_len``: one line naming the key."""
    s, seq_len = config.distill.sampling, config.data.seq_len
    if not 1 <= s.prompt_len < seq_len:
        raise ConfigError(f'distill.sampling.prompt_len={s.prompt_len} must be in [1, '
                          f'data.seq_len={seq_len}): a prompt is the start of a train row')
    new = new_tokens(config)
    if s.max_new_tokens < 0 or s.prompt_len + new > seq_len:
        raise ConfigError(
            f'distill.sampling: prompt_len {s.prompt_len} + max_new_tokens {new} exceeds '
            f'data.seq_len={seq_len}: shorten the prompts or generate fewer tokens (0: the '
            'rest of the row)')
    if not s.temperature > 0:
        raise ConfigError(f'distill.sampling.temperature={s.temperature} must be > 0')
    if not 0 < s.top_p <= 1 or s.top_k < 0:
        raise ConfigError(f'distill.sampling: top_p={s.top_p} must be in (0, 1] and '
                          f'top_k={s.top_k} >= 0 (0 and 1.0 disable them)')
    if s.batch_size <= 0:
        raise ConfigError(f'distill.sampling.batch_size={s.batch_size} must be positive')
    from jaxdistill.audit import watermark

    watermark.check(s.watermark)


def check_sampler(config, model, key: str) -> None:
    """``model`` (``key``: 'teacher.module' or 'student.module') can sample a prompt plus
    its completion: a built-in `Decoder` (KV cache) whose context holds both."""
    from jaxdistill.models.decoder import Decoder

    where = f'distill.teacher_signal={config.distill.teacher_signal!r}: {key}'
    if not isinstance(model.module, Decoder):
        raise ConfigError(f'{where} is {type(model.module).__name__}: sampling needs the '
                          "built-in 'decoder' module (KV cache)")
    s, max_len = config.distill.sampling, model.module.max_len
    new = new_tokens(config)
    if s.prompt_len + new > max_len:
        raise ConfigError(
            f'distill.sampling: prompt_len {s.prompt_len} + max_new_tokens {new} = '
            f'{s.prompt_len + new} tokens exceed the context of {key} (max_len={max_len}): '
            'shorten the prompts or generate fewer tokens')


def fingerprint(config, task, teacher_sha256: str) -> dict[str, Any]:
    s = config.distill.sampling
    return {'kind': 'teacher_sequences', 'dataset': task.dataset,
            'tokenizer': config.data.tokenizer, 'vocab_size': int(task.tokenizer.vocab_size),
            'seq_len': int(config.data.seq_len),
            **store.rows_fingerprint(task.train_rows),
            'prompt_len': int(s.prompt_len), 'max_new_tokens': int(new_tokens(config)),
            'temperature': float(s.temperature), 'top_k': int(s.top_k),
            'top_p': float(s.top_p), 'seed': int(config.seed),
            'teacher_params_sha256': teacher_sha256, **_watermark(config)}


def _watermark(config) -> dict[str, Any]:
    """The watermark's settings, when one is on (absent otherwise, so stores written
    before watermarks existed keep their fingerprint)."""
    from jaxdistill.audit import watermark as wm

    spec = wm.spec(config.distill.sampling.get('watermark'))
    return {} if spec is None else {'watermark': dict(zip(('key', 'gamma', 'delta'), spec))}


def prompt_lengths(inputs: jax.Array, mask: jax.Array, prompt_len: int) -> jax.Array:
    """Real tokens among each row's first ``prompt_len`` inputs (input 0 is always real;
    input ``i > 0`` is real when target ``i - 1`` is)."""
    return 1 + jnp.sum(mask[:, :prompt_len - 1].astype(jnp.int32), axis=1)


def as_rows(tokens: jax.Array, generated: jax.Array, seq_len: int) -> dict[str, jax.Array]:
    """``[B, L]`` prompt + completion (``L <= seq_len``) -> next-token rows of ``seq_len``,
    ``mask`` True exactly on targets that were generated."""
    pad = seq_len + 1 - tokens.shape[1]
    tokens = jnp.pad(tokens, ((0, 0), (0, pad)))
    generated = jnp.pad(generated, ((0, 0), (0, pad)))
    return {'inputs': tokens[:, :seq_len], 'targets': tokens[:, 1:seq_len + 1],
            'mask': generated[:, 1:seq_len + 1]}


def complete(module, params, rows: dict[str, jax.Array], rng: jax.Array, config
             ) -> dict[str, jax.Array]:
    """Completes the prompts of ``rows`` with ``module`` (a `Decoder`); returns new rows."""
    from jaxdistill.audit import watermark as wm

    s = config.distill.sampling
    lengths = prompt_lengths(rows['inputs'], rows['mask'], s.prompt_len)
    tokens, generated = sampling.generate(
        module, params, rows['inputs'][:, :s.prompt_len], lengths, new_tokens(config), rng,
        temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
        watermark=wm.spec(s.get('watermark')))
    return as_rows(tokens, generated, config.data.seq_len)


def _chunks(config, rows, teacher, teacher_vars, mesh, counted: dict[str, int]
            ) -> Iterator[dict[str, np.ndarray]]:
    """The completions in row order, a batch at a time; ``counted['generated_tokens']``
    sums their generated targets as they stream."""
    batch = config.distill.sampling.batch_size
    source = text.as_source(rows)
    n = len(source)
    local = batch // jax.process_count()
    own = jax.process_index() * local
    key = jax.random.key(config.seed)
    fn = jax.jit(lambda params, r, rng: complete(teacher.module, params, r, rng, config))
    for i, start in enumerate(range(0, n, batch)):
        ids = np.minimum(start + own + np.arange(local), n - 1)
        mine = source.take(ids)
        part = mesh_lib.to_global(mesh, {k: mine[k] for k in ('inputs', 'mask')})
        out = mesh_lib.to_host(fn(teacher_vars['params'], part, jax.random.fold_in(key, i)))
        keep = min(batch, n - start)
        chunk = {k: np.asarray(v[:keep]) for k, v in out.items()}
        counted['generated_tokens'] += int(chunk['mask'].sum())
        yield chunk


def build(config, task, teacher, teacher_vars, mesh, path: str, expected: dict[str, Any],
          say=print) -> dict[str, Any]:
    """Generates the completions once (process 0 writes), or checks the stored ones."""
    if store.exists(path):
        spec = store.read_spec(path)
        store.check_fingerprint(spec, expected, path, 'distill.teacher_signal=sequence')
        say(f'teacher sequences: {spec["rows"]} completions at {path}: reused')
        return spec
    s = config.distill.sampling
    say(f'teacher sequences: completing {len(text.as_source(task.train_rows))} prompts of '
        f'{s.prompt_len} tokens with {new_tokens(config)} sampled tokens -> {path}')
    counted = {'generated_tokens': 0}
    chunks = _chunks(config, task.train_rows, teacher, teacher_vars, mesh, counted)
    if jax.process_index() == 0:
        store.write(path, expected, chunks, extra=lambda: dict(counted))
    else:
        for _ in chunks:
            pass
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices('jaxdistill teacher sequences written')
    return store.read_spec(path)


class Completions:
    """The stored completions as train rows, read lazily (``mask`` as booleans)."""

    def __init__(self, rows: store.StoreRows) -> None:
        self.stored = rows

    def __len__(self) -> int:
        return len(self.stored)

    def take(self, ids) -> dict[str, np.ndarray]:
        out = self.stored.take(ids)
        out['mask'] = out['mask'].astype(bool)
        return out


def open_rows(path: str, expected: dict[str, Any]) -> Completions:
    return Completions(store.open_rows(path, expected, 'distill.teacher_signal=sequence'))


def load(path: str, expected: dict[str, Any]) -> dict[str, np.ndarray]:
    """Every completion in memory (small stores, tests); training reads `open_rows`."""
    rows = open_rows(path, expected)
    return rows.take(np.arange(len(rows)))


def generated_tokens(spec: dict[str, Any], rows: Completions) -> int:
    """Generated targets in the store: counted while it was written (older stores: one
    pass over their masks, a chunk at a time)."""
    if 'generated_tokens' in spec:
        return int(spec['generated_tokens'])
    return sum(int(c['mask'].sum()) for c in store.chunks_of(rows))


class Sequence(BaseSignal):
    """``sequence``: the student trains by cross-entropy on the teacher's completions of
    train prompts (text only, as from an API); the teacher never runs in the step."""

    name = 'sequence'
    tasks = ('lm',)
    teacher_in_step = False
    report_keys = ('teacher_sequences', 'generated_tokens')

    def defaults(self) -> dict[str, ml_collections.ConfigDict]:
        return {'sampling': sampling_defaults()}

    def check_config(self, config) -> None:
        if config.teachers:
            raise ConfigError("distill.teacher_signal='sequence' samples from one teacher: "
                              "remove `teachers`, or use 'online' / 'cached' for an ensemble")
        check_sampling(config)

    def check_models(self, config, teacher, student, objective) -> None:
        check_sampler(config, teacher, 'teacher.module')

    def objective(self, configured):
        return objective_lib.label_only()  # cross-entropy on the teacher's text

    def prepare(self, context: Context) -> Prepared:
        config = context.config
        path = directory(context.workdir)
        expected = fingerprint(config, context.task, context.teacher_sha256)
        spec = build(config, context.task, context.teacher, context.teacher_vars,
                     context.mesh, path, expected, context.say)
        rows = open_rows(path, expected)
        return Prepared(rows, provenance={
            'teacher_sequences': path, 'generated_tokens': generated_tokens(spec, rows),
            'sampling': config.distill.sampling.to_dict()})
