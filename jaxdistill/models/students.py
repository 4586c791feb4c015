"""Where the student comes from: its module, and the parameters it starts from.

By default the student is ``student.module`` with ``student.kwargs``, initialised at random
from the seed. Two other starts (both for the label-only baseline too, so the comparison
isolates what distillation adds):

- ``student.checkpoint='hf:DIR'``: Hugging Face weights (``module='hf'``: with the
  architecture of DIR's config.json; a named module is checked tensor by tensor);
- ``student.from_teacher_layers=(i, j, ...)``: the teacher's architecture with only those
  layers, every parameter copied from the teacher (embeddings, final norm, output head, and
  layer ``i`` as the student's layer 0 ...), as DistilBERT (every other layer) and Minitron
  (depth pruning) start their students.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np

from jaxdistill.errors import ConfigError
from jaxdistill.hf import teacher as hf_teacher
from jaxdistill.hf.decoder import OVERRIDES
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.models.bert import BertEncoder
from jaxdistill.models.decoder import Decoder
from jaxdistill.runtime import mesh as mesh_lib

# The field holding the depth of each module that can be cut.
DEPTH = {Decoder: 'num_layers', BertEncoder: 'layers'}


def _depth_field(module: Any) -> str:
    for cls in type(module).__mro__:
        if cls in DEPTH:
            return DEPTH[cls]
    names = sorted(c.__name__ for c in DEPTH)
    raise ConfigError(f'student.from_teacher_layers cuts layers of the {names} modules, not a '
                      f'{type(module).__name__} teacher')


def cut_module(teacher: Any, layers: Sequence[int], overrides: Mapping[str, Any]) -> Any:
    """The teacher's module with ``len(layers)`` layers; indices checked against its depth."""
    field = _depth_field(teacher)
    depth = getattr(teacher, field)
    layers = tuple(layers)
    if list(layers) != sorted(set(layers)):
        raise ConfigError(f'student.from_teacher_layers={layers!r} must be sorted and without '
                          f'repeats, e.g. {tuple(sorted(set(layers)))!r}')
    bad = [i for i in layers if not 0 <= i < depth]
    if bad:
        raise ConfigError(f'student.from_teacher_layers={layers!r}: layer {bad[0]} is out of '
                          f'range; the teacher has {depth} layers (0..{depth - 1})')
    for name in overrides:
        if name not in OVERRIDES:
            raise ConfigError(f'student.kwargs.{name}: a student cut from the teacher has the '
                              f"teacher's architecture; only {list(OVERRIDES)} may be set")
    return teacher.clone(**{field: len(layers), **dict(overrides)}, parent=None)


def cut_params(params: Mapping[str, Any], layers: Sequence[int]) -> dict[str, Any]:
    """The teacher's parameters with only ``layers`` (``layer_i`` renumbered from 0, or rows
    of a scanned ``layers`` stack); everything outside the layers is kept as it is."""
    out: dict[str, Any] = {}
    index = np.asarray(layers)
    for key, value in params.items():
        if key.startswith('layer_') and key[6:].isdigit():
            continue
        if key == 'layers':  # a scanned stack: [depth, ...] per leaf
            out[key] = jax.tree.map(lambda x: x[index], value)
        else:
            out[key] = value
    for k, i in enumerate(layers):
        if f'layer_{i}' in params:
            out[f'layer_{k}'] = params[f'layer_{i}']
    return out


def build(config, teachers: list[Any]) -> Model:
    """The student `Model` of ``config`` (teachers built first: a cut student needs one)."""
    s = config.student
    rules = mesh_lib.normalize_rules(s.sharding_rules)
    kwargs = dict(s.kwargs)
    if s.from_teacher_layers:
        module = cut_module(teachers[0].model.module, s.from_teacher_layers, kwargs)
    elif s.module == hf_teacher.MODULE:
        module = hf_teacher.module_from_checkpoint(s.checkpoint, kwargs, 'student.module')
    else:
        module = modules.resolve(s.module, kwargs, key='student.module')
    if s.checkpoint:
        hf_teacher.check(s.checkpoint, module, 'student.checkpoint')
    return Model(module, s.logits_key, 'student', rules)


def initial_params(config, student: Model, teacher_params: Any, mesh, sample) -> Any:
    """The parameters the student (and the baseline) start from; None: random from the seed.

    Placed in the student's shardings, so the train state initialises around them.
    """
    s = config.student
    if not (s.from_teacher_layers or s.checkpoint):
        return None
    params, _ = jax.eval_shape(functools.partial(student.init, boxed=True), jax.random.key(0),
                               sample)
    abstract, shardings = mesh_lib.sharded_abstract(mesh, params, student.sharding_rules)
    plain = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), abstract)
    if s.checkpoint:
        path = hf_teacher.resolve(s.checkpoint, 'student.checkpoint')
        return hf_teacher.load_sharded(path, student.module, plain, shardings)
    cut = cut_params(teacher_params, s.from_teacher_layers)
    if jax.tree.structure(cut) != jax.tree.structure(plain):
        raise ConfigError('student.from_teacher_layers: the cut teacher parameters do not '
                          "match the student's (a module whose layers are not layer_i / layers)")
    return jax.tree.map(lambda x, a, sh: jax.device_put(x.astype(a.dtype), sh), cut, plain,
                        shardings)
