"""The trained student alone, for use outside training: params + module spec + provenance.

``--config.mode=export`` (the training command plus that flag) writes ``WORKDIR/export/``
(with ``--config.export.format=hf``: ``WORKDIR/export/hf/``, a Hugging Face model directory,
`jaxdistill.hf.export`):

    export.json  the module (built-in name or 'pkg.mod:Class') and its kwargs, the input
                 shape and dtype, the params' SHA-256, and provenance: the step, the
                 teacher's SHA-256 and checkpoint, the dataset, the losses, the config
    model/       an Orbax checkpoint of {'params', 'state'} (state: e.g. BatchNorm
                 statistics); nothing of the teacher or the optimizer

`load` rebuilds the module, restores the variables and checks their SHA-256 against
export.json, so an export that was copied around is known to be the student that was
evaluated (``student.params_sha256`` in results.json). With ``train.best_metric`` set,
the best step is exported instead of the last.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from jaxdistill import provenance, train
from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.hf import export as hf_export
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.runtime import paths
from jaxdistill.train import checkpoint as ckpt_lib

SPEC = 'export.json'
FORMAT = 'jaxdistill-export/1'


def export_student(p) -> dict[str, Any]:
    """Writes the finished student of the run planned in ``p`` (a `run.Plan`) to
    ``WORKDIR/export``; returns the spec written to export.json."""
    config = p.config
    hf_format = config.export.format == 'hf'
    if hf_format:  # refused before anything is read or written
        hf_export.check_exportable(p.student.module)
        if paths.is_remote(p.workdir):
            raise ConfigError(f"export.format='hf' writes a local directory; --workdir="
                              f'{p.workdir} is remote: copy the workdir, then export there')
    directory = paths.join(p.workdir, 'student')
    params, state = jax.eval_shape(p.student.init, jax.random.key(0), p.sample)
    abstract, _ = mesh_lib.sharded_abstract(p.mesh, {'params': params, 'state': state})
    step, model, meta = _finished_student(directory, abstract, config.train.best_metric,
                                          config.train.best_mode)
    module_name, kwargs = _module_spec(config, p.student.module)
    spec = {
        'format': FORMAT, 'module': module_name, 'kwargs': kwargs,
        'logits_key': config.student.logits_key,
        'input': {'shape': list(p.sample.shape[1:]), 'dtype': str(np.dtype(p.sample.dtype))},
        'params_sha256': provenance.params_sha256(model['params']),
        'params': train.count_params(model['params']),
        'provenance': {'checkpoint': f'{directory}/{step}', 'step': step,
                       'steps': meta.get('steps'), 'teacher': meta.get('teacher'),
                       'task': config.task, **p.task.provenance(),
                       'losses': p.objective.describe(), 'seed': config.seed,
                       'config': meta.get('config')},
    }
    out = paths.join(p.workdir, 'export')
    if hf_format:
        out = paths.join(out, 'hf')
        if jax.process_index() == 0:
            _write_hf(p, out, jax.device_get(model['params']), spec)
        return spec
    if jax.process_index() == 0:
        _write(out, jax.device_get(model), spec)
        print(f'exported the student (step {step}, params sha256 '
              f'{spec["params_sha256"][:12]}) to {out}; load it with '
              f'jaxdistill.export.load({out!r})')
    return spec


def _module_spec(config, module: Any) -> tuple[str, dict[str, Any]]:
    """How export.json names the module: as configured, or, for a student whose architecture
    came from a checkpoint ('hf', from_teacher_layers), its class with every field."""
    if config.student.module != 'hf' and not config.student.from_teacher_layers:
        return config.student.module, json.loads(config.student.kwargs.to_json_best_effort())
    name = hf_export.check_exportable(module).name
    fields = {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
              if f.name not in ('parent', 'name')}
    return name, json.loads(json.dumps(fields, default=lambda v: str(np.dtype(v))))


def _write_hf(p, out: str, params: Any, spec: dict[str, Any]) -> None:
    prov = spec['provenance']
    teacher = prov.get('teacher') or {}
    provenance = {'format': FORMAT, 'step': prov['step'], 'params_sha256': spec['params_sha256'],
                  'teacher_params_sha256': teacher.get('params_sha256'),
                  'teacher_checkpoint': teacher.get('checkpoint') or p.teacher_dir,
                  'teacher_module': p.config.teacher.module, 'task': prov['task'],
                  'dataset': prov.get('dataset'), 'tokenizer': prov.get('tokenizer'),
                  'losses': prov['losses'], 'seed': prov['seed'],
                  'from_teacher_layers': list(p.config.student.from_teacher_layers) or None}
    # the LM task's tokenizer, or the directory of an embedding task's tokenizer.json
    tokenizer = getattr(p.task, 'tokenizer', None)
    if not hasattr(tokenizer, 'bos_id'):
        tokenizer = getattr(p.task, 'tokenizer_dir', None)
    hf_export.save_pretrained(p.student.module, params, out, tokenizer=tokenizer,
                              provenance=provenance)
    print(f'exported the student (step {prov["step"]}) as a Hugging Face model to {out}; load '
          'it with transformers.AutoModelForCausalLM.from_pretrained or '
          'jaxdistill.hf.load_causal_lm')


def _finished_student(directory: str, abstract: dict[str, Any], best_metric: str,
                      best_mode: str) -> tuple[int, dict[str, Any], dict[str, Any]]:
    """``(step, model, meta)`` of the student to export: its last step, or its best one."""
    if not paths.Path(directory).is_dir():
        raise CheckpointError(f'no student to export in {directory}: train it first (the same '
                              'command without --config.mode=export)')
    ckpts = ckpt_lib.StageCheckpoints(directory, read_only=True, best_metric=best_metric,
                                      best_mode=best_mode)
    try:
        found = ckpts.restore_latest(abstract)
        if found is None or not found[1].meta.get('done'):
            at = 'no step' if found is None else f'step {found[0]}'
            raise CheckpointError(f'the student in {directory} is unfinished ({at}): finish it '
                                  'first with the same command without --config.mode=export')
        step, restored = found
        best = ckpts.best_step() if best_metric else None
        if best is not None and best != step:
            step, restored = best, ckpts.restore(best, abstract)
        return step, restored.model, {**found[1].meta, **restored.meta}
    finally:
        ckpts.close()


def _write(out: str, model: dict[str, Any], spec: dict[str, Any]) -> None:
    """Never half an export: locally written next to ``out`` and renamed; in a bucket
    (no directory rename) the old export is removed first and export.json written last,
    so `load` refuses an interrupted one."""
    target = paths.Path(out)
    remote = paths.is_remote(out)
    tmp = target if remote else target.parent / (target.name + '.tmp')
    if tmp.exists():  # a crashed export, or (in a bucket) the older one
        tmp.rmtree()
    with ocp.StandardCheckpointer() as ckptr:
        ckptr.save(tmp / 'model', model)
    paths.write_atomic(tmp / SPEC, json.dumps(spec, indent=2))
    if not remote:
        if target.exists():  # an older export of this workdir's student
            target.rmtree()
        tmp.rename(target)


class ExportedModel:
    """A loaded export: call it on a batch of inputs to get the student's logits."""

    def __init__(self, model: Model, variables: dict[str, Any], spec: dict[str, Any]):
        self.model, self.variables, self.spec = model, variables, spec
        self.provenance = spec['provenance']
        self._predict = jax.jit(
            lambda v, x: model.apply(v['params'], v['state'], x, train=False)[0])

    def __call__(self, inputs: Any) -> jax.Array:
        """Logits for ``inputs`` of shape ``[batch, *spec['input']['shape']]``."""
        inputs = jnp.asarray(inputs, self.spec['input']['dtype'])
        if tuple(inputs.shape[1:]) != tuple(self.spec['input']['shape']):
            raise ValueError(f'inputs have shape {list(inputs.shape)} but the student takes '
                             f'[batch, *{self.spec["input"]["shape"]}]')
        return self._predict(self.variables, inputs)


def load(path: str) -> ExportedModel:
    """Loads an export written by ``--config.mode=export`` (user modules must be importable)."""
    path = ckpt_lib.abspath(path)
    paths.check_backend(path, 'export.load')
    spec_file = paths.join(path, SPEC)
    if not paths.exists(spec_file):
        raise CheckpointError(f'{path} is not a jaxdistill export (no {SPEC}): write one with '
                              '--config.mode=export')
    spec = json.loads(paths.read_text(spec_file))
    module = modules.resolve(spec['module'], spec['kwargs'], key=f'{spec_file}: module')
    model = Model(module, spec['logits_key'], 'student')
    sample = jnp.zeros([1, *spec['input']['shape']], spec['input']['dtype'])
    params, state = jax.eval_shape(model.init, jax.random.key(0), sample)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    abstract = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=device),
                            {'params': params, 'state': state})
    variables, _ = ckpt_lib.load_model(paths.join(path, 'model'), abstract)
    digest = provenance.params_sha256(variables['params'])
    if digest != spec['params_sha256']:
        raise CheckpointError(f'{path}: the parameters have sha256 {digest[:12]} but {SPEC} '
                              f'says {spec["params_sha256"][:12]}: the export is damaged; '
                              'write it again with --config.mode=export')
    return ExportedModel(model, variables, spec)
