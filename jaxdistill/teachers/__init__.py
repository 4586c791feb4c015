"""The teachers of a run: where each comes from, training it when needed, restoring it.

``teacher`` is the first teacher; ``teachers`` adds more (each a dict with the keys of
``teacher``). A teacher with a ``checkpoint`` is restored from it: a jaxdistill workdir
or stage directory (Orbax), or ``'hf:PATH'`` / ``'hf:minilm'``, Hugging Face safetensors
(`jaxdistill.hf.teacher`: checked against the module at config time, imported at load
time straight into the mesh's shardings; ``module='hf'`` builds the architecture from the
checkpoint's config.json). One without a checkpoint is
trained first on every label, in ``WORKDIR/teacher`` (the first) or
``WORKDIR/teacher_<i>`` (the others), with seed ``seed + 1 + i``. Several teachers reach
the student as one `jaxdistill.teachers.ensemble.Ensemble`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import ml_collections
from etils import epath

from jaxdistill import objective, train
from jaxdistill.errors import CheckpointError
from jaxdistill.hf import teacher as hf_teacher
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.runtime import paths
from jaxdistill.teachers.ensemble import Ensemble
from jaxdistill.train import checkpoint as ckpt_lib


@dataclasses.dataclass(frozen=True)
class Teacher:
    name: str  # 'teacher', 'teacher_1', ...: its stage and results.json entry
    key: str  # its config key, for error messages: 'teacher', 'teachers[0]'
    model: Model
    module: str
    checkpoint: str  # given by the config; '' when trained here
    directory: str  # its step checkpoints (given, or WORKDIR/<name>), or 'hf:' + weights path
    steps: int  # training steps when trained here
    weight: float
    seed: int


def _entries(config: ml_collections.ConfigDict) -> list[tuple[str, str, dict[str, Any]]]:
    first = config.teacher.to_dict()
    out = [('teacher', 'teacher', first)]
    for i, entry in enumerate(config.teachers):
        entry = entry.to_dict() if hasattr(entry, 'to_dict') else dict(entry)
        out.append((f'teacher_{i + 1}', f'teachers[{i}]', entry))
    return out


def from_config(config: ml_collections.ConfigDict, workdir: str) -> list[Teacher]:
    """Builds every teacher's module and finds its checkpoint (one-line errors)."""
    teachers = []
    for i, (name, key, e) in enumerate(_entries(config)):
        rules = e.get('sharding_rules', config.teacher.sharding_rules)
        checkpoint = e.get('checkpoint', '')
        if e['module'] == hf_teacher.MODULE:
            module = hf_teacher.module_from_checkpoint(checkpoint, e.get('kwargs', {}),
                                                       f'{key}.module')
        else:
            module = modules.resolve(e['module'], e.get('kwargs', {}), key=f'{key}.module')
        model = Model(module, e.get('logits_key', ''), name, mesh_lib.normalize_rules(rules))
        if hf_teacher.is_hf(checkpoint):
            path = hf_teacher.check(checkpoint, model.module, f'{key}.checkpoint')
            directory = hf_teacher.PREFIX + str(path)
        elif checkpoint:
            directory = _stage_dir(checkpoint, key)
        else:
            directory = paths.join(workdir, name)
        steps = e.get('steps', -1)  # as config.teacher_steps for `teacher`
        steps = config.train.steps if steps == -1 else steps
        teachers.append(Teacher(name, key, model, e['module'], checkpoint, directory, steps,
                                float(e.get('weight', 1.0)), config.seed + 1 + i))
    return teachers


EXPECTED = ('a jaxdistill workdir, its teacher/ stage directory, one numbered step directory '
            'of it, an Orbax checkpoint directory of the variables, or hf:DIR (Hugging Face '
            'safetensors)')


def _stage_dir(checkpoint: str, key: str) -> str:
    path = epath.Path(ckpt_lib.abspath(checkpoint))
    try:
        is_file = path.is_file()
    except ImportError:  # gs:// without gcsfs: find_teacher says so
        is_file = False
    if is_file:
        hint = (f'; for Hugging Face weights give hf:{path.parent}'
                if path.suffix in ('.safetensors', '.json', '.bin') else '')
        raise CheckpointError(f'{key}.checkpoint={checkpoint!r} is a file; expected a '
                              f'directory: {EXPECTED}{hint}')
    try:
        return ckpt_lib.find_teacher(checkpoint)
    except CheckpointError as e:
        raise CheckpointError(str(e).replace('teacher.checkpoint', f'{key}.checkpoint')) from None


def combined(teachers: list[Teacher], mode: str) -> Model | Ensemble:
    """The model the student learns from: the teacher itself, or the ensemble."""
    if len(teachers) == 1:
        return teachers[0].model
    return Ensemble(tuple(t.model for t in teachers), tuple(t.weight for t in teachers), mode)


def combined_vars(variables: list[dict[str, Any]]) -> dict[str, Any]:
    if len(variables) == 1:
        return variables[0]
    return {'params': tuple(v['params'] for v in variables),
            'state': tuple(v['state'] for v in variables)}


def train_teacher(t: Teacher, task, config, mesh, sample, is_main: bool) -> None:
    """Trains ``t`` on every label in its directory (resumes, or skips when done)."""
    stage = train.Stage(t.name, t.directory, t.model, objective.label_only(), t.steps, t.seed,
                        task.train_batches(t.seed), evaluate=task.scorer(t.model, mesh),
                        prepare=task.prepare_fn())
    train.run_stage(stage, config, mesh, sample, is_main)


def load(t: Teacher, mesh, sample) -> dict[str, Any]:
    """The teacher's params and state, restored into the mesh's shardings."""
    params, state = jax.eval_shape(functools.partial(t.model.init, boxed=True),
                                   jax.random.key(0), sample)
    abstract, shardings = mesh_lib.sharded_abstract(mesh, {'params': params, 'state': state},
                                                    t.model.sharding_rules)
    if hf_teacher.is_hf(t.directory):
        if jax.tree.leaves(state):
            raise CheckpointError(f'{t.key}.checkpoint={t.checkpoint!r}: {t.module} has '
                                  'mutable state (e.g. BatchNorm statistics) that a Hugging '
                                  'Face checkpoint does not hold')
        path = hf_teacher.resolve(t.directory)
        plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
        return {'params': hf_teacher.load_sharded(path, t.model.module, plain['params'],
                                                  shardings['params']), 'state': {}}
    return ckpt_lib.load_model(t.directory, abstract)[0]


def meta(t: Teacher) -> dict[str, Any]:
    """What its training recorded (steps, speed, learning curve); {} for foreign checkpoints."""
    if hf_teacher.is_hf(t.directory):
        return {}
    return ckpt_lib.read_meta(t.directory)
