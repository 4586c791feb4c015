"""``teacher_signal='cached'``: the teacher's top-k log-probabilities per train token, stored once.

`build` runs the frozen teacher once over every packed train row (in row order) and keeps,
per token, its ``k`` most likely ids and their log-probabilities (full-vocabulary
normalised, T = 1), quantised:

* ``float16``: ids as uint16 (int32 past 65,535 ids) and log-probabilities as float16:
  ``k * 4`` bytes per token (128 B at k = 32);
* ``uint8``: log-probabilities as ``round(-log p / scale)`` with one float32 ``scale`` per
  token (``-min log p / 255``): ``k * 3 + 4`` bytes per token (100 B at k = 32), an error of
  at most ``scale / 2`` nats per entry.

The rows go to an ArrayRecord `store` keyed by a fingerprint of the dataset, tokenizer,
row length, train rows (`store.rows_fingerprint`: a packed corpus's own fingerprint, or the
bundled rows' digest), k, dtype and the teacher's parameters; training joins them to the
packed rows by row index (`attach`), so every batch carries its own top-k and the step never
runs the teacher. The arrays stay quantised on the host; `decode` widens them inside the
step.

Host memory is bounded by a batch, not by the corpus: the build reads the packed rows
``data.eval_batch_size`` at a time in row order (each process its own block of each batch;
process 0 writes the store as the chunks come), and training reads each batch's rows of
the corpus and of the store lazily, each process its own.

`Cached` is the signal: ``distill.cache`` is its config section.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from jax.experimental import multihost_utils

from jaxdistill.data import text
from jaxdistill.errors import ConfigError
from jaxdistill.objective import SparseTeacher
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.runtime import paths
from jaxdistill.signals import store
from jaxdistill.signals.base import BaseSignal, Context, Prepared, require_teacher_term

DTYPES = ('float16', 'uint8')
KEYS = ('topk_ids', 'topk_lp', 'topk_scale')  # what `attach` adds to each row
# Across tokenizers (`jaxdistill.crosstok`) the cache is per *teacher* token of each row: it
# also keeps the exact log-probability of every actual teacher token, and the teacher's tokens
# and byte offsets, checked against the run's own on load.
CROSS_KEYS = ('xt_target_lp',)
CROSS_CHECK = ('xt_teacher_ids', 'xt_teacher_end')


def directory(config, workdir: str) -> str:
    path = config.distill.cache.path
    return paths.resolve(path) if path else paths.join(workdir, 'teacher_cache')


def fingerprint(config, task, teacher_sha256: str) -> dict[str, Any]:
    """What a cache is valid for; a cache whose fingerprint differs is refused."""
    c = config.distill.cache
    return {'kind': 'teacher_topk', 'dataset': task.dataset, 'tokenizer': config.data.tokenizer,
            'vocab_size': int(task.tokenizer.vocab_size), 'seq_len': int(config.data.seq_len),
            **store.rows_fingerprint(task.train_rows), 'k': int(c.k), 'dtype': c.dtype,
            'teacher_params_sha256': teacher_sha256, **_cross_fingerprint(task)}


def _cross_fingerprint(task) -> dict[str, Any]:
    cross = task.cross
    if not cross:
        return {}
    from jaxdistill.data.packed import tokenizer_sha256

    return {'teacher_tokenizer_sha256': tokenizer_sha256(cross.teacher_tokenizer),
            'teacher_len': int(cross.teacher_len)}


def encode(logprobs: np.ndarray, ids: np.ndarray, dtype: str, vocab_size: int
           ) -> dict[str, np.ndarray]:
    """``[n, T, k]`` float32 log-probabilities and ids -> the stored arrays."""
    id_type = np.uint16 if vocab_size <= 65536 else np.int32
    out = {'topk_ids': ids.astype(id_type)}
    if dtype == 'float16':
        out['topk_lp'] = logprobs.astype(np.float16)
        out['topk_scale'] = np.zeros(logprobs.shape[:-1], np.float32)  # unused
    else:
        neg = np.clip(-logprobs.astype(np.float32), 0.0, None)
        scale = np.maximum(neg.max(-1), 1e-6) / 255.0
        out['topk_lp'] = np.clip(np.rint(neg / scale[..., None]), 0, 255).astype(np.uint8)
        out['topk_scale'] = scale.astype(np.float32)
    return out


def decode(batch: dict[str, Any]) -> SparseTeacher:
    """The stored arrays of a batch (inside the jitted step) -> `SparseTeacher`."""
    lp = batch['topk_lp']
    if lp.dtype == jnp.uint8:
        lp = -lp.astype(jnp.float32) * batch['topk_scale'][..., None]
    return SparseTeacher(batch['topk_ids'].astype(jnp.int32), lp.astype(jnp.float32))


def bytes_per_token(spec: dict[str, Any]) -> float:
    """Stored payload bytes per row position (float16 carries an unused 4-byte scale; it is
    not counted, so the number is the format's own: k*4, or k*3 + 4 for uint8)."""
    per_row = spec['bytes'] / max(spec['rows'], 1)
    seq_len = spec['fingerprint']['seq_len']
    if spec['fingerprint']['dtype'] == 'float16':
        per_row -= 4 * seq_len
    return per_row / seq_len


def _topk_fn(teacher, k: int):
    def topk(teacher_vars, inputs, targets=None):
        logits, _, _ = teacher.apply(teacher_vars['params'], teacher_vars['state'], inputs,
                                     train=False)
        logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
        if targets is None:
            return jax.lax.top_k(logp, k)
        target = jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
        return (*jax.lax.top_k(logp, k), target)

    return jax.jit(topk)


def _chunks(take, n: int, topk, teacher_vars, mesh, batch: int, dtype: str,
            vocab_size: int, cross: bool) -> Iterator[dict[str, np.ndarray]]:
    """Row order, ``batch`` rows at a time, read by ``take(ids)`` as they are needed:
    process ``p`` feeds its contiguous block of each batch (the last batch padded with the
    last row), every process gets every result."""
    local = batch // jax.process_count()
    own = jax.process_index() * local
    for start in range(0, n, batch):
        ids = np.minimum(start + own + np.arange(local), n - 1)
        keep = min(batch, n - start)
        part = take(ids)
        if not cross:
            inputs = mesh_lib.to_global(mesh, {'inputs': part['inputs']})['inputs']
            values, top = mesh_lib.to_host(topk(teacher_vars, inputs))
            yield encode(values[:keep], top[:keep], dtype, vocab_size)
            continue
        both = mesh_lib.to_global(mesh, {'inputs': part['inputs'], 'targets': part['targets']})
        values, top, target = mesh_lib.to_host(topk(teacher_vars, both['inputs'],
                                                    both['targets']))
        # the whole batch's teacher tokens, for the store: one process already read them
        kept = part if jax.process_count() == 1 else take(start + np.arange(keep))
        yield {**encode(values[:keep], top[:keep], dtype, vocab_size),
               'xt_target_lp': target[:keep].astype(np.float32),
               'xt_teacher_ids': kept['inputs'][:keep].astype(np.int32),
               'xt_teacher_end': kept['ends'][:keep]}


def build(config, task, teacher, teacher_vars, mesh, path: str, expected: dict[str, Any],
          say=print) -> dict[str, Any]:
    """Writes the cache at ``path`` (process 0), or checks the one there; returns its spec."""
    c = config.distill.cache
    if store.exists(path):
        spec = store.read_spec(path)
        store.check_fingerprint(spec, expected, path, 'distill.cache.path')
        say(f'teacher cache: {spec["rows"]} rows at {path} ({bytes_per_token(spec):.0f} '
            'bytes/token): reused')
        return spec
    cross = task.cross
    vocab = int((cross.teacher_tokenizer if cross else task.tokenizer).vocab_size)
    take = cross.teacher_train_take if cross else text.as_source(task.train_rows).take
    n = len(text.as_source(task.train_rows))
    say(f'teacher cache: top-{c.k} {c.dtype} log-probabilities of {n} train rows -> {path}'
        + (' (per teacher token)' if cross else ''))
    topk = _topk_fn(teacher, int(c.k))
    chunks = _chunks(take, n, topk, teacher_vars, mesh, config.data.eval_batch_size, c.dtype,
                     vocab, bool(cross))
    if jax.process_index() == 0:
        spec = store.write(path, expected, chunks)
    else:
        for _ in chunks:  # the collectives of process 0's loop
            pass
    if jax.process_count() > 1:
        multihost_utils.sync_global_devices('jaxdistill teacher cache written')
    spec = store.read_spec(path)
    say(f'teacher cache: {spec["rows"]} rows, {bytes_per_token(spec):.0f} bytes/token '
        f'({spec["bytes"] / 2**20:.1f} MiB)')
    return spec


def open_rows(path: str, expected: dict[str, Any], rows: int) -> store.StoreRows:
    """The cache for lazy reading (fingerprint checked; one row per packed train row)."""
    cache = store.open_rows(path, expected, 'distill.cache.path')
    if len(cache) != rows:
        raise ConfigError(f'distill.cache.path={path} has {len(cache)} rows, the '
                          f'train split {rows}: remove it to rebuild it')
    return cache


def load(path: str, expected: dict[str, Any], rows: int) -> dict[str, np.ndarray]:
    """The whole cache in memory (small caches, tests); training reads it through
    `open_rows`."""
    cache = open_rows(path, expected, rows)
    return cache.take(np.arange(len(cache)))


def attach(rows: Any, cache: Any) -> store.Joined:
    """The packed rows joined to their cached top-k by row index (``take(ids)`` carries
    both); either may be arrays in memory or read lazily (`PackedRows`, `store.StoreRows`)."""
    return store.Joined(rows, cache, KEYS + CROSS_KEYS)


class Cached(BaseSignal):
    """``cached``: each batch carries the teacher's stored top-k; ``kd``/``forward_kl`` become
    exact sparse KLs (`objective.SparseTeacher`) and the teacher never runs in the step."""

    name = 'cached'
    tasks = ('lm',)
    teacher_in_step = False
    report_keys = ('teacher_cache', 'cache_k', 'cache_dtype', 'cache_bytes_per_token')

    def defaults(self) -> dict[str, ml_collections.ConfigDict]:
        c = ml_collections.ConfigDict()
        c.k = 32  # top-k teacher log-probabilities kept per token
        c.dtype = 'float16'  # 'float16', or 'uint8' (quantised per token)
        c.path = ''  # empty: WORKDIR/teacher_cache
        return {'cache': c}

    def check_config(self, config) -> None:
        c = config.distill.cache
        if c.dtype not in DTYPES:
            raise ConfigError(f"distill.cache.dtype={c.dtype!r} must be 'float16' or 'uint8'")
        if c.k < 1:
            raise ConfigError(f'distill.cache.k={c.k} must be >= 1 (e.g. 32)')

    def check_models(self, config, teacher, student, objective) -> None:
        require_teacher_term(self.name, objective)

    def step_teacher(self, batch: dict[str, Any]) -> Any:
        if 'teacher_inputs' in batch:  # another tokenizer: the top-k of its own tokens
            from jaxdistill.crosstok.data import step_teacher

            return step_teacher(batch, sparse=decode(batch))
        return decode(batch)

    def prepare(self, context: Context) -> Prepared:
        config, task = context.config, context.task
        path = directory(config, context.workdir)
        expected = fingerprint(config, task, context.teacher_sha256)
        spec = build(config, task, context.teacher, context.teacher_vars, context.mesh, path,
                     expected, context.say)
        cache = open_rows(path, expected, len(text.as_source(task.train_rows)))
        if task.cross:  # its teacher tokens are this run's, offsets too
            task.cross.check_cache(cache, path)
        return Prepared(attach(task.train_rows, cache), provenance={
            'teacher_cache': path, 'cache_k': int(config.distill.cache.k),
            'cache_dtype': config.distill.cache.dtype,
            'cache_bytes_per_token': round(bytes_per_token(spec), 2)})
