"""The models an audit compares, and the probe set they are compared on.

A model is named as on the command line:

* a jaxdistill stage directory, ``WORKDIR/teacher``, ``WORKDIR/student``,
  ``WORKDIR/baseline`` or ``WORKDIR/teacher_<i>``: the module comes from
  ``WORKDIR/config.json``, the variables from the stage's newest good checkpoint;
* an export (a directory with ``export.json``, `jaxdistill.export`);
* ``hf:DIR``: a Llama-style Hugging Face causal LM (safetensors + config.json), imported
  into the `decoder` module without PyTorch.

The probe set is the test split of a run's task (its ``config.json``): images and labels,
plus ambiguous probes (two test images of different labels mixed at a uniform weight, or
half and half, no label) for classification; the test rows' real tokens for language models.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from jaxdistill import provenance
from jaxdistill.audit.lineage import MIXES
from jaxdistill.audit.stats import AuditError
from jaxdistill.errors import JaxdistillError
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.train import checkpoint as ckpt_lib

STAGES = ('teacher', 'student', 'baseline')
MIN_EXAMPLES = 100  # classification probes (test examples)
MIN_TOKENS = 1000  # language-model probes (real tokens)


@dataclasses.dataclass
class Loaded:
    spec: str  # as given
    model: Model
    variables: dict[str, Any]
    config: ml_collections.ConfigDict | None  # the run's config, when known
    kind: str  # 'stage', 'export' or 'hf'
    params_sha256: str


def _tuples(x: Any) -> Any:
    if isinstance(x, dict):
        return {k: _tuples(v) for k, v in x.items()}
    if isinstance(x, list):
        return tuple(_tuples(v) for v in x)
    return x


def read_config(workdir: str) -> ml_collections.ConfigDict:
    """A run's config.json over today's defaults (a run written before a key existed gets
    its default, as the run itself did)."""
    from jaxdistill.config import base_config

    with open(os.path.join(workdir, 'config.json')) as f:
        saved = _tuples(json.load(f))
    config = base_config()
    _overlay(config, saved)
    return config


def _overlay(config: ml_collections.ConfigDict, saved: dict[str, Any]) -> None:
    for k, v in saved.items():
        node = config.get(k)
        if isinstance(v, dict) and isinstance(node, ml_collections.ConfigDict) and \
                k != 'kwargs':
            _overlay(node, v)
            continue
        with config.unlocked():
            try:
                config[k] = v
            except TypeError:  # a value of another type than today's default
                del config[k]
                config[k] = v


def _stage_entry(config, stage: str, flag: str) -> dict[str, Any]:
    if stage in ('student', 'baseline'):
        return config.student.to_dict()
    if stage == 'teacher':
        return config.teacher.to_dict()
    i = int(stage.split('_', 1)[1])
    if not 1 <= i <= len(config.teachers):
        raise AuditError(f'{flag}: the run has no {stage} (it has {len(config.teachers)} extra '
                         'teachers)')
    return dict(config.teachers[i - 1])


def _is_stage(name: str) -> bool:
    return name in STAGES or (name.startswith('teacher_') and name[8:].isdigit())


def load(spec: str, flag: str) -> Loaded:
    """Loads a model named by ``spec`` (see the module docstring); one-line errors."""

    try:
        if spec.startswith('hf:'):
            loaded = _load_hf(spec, flag)
        else:
            path = ckpt_lib.abspath(spec)
            if os.path.exists(os.path.join(path, 'export.json')):
                from jaxdistill import export
                e = export.load(path)
                cfg = e.provenance.get('config')
                loaded = Loaded(spec, e.model, e.variables,
                                ml_collections.ConfigDict(_tuples(cfg)) if cfg else None,
                                'export', '')
            else:
                loaded = _load_stage(spec, path, flag)
    except AuditError:
        raise
    except JaxdistillError as e:
        raise AuditError(f'{flag}={spec}: {e}') from None
    loaded.params_sha256 = provenance.params_sha256(loaded.variables['params'])
    return loaded


def _one_device_mesh():
    return mesh_lib.make_mesh(ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1)),
                              jax.devices()[:1])


def _load_stage(spec: str, path: str, flag: str) -> Loaded:
    workdir, stage = os.path.dirname(path.rstrip('/')), os.path.basename(path.rstrip('/'))
    if not os.path.isdir(path):
        raise AuditError(f'{flag}={spec} does not exist: give a stage directory '
                         '(WORKDIR/student, WORKDIR/teacher), an export or hf:DIR')
    if not _is_stage(stage) or not os.path.exists(os.path.join(workdir, 'config.json')):
        hint = (f' (this is a workdir: give {spec.rstrip("/")}/student or /teacher)'
                if os.path.exists(os.path.join(path, 'config.json')) else '')
        raise AuditError(f'{flag}={spec} is not a jaxdistill stage directory{hint}: give '
                         'WORKDIR/student, WORKDIR/baseline, WORKDIR/teacher, an export or hf:DIR')
    if not any(d.isdigit() for d in os.listdir(path)):
        raise AuditError(f'{flag}={spec} holds no checkpoint step: train it first (or give '
                         'a finished stage directory)')
    config = read_config(workdir)
    entry = _stage_entry(config, stage, flag)
    model = Model(modules.resolve(entry['module'], entry.get('kwargs', {}), key=f'{flag}: module'),
                  entry.get('logits_key', ''), stage)
    sample = _sample(config)
    params, state = jax.eval_shape(functools.partial(model.init, boxed=True),
                                   jax.random.key(0), sample)
    abstract, _ = mesh_lib.sharded_abstract(_one_device_mesh(), {'params': params,
                                                                 'state': state})
    variables = ckpt_lib.load_model(path, abstract,
                                    report=lambda *_: None)[0]
    return Loaded(spec, model, variables, config, 'stage', '')


def _sample(config) -> np.ndarray:
    if config.task == 'lm':
        return np.zeros((1, config.data.seq_len), np.int32)
    from jaxdistill import tasks
    return tasks.build(config).sample


def _load_hf(spec: str, flag: str) -> Loaded:
    """A Hugging Face causal LM (`jaxdistill.hf.load_causal_lm`: architecture from its
    config.json, weights checked tensor by tensor)."""
    from jaxdistill import hf

    path = os.path.expanduser(spec[len('hf:'):])
    if not os.path.isdir(path):
        raise AuditError(f'{flag}={spec}: no such directory; give hf:DIR with config.json and '
                         'model.safetensors of a causal LM')
    module, params, _ = hf.load_causal_lm(path)
    return Loaded(spec, Model(module, '', 'hf'), {'params': params, 'state': {}}, None, 'hf', '')


# ----------------------------------------------------------------------------- probes
@dataclasses.dataclass
class Probe:
    """What every model is run on. ``inputs``: images ``[N, ...]`` or token rows
    ``[R, T]``; ``labels [N]`` per output row (-1: no label, an ambiguous probe);
    ``weights [N]`` 1 for outputs that count; ``ambiguous [N]`` mixed probes."""

    task: str
    inputs: np.ndarray
    labels: np.ndarray
    weights: np.ndarray
    ambiguous: np.ndarray
    source: str
    token_mask: np.ndarray | None = None  # lm: [R, T] real targets
    crafted: str = ''  # the ambiguous probes were crafted from the teacher (craft.PROBES)

    @property
    def size(self) -> int:
        return int(self.weights.sum())


def probe_from_run(config, *, seed: int, ambiguous: int, max_tokens: int, source: str,
                   mix: str = 'uniform') -> Probe:
    """The test split of the run configured by ``config`` (a workdir's config.json)."""
    from jaxdistill import tasks

    task = tasks.build(config)
    if config.task == 'lm':
        rows = task.test_rows
        return lm_probe(rows['inputs'], rows['targets'], rows['mask'], seed=seed,
                        max_tokens=max_tokens, source=source)
    if config.task != 'classification':
        raise AuditError(f'--data={source}: task {config.task!r} has no output distribution to '
                         'fingerprint; the audit covers classification and lm')
    images, labels = [], []
    for batch in task.test_batches():
        keep = batch['mask'].astype(bool)
        images.append(batch['image'][keep])
        labels.append(batch['label'][keep])
    return image_probe(np.concatenate(images), np.concatenate(labels), seed=seed,
                       ambiguous=ambiguous, source=source, mix=mix)


def image_probe(images: np.ndarray, labels: np.ndarray, *, seed: int, ambiguous: int,
                source: str, mix: str = 'uniform') -> Probe:
    """Test images plus ``ambiguous`` mixes of two test images of different labels (drawn
    with ``seed``), ``w x_i + (1 - w) x_j`` with ``w ~ U(0, 1)`` (``mix='uniform'``, the
    default: chosen on the tuning zoo, docs/audit.md) or ``w = 1/2`` (``mix='half'``)."""
    if mix not in MIXES:
        raise AuditError(f'--mix={mix!r} is not one of {list(MIXES)}')
    n = len(images)
    if n < MIN_EXAMPLES:
        raise AuditError(f'--data={source}: {n} probe examples, the lineage test needs at least '
                         f'{MIN_EXAMPLES}; give a larger probe set with --data')
    rng = np.random.default_rng(seed)
    i = rng.integers(0, n, 4 * ambiguous)
    j = rng.integers(0, n, 4 * ambiguous)
    keep = labels[i] != labels[j]
    i, j = i[keep][:ambiguous], j[keep][:ambiguous]
    m = len(i)
    w = (rng.random(m) if mix == 'uniform' else np.full(m, 0.5)).astype(np.float32)
    w = w.reshape((m,) + (1,) * (images.ndim - 1))
    mixed = w * images[i].astype(np.float32) + (1 - w) * images[j].astype(np.float32)
    inputs = np.concatenate([images.astype(np.float32), mixed.astype(np.float32)])
    return Probe('classification', inputs,
                 np.concatenate([labels.astype(np.int64), -np.ones(m, np.int64)]),
                 np.ones(n + m), np.r_[np.zeros(n, bool), np.ones(m, bool)], source)


def lm_probe(inputs, targets, mask, *, seed: int, max_tokens: int, source: str) -> Probe:
    """Token rows; at most ``max_tokens`` real tokens (whole rows drawn with ``seed``)."""
    mask = np.asarray(mask, bool)
    order = np.random.default_rng(seed).permutation(len(inputs))
    keep = order[np.cumsum(mask[order].sum(1)) <= max_tokens] if max_tokens else order
    keep = np.sort(keep)
    inputs, targets, mask = inputs[keep], targets[keep], mask[keep]
    tokens = int(mask.sum())
    if tokens < MIN_TOKENS:
        raise AuditError(f'--data={source}: {tokens} probe tokens, the lineage test needs at '
                         f'least {MIN_TOKENS}; give more text with --data (or raise --max_tokens)')
    labels = np.asarray(targets)[mask].astype(np.int64)
    return Probe('lm', np.asarray(inputs), labels, np.ones(len(labels)),
                 np.zeros(len(labels), bool), source, token_mask=mask)


def load_npz_probe(path: str, *, seed: int, ambiguous: int, max_tokens: int,
                   mix: str = 'uniform') -> Probe:
    """``--data=FILE.npz``: ``image`` + ``label`` arrays (classification) or ``inputs``,
    ``targets``, ``mask`` token rows (lm)."""
    with np.load(path) as f:
        arrays = dict(f)
    if {'inputs', 'targets', 'mask'} <= set(arrays):
        return lm_probe(arrays['inputs'], arrays['targets'], arrays['mask'], seed=seed,
                        max_tokens=max_tokens, source=path)
    if {'image', 'label'} <= set(arrays):
        return image_probe(arrays['image'], arrays['label'], seed=seed, ambiguous=ambiguous,
                           source=path, mix=mix)
    raise AuditError(f'--data={path} holds {sorted(arrays)}: expected image + label arrays, or '
                     'inputs + targets + mask token rows')


def outputs(loaded: Loaded, probe: Probe, batch: int = 256) -> np.ndarray:
    """The model's float32 logits per probe output ``[N, C]`` (lm: real tokens only)."""
    apply = jax.jit(lambda v, x: loaded.model.apply(v['params'], v['state'], x,
                                                    train=False)[0].astype(jnp.float32))
    if probe.task == 'lm':
        batch = max(1, batch // 8)
    chunks = []
    for start in range(0, len(probe.inputs), batch):
        x = probe.inputs[start:start + batch]
        chunks.append(np.asarray(apply(loaded.variables, x)))
    out = np.concatenate(chunks)
    if probe.task == 'lm':
        if out.ndim != 3:
            raise AuditError(f'{loaded.spec} returns logits of shape {out.shape[1:]} per input '
                             'row; a language model returns [length, vocab]')
        return out[probe.token_mask]
    if out.ndim != 2:
        raise AuditError(f'{loaded.spec} returns logits of shape {out.shape[1:]} per example; a '
                         'classifier returns [classes]')
    return out
