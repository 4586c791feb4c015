"""Every Orbax call of jaxdistill: one directory of step checkpoints per trained model.

A step checkpoint holds three items: ``model`` (params + mutable state such as
BatchNorm statistics: all a teacher needs), ``train`` (step + optimizer state) and
``meta`` (JSON: stage, provenance, the learning curve so far). Restores go straight
into the target shardings given by the abstract tree.
"""

from __future__ import annotations

import os
from typing import Any

import jax
import orbax.checkpoint as ocp

from jaxdistill.errors import CheckpointError


class StageCheckpoints:
    """The checkpoints of one trained model (``WORKDIR/teacher``, ``/baseline``, ...)."""

    def __init__(self, directory: str, keep: int = 2, *, read_only: bool = False):
        self.directory = os.path.abspath(directory)
        options = ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=not read_only, read_only=read_only,
            enable_async_checkpointing=True)
        handlers = {'model': ocp.StandardCheckpointHandler(),
                    'train': ocp.StandardCheckpointHandler(),
                    'meta': ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def save(self, step: int, model: Any, train: Any, meta: dict[str, Any]) -> None:
        self._manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta)), force=True)

    def meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        return self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def restore(self, step: int, abstract_model: Any, abstract_train: Any | None = None):
        """Restores ``model`` (and ``train`` when its abstract tree is given)."""
        check_shapes(self._saved_shapes(step), abstract_model, self.directory)
        args = {'model': ocp.args.StandardRestore(abstract_model),
                'meta': ocp.args.JsonRestore()}
        if abstract_train is not None:
            args['train'] = ocp.args.StandardRestore(abstract_train)
        return self._manager.restore(step, args=ocp.args.Composite(**args))

    def _saved_shapes(self, step: int) -> Any:
        metadata = self._manager.item_metadata(step)
        return metadata['model'] if 'model' in metadata else metadata.model

    def wait(self) -> None:
        self._manager.wait_until_finished()

    def close(self) -> None:
        self._manager.close()


def _path_str(path) -> str:
    return '/'.join(str(getattr(k, 'key', getattr(k, 'idx', k))) for k in path)


def check_shapes(saved: Any, expected: Any, where: str) -> None:
    """Raises a CheckpointError naming the first parameter whose shape or dtype differs."""
    saved_flat = {_path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(saved)[0]}
    for path, leaf in jax.tree_util.tree_flatten_with_path(expected)[0]:
        name = _path_str(path)
        if name not in saved_flat:
            raise CheckpointError(
                f'checkpoint {where} has no parameter {name!r} that the module expects '
                f'(it has e.g. {sorted(saved_flat)[:3]}): is teacher.module/kwargs the '
                'architecture that wrote it?')
        got = saved_flat[name]
        if tuple(got.shape) != tuple(leaf.shape) or (
                getattr(got, 'dtype', None) is not None and got.dtype != leaf.dtype):
            raise CheckpointError(
                f'checkpoint {where}: parameter {name!r} is {got.dtype}{list(got.shape)} there '
                f'but the module expects {leaf.dtype}{list(leaf.shape)}: fix teacher.kwargs '
                'to match the checkpoint')


def find_stage_dir(path: str) -> str:
    """`teacher.checkpoint` may name a jaxdistill workdir or a stage directory."""
    path = os.path.abspath(os.path.expanduser(path))
    if not os.path.isdir(path):
        raise CheckpointError(f'teacher.checkpoint={path!r} does not exist: give a jaxdistill '
                              'workdir, its teacher/ directory, or leave it empty to train one')
    for candidate in (path, os.path.join(path, 'teacher')):
        if os.path.isdir(candidate) and any(
                name.isdigit() for name in os.listdir(candidate)):
            return candidate
    raise CheckpointError(f'teacher.checkpoint={path!r} holds no jaxdistill checkpoint steps '
                          '(expected numbered step directories here or in teacher/)')
