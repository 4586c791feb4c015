"""Every Orbax call of jaxdistill: one directory of step checkpoints per trained model.

A step checkpoint holds three items: ``model`` (params + mutable state such as
BatchNorm statistics: all a teacher or an export needs), ``train`` (step, optimizer
state, feature-loss projections) and ``meta`` (JSON: the learning curve so far, and
what a resume must prove it continues: RNG seed and key, data position and
fingerprint, resolved config, the teacher's identity). A student's checkpoint names
its teacher by SHA-256 and path; the teacher's weights are never copied into it.

Saves are asynchronous and atomic: Orbax writes ``STEP.orbax-checkpoint-tmp-*`` and
renames it after writing ``commit_success.txt``, and deletes old steps only after a
newer one has committed. Restores go straight into the target shardings of the
abstract tree, so a checkpoint moves between device layouts. A damaged newest step is
reported in one line and moved aside (never deleted) when an older one restores.
Paths may be local or ``gs://``: they go through etils.epath, as os.path would break
the URL.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from orbax.checkpoint import checkpoint_managers as policies

from jaxdistill import provenance
from jaxdistill.errors import CheckpointError
from jaxdistill.runtime import paths

COMMIT_MARKER = 'commit_success.txt'  # Orbax writes it last, on every filesystem
DAMAGED = '.damaged'  # suffix of a step set aside; Orbax no longer lists it
Report = Callable[[str], None]


def abspath(path: str) -> str:
    """An absolute local path (``file://`` unwrapped), or a bucket URL (``gs://...``)."""
    return paths.resolve(path)


def _one_line(error: BaseException) -> str:
    text = ' '.join(str(error).split())
    return f'{type(error).__name__}: {text[:200]}'


def _preservation(keep: int, best_metric: str, best_mode: str):
    """The last ``keep`` steps, plus the best by ``best_metric`` when it is set."""
    latest = policies.LatestN(n=keep)
    if not best_metric:
        return latest
    best = policies.BestN(get_metric_fn=lambda m: m[best_metric], reverse=best_mode == 'min',
                          n=1, keep_checkpoints_without_metrics=False)
    return policies.AnyPreservationPolicy([latest, best])


class StageCheckpoints:
    """The checkpoints of one trained model (``WORKDIR/teacher``, ``/baseline``, ...)."""

    def __init__(self, directory: str, keep: int = 2, *, read_only: bool = False,
                 best_metric: str = '', best_mode: str = 'max', report: Report = print):
        self.directory = abspath(directory)
        self.best_metric, self.best_mode = best_metric, best_mode
        self.read_only = read_only
        self._report = report
        # best_fn makes Orbax write each step's metrics (ranked again after a restart);
        # which steps are kept is the preservation policy's decision.
        options = ocp.CheckpointManagerOptions(
            create=not read_only, read_only=read_only, enable_async_checkpointing=True,
            best_fn=(lambda m: m[best_metric]) if best_metric else None, best_mode=best_mode,
            preservation_policy=None if read_only else _preservation(keep, best_metric,
                                                                     best_mode))
        handlers = {'model': ocp.StandardCheckpointHandler(),
                    'train': ocp.StandardCheckpointHandler(),
                    'meta': ocp.JsonCheckpointHandler()}
        self._manager = ocp.CheckpointManager(self.directory, options=options,
                                              item_handlers=handlers)

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def committed_steps(self) -> list[int]:
        """Steps with Orbax's commit marker, newest first."""
        return [s for s in sorted(self._manager.all_steps(), reverse=True)
                if (self._step_dir(s) / COMMIT_MARKER).exists()]

    def save(self, step: int, model: Any, train: Any, meta: dict[str, Any],
             metrics: dict[str, float] | None = None) -> None:
        """Starts an async save; ``metrics`` rank it for ``best_metric``."""
        self._manager.save(step, args=ocp.args.Composite(
            model=ocp.args.StandardSave(model), train=ocp.args.StandardSave(train),
            meta=ocp.args.JsonSave(meta)), metrics=metrics, force=True)

    def meta(self, step: int | None = None) -> dict[str, Any]:
        step = self.latest_step() if step is None else step
        return self._manager.restore(step, args=ocp.args.Composite(
            meta=ocp.args.JsonRestore())).meta

    def best_step(self) -> int | None:
        """The step with the best saved ``best_metric`` (None without one)."""
        return self._manager.best_step() if self.best_metric else None

    def restore(self, step: int, abstract_model: Any, abstract_train: Any | None = None):
        """Restores ``model`` (and ``train`` when its abstract tree is given)."""
        check_shapes(self._saved_shapes(step), abstract_model, self.directory)
        args = {'model': ocp.args.StandardRestore(abstract_model),
                'meta': ocp.args.JsonRestore()}
        if abstract_train is not None:
            args['train'] = ocp.args.StandardRestore(abstract_train)
        return self._manager.restore(step, args=ocp.args.Composite(**args))

    def restore_latest(self, abstract_model: Any, abstract_train: Any | None = None):
        """``(step, restored)`` of the newest step that restores, or None if there is none.

        Newer steps that fail to restore (truncated, uncommitted) are reported in one line
        each and, unless read-only, renamed ``STEP.damaged`` so the step can be written
        again. If no step restores, nothing is moved: the cause is then more likely a
        changed model or optimizer than damage, and the error says so.
        """
        self._report_unfinished()
        failed = []
        for step in sorted(self._manager.all_steps(), reverse=True):
            if not (self._step_dir(step) / COMMIT_MARKER).exists():
                failed.append((step, f'no {COMMIT_MARKER}: the save never committed'))
                continue
            try:
                restored = self.restore(step, abstract_model, abstract_train)
            except CheckpointError:
                raise  # the module does not fit the checkpoint: the config, not damage
            except Exception as e:  # noqa: BLE001 - any read failure of a damaged step
                failed.append((step, _one_line(e)))
            else:
                for bad, why in failed:
                    self._set_aside(bad, why, step)
                return step, restored
        if failed:
            step, why = failed[0]
            raise CheckpointError(
                f'no checkpoint in {self.directory} restores (newest, step {step}: {why}); if '
                'the model, optimizer or code changed since, use a new --workdir; if the files '
                'are damaged, move the directory away to start the stage over')
        return None

    def _step_dir(self, step: int) -> epath.Path:
        return epath.Path(self.directory) / str(step)

    def _report_unfinished(self) -> None:
        root = epath.Path(self.directory)
        tmp = sorted(p.name for p in root.iterdir() if '.orbax-checkpoint-tmp' in p.name) \
            if root.exists() else []
        if tmp:
            self._report(f'warning: {self.directory}: ignoring {len(tmp)} unfinished save(s) '
                         f'({", ".join(tmp)}) left by a killed run; a new save of the same '
                         'step replaces it')

    def _set_aside(self, step: int, why: str, used: int) -> None:
        where = self._step_dir(step)
        if self.read_only:
            self._report(f'warning: checkpoint {where} is damaged ({why}): using step {used}')
            return
        target = where.parent / f'{step}{DAMAGED}'
        n = 1
        while target.exists():
            target, n = where.parent / f'{step}{DAMAGED}-{n}', n + 1
        if jax.process_index() == 0:
            where.rename(target)
        if jax.process_count() > 1:
            from jax.experimental import multihost_utils
            multihost_utils.sync_global_devices(f'jaxdistill-set-aside-{step}')
        self._manager.reload()
        self._report(f'warning: checkpoint {where} is damaged ({why}): resuming from step '
                     f'{used}; the damaged files are kept in {target}')

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


# What a resume must prove: same RNG, same data at the same position, same teacher.

def rng_identity(seed: int) -> dict[str, Any]:
    """The RNG state of a stage. Step ``s`` draws from ``fold_in(key(seed), s)``, so the
    seed, the PRNG implementation and the key's data are the whole state; recording the
    implementation catches a changed default PRNG, which would alter every random draw."""
    key = jax.random.key(seed)
    return {'seed': int(seed), 'impl': str(jax.random.key_impl(key)),
            'key_data': np.asarray(jax.random.key_data(key)).tolist()}


def run_identity(seed: int, first_batch: dict[str, Any],
                 teacher: dict[str, Any] | None) -> dict[str, Any]:
    """The meta a stage's checkpoints carry and a resume compares (`check_resume`)."""
    return {'rng': rng_identity(seed), 'teacher': teacher,
            'data': {'seed': int(seed), 'position': 0, 'digest': '',
                     'processes': jax.process_count(),
                     'first_batch_sha256': provenance.batch_rows_sha256(first_batch)}}


def check_resume(saved: dict[str, Any], expected: dict[str, Any], step: int, where: str) -> None:
    """Raises a CheckpointError when a checkpoint belongs to another run than this one.

    Keys absent on either side (checkpoints written before they were recorded, stages
    without a teacher) are not compared.
    """
    fix = 'rerun with the config that wrote it, or use a new --workdir'
    if saved.get('rng') and saved['rng'] != expected['rng']:
        raise CheckpointError(f'checkpoint {where} was written with RNG {saved["rng"]} but '
                              f'this run has {expected["rng"]}: {fix}')
    data, now = saved.get('data') or {}, expected['data']
    if data.get('first_batch_sha256', now['first_batch_sha256']) != now['first_batch_sha256']:
        raise CheckpointError(f'checkpoint {where} was trained on other data (batch 0 differs: '
                              f'the dataset files or data.* changed since): restore them or '
                              f'use a new --workdir')
    if data.get('position', step) != step:
        raise CheckpointError(f'checkpoint {where} is at step {step} but its data position is '
                              f'{data["position"]}: it is inconsistent; move it away')
    old, new = saved.get('teacher') or {}, expected.get('teacher') or {}
    if old.get('params_sha256') and new.get('params_sha256') and (
            old['params_sha256'] != new['params_sha256']):
        raise CheckpointError(
            f'checkpoint {where} was distilled from teacher sha256 {old["params_sha256"][:12]} '
            f'({old.get("checkpoint")}) but the teacher now is {new["params_sha256"][:12]} '
            f'({new.get("checkpoint")}): point teacher.checkpoint at the original teacher, or '
            'use a new --workdir')


# Teachers: a jaxdistill run, one of its steps, or any Orbax checkpoint of the variables.

def _has_steps(path: epath.Path) -> bool:
    return path.is_dir() and any(p.name.isdigit() for p in path.iterdir())


def find_stage_dir(path: str) -> str:
    """`teacher.checkpoint` may name a jaxdistill workdir or a stage directory."""
    root = epath.Path(abspath(path))
    if not root.is_dir():
        raise CheckpointError(f'teacher.checkpoint={str(root)!r} does not exist: give a '
                              'jaxdistill workdir, its teacher/ directory, or leave it empty to '
                              'train one')
    for candidate in (root, root / 'teacher'):
        if _has_steps(candidate):
            return str(candidate)
    raise CheckpointError(f'teacher.checkpoint={str(root)!r} holds no jaxdistill checkpoint '
                          'steps (expected numbered step directories here or in teacher/)')


def find_teacher(path: str) -> str:
    """The directory to load `teacher.checkpoint` from: a jaxdistill workdir or stage
    directory (its newest good step), one step of it, or an Orbax checkpoint of the
    teacher's variables (``{'params': ..., 'batch_stats': ...}``, or the params alone)."""
    paths.check_backend(path, 'teacher.checkpoint', CheckpointError)
    root = epath.Path(abspath(path))
    if root.is_dir() and not _has_steps(root) and not _has_steps(root / 'teacher'):
        for tree in (root / 'model', root):
            if (tree / '_METADATA').exists():
                return str(root)
    return find_stage_dir(path)


def load_model(path: str, abstract: dict[str, Any],
               report: Report = print) -> tuple[dict[str, Any], dict[str, Any]]:
    """``({'params', 'state'}, source)`` of the model at ``path`` (from `find_teacher`),
    restored into the shardings of ``abstract``; ``source`` names the path and step."""
    root = epath.Path(path)
    if _has_steps(root):
        ckpts = StageCheckpoints(path, read_only=True, report=report)
        try:
            found = ckpts.restore_latest(abstract)
        finally:
            ckpts.close()
        if found is None:
            raise CheckpointError(f'teacher checkpoint {path} has no committed step: point '
                                  'teacher.checkpoint at a finished teacher run')
        return found[1].model, {'checkpoint': path, 'step': found[0],
                                'meta': found[1].meta}
    tree = root / 'model' if (root / 'model' / '_METADATA').exists() else root
    return _restore_tree(tree, abstract), {'checkpoint': path, 'step': None, 'meta': {}}


def _restore_tree(path: epath.Path, abstract: dict[str, Any]) -> dict[str, Any]:
    """Restores ``{'params', 'state'}``, flax ``{'params', **collections}`` or bare
    params, whichever layout the checkpoint has; other saved entries are not read."""
    with ocp.PyTreeCheckpointer() as ckptr:
        saved = ckptr.metadata(path).item_metadata.tree
    keys = set(saved) if isinstance(saved, dict) else set()
    if 'params' not in keys:
        if jax.tree.leaves(abstract['state']):
            raise CheckpointError(
                f'checkpoint {path} holds bare parameters but the module also has state '
                f'{sorted(abstract["state"])}: save {{"params": ..., **collections}} instead')
        target = abstract['params']
    elif 'state' in keys:
        target = abstract
    else:
        target = {'params': abstract['params'], **abstract['state']}
    check_shapes(saved, target, str(path))
    with ocp.PyTreeCheckpointer() as ckptr:
        restored = ckptr.restore(path, args=ocp.args.PyTreeRestore(
            target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
            partial_restore=True))
    if 'params' not in keys:
        return {'params': restored, 'state': {}}
    if 'state' in keys:
        return {'params': restored['params'], 'state': restored['state']}
    return {'params': restored['params'],
            'state': {k: restored[k] for k in abstract['state']}}


def read_meta(path: str) -> dict[str, Any]:
    """The meta of the newest readable step of a jaxdistill stage directory; ``{}`` for
    other checkpoints, which carry none."""
    if not _has_steps(epath.Path(path)):
        return {}
    ckpts = StageCheckpoints(path, read_only=True)
    try:
        for step in ckpts.committed_steps():
            try:
                return ckpts.meta(step)
            except Exception:  # noqa: BLE001 - damaged: `load_model` skips it too
                continue
        return {}
    finally:
        ckpts.close()
