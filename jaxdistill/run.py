"""The distillation job, top to bottom: check -> teacher -> baseline -> student -> report.

`train_and_evaluate` first checks everything it can without writing (config, mesh,
modules, data, teacher checkpoint, workdir), so bad input fails before the workdir
is touched. Each stage resumes from its own checkpoints; a finished stage is skipped.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from jaxdistill import config as config_lib
from jaxdistill import export as export_lib
from jaxdistill import objective, report, signals, tasks, train
from jaxdistill import provenance as provenance_lib
from jaxdistill import teachers as teachers_lib
from jaxdistill.audit import protect
from jaxdistill.crosstok import data as crosstok
from jaxdistill.errors import ConfigError, closest
from jaxdistill.models import students
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.runtime import paths
from jaxdistill.teachers import ensemble as ensemble_lib
from jaxdistill.train import hidden_logits, telemetry


@dataclasses.dataclass
class Plan:
    """What the checks produced; nothing in the workdir exists yet."""

    config: ml_collections.ConfigDict
    workdir: str
    mesh: Any
    task: tasks.Task  # data, step inputs, evaluation, report columns
    teacher: Model  # the first teacher
    student: Model
    objective: objective.Objective
    sample: np.ndarray
    teacher_dir: str  # where the first teacher's checkpoints are (trained here or given)
    projections: dict[str, tuple[int, int]]  # learned projections of feature losses
    teachers: list[teachers_lib.Teacher]  # every teacher, the first one first
    token_loss: str = 'dense'  # distill.token_loss resolved (jaxdistill/train/hidden_logits.py)
    # what the students start from (student.checkpoint / from_teacher_layers), set once the
    # teacher is loaded; None: random from the seed
    init_params: Any = None


def check_workdir(workdir: str, config) -> str:
    """The workdir, resolved (a local path, ``file://`` or ``gs://``), once it is proven
    writable and holds no run of another config."""
    if not workdir:
        raise ConfigError('--workdir is empty: give a directory for checkpoints and reports')
    workdir = paths.check_writable(workdir)
    saved = paths.join(workdir, 'config.json')
    if paths.exists(saved):
        old = json.loads(paths.read_text(saved))
        new = config_lib.to_dict(config)
        diff = _first_difference(old, new)
        if diff:
            raise ConfigError(
                f'--workdir={workdir} holds a run with a different config ({diff}); '
                'use a new --workdir, or rerun with the same config to resume')
    return workdir


def _first_difference(old, new, prefix: str = '') -> str | None:
    # Resuming on another mesh is a resharded restore; exporting reads the run.
    harmless = {'train.log_every', 'train.eval_every', 'mode', 'export.format', 'mesh.data',
                'mesh.fsdp', 'mesh.tensor', 'train.profile_steps', 'train.compilation_cache',
                'train.wandb_project', 'train.peak_tflops', 'data.workers',
                'data.workers_kind'}
    if isinstance(old, dict) and isinstance(new, dict):
        for k in sorted(set(old) | set(new)):
            key = f'{prefix}{k}'
            if key in harmless:
                continue
            if k not in old or k not in new:
                return f'{key}: {old.get(k)!r} -> {new.get(k)!r}'
            d = _first_difference(old[k], new[k], key + '.')
            if d:
                return d
        return None
    return None if old == new else f'{prefix.rstrip(".")}: {old!r} -> {new!r}'


def plan(config: ml_collections.ConfigDict, workdir: str, devices=None) -> Plan:
    """Every check that needs no write to the workdir; raises one-line errors."""
    config_lib.validate(config)
    crosstok.check_config(config)  # teacher.tokenizer, and what a cross-tokenizer run holds
    mesh = mesh_lib.make_mesh(config.mesh, devices)
    mesh_lib.check_batch(mesh, config.data.batch_size)
    mesh_lib.check_batch(mesh, config.data.eval_batch_size, 'data.eval_batch_size')
    accum = config.train.grad_accum_steps
    shards = mesh_lib.batch_size_per_shard(mesh)
    if accum > 1 and (config.data.batch_size // accum) % shards:
        raise ConfigError(f'train.grad_accum_steps={accum}: micro-batches of data.batch_size / '
                          f'{accum} = {config.data.batch_size // accum} rows do not divide over '
                          f'the {shards} batch shards: use a batch of a multiple of '
                          f'{accum * shards}')
    workdir = check_workdir(workdir, config)
    teachers = teachers_lib.from_config(config, workdir)
    student = students.build(config, teachers)
    several = len(teachers) > 1 and config.distill.ensemble == 'terms'
    obj = objective.build(config.distill.losses, config.train.steps,
                          teacher_weights=ensemble_lib.normalise([t.weight for t in teachers])
                          if several else None)
    task = tasks.build(config)
    for t in teachers:
        task.check_models(t.model, student)
    if task.cross:  # the shared vocabulary of the cross-tokenizer terms
        obj = dataclasses.replace(obj, cross=task.cross_vocab)
    signals.check_models(config, teachers[0].model, student, obj)
    projections = _check_feature_taps(obj, student, teachers[0].model, task.sample)
    token_loss = hidden_logits.resolve(config, student, obj,
                                       getattr(student.module, 'vocab_size', None),
                                       dict(mesh.shape))
    return Plan(config, workdir, mesh, task, teachers[0].model, student, obj, task.sample,
                teachers[0].directory, projections, teachers, token_loss)


def _check_feature_taps(obj: objective.Objective, student: Model, teacher: Model,
                        sample: np.ndarray) -> dict[str, tuple[int, int]]:
    """Every layer named by a feature loss exists; returns the projections to learn."""
    if not obj.student_taps:
        return {}
    shapes = {'student': student.feature_shapes(sample), 'teacher': teacher.feature_shapes(sample)}
    for term in obj.terms:
        for side, name in zip(('student', 'teacher'), term.taps or ()):
            if name not in shapes[side]:
                raise ConfigError(
                    f'{term.key}.{side}={name!r}: the {side} has no such layer; '
                    f'{closest(name, shapes[side])} (--config.mode=list_features lists '
                    'every layer with its shape)')
    return obj.projections(shapes['student'], shapes['teacher'])


def list_features(p: Plan) -> None:
    """``--config.mode=list_features``: every tappable layer of both models, with shapes."""
    for side, model in (('teacher', p.teacher), ('student', p.student)):
        print(f'{side} ({p.config[side].module}): layer -> output shape for one example')
        for name, shape in sorted(model.feature_shapes(p.sample).items()):
            print(f'  {name:<40} {list(shape[1:])}')


def load_teacher(p: Plan, index: int = 0) -> dict[str, Any]:
    """A teacher's params and state, restored into the mesh's shardings."""
    return teachers_lib.load(p.teachers[index], p.mesh, p.sample)


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str,
                       devices=None, notes: Sequence[str] = ()) -> dict[str, Any]:
    """The whole job; ``devices`` (default: all) are the ones the mesh is built over.
    ``notes``: lines the main process prints once the config and workdir are checked (the
    CLI's host-memory line), so bad input prints only its one-line error."""
    p = plan(config, workdir, devices)
    if jax.process_index() == 0:
        for line in notes:
            print(line, flush=True)
    if config.mode == 'list_features':
        list_features(p)
        return {}
    if config.mode == 'export':
        return export_lib.export_student(p)
    is_main = jax.process_index() == 0
    telemetry.enable_compilation_cache(config.train.compilation_cache, p.workdir)
    if is_main:
        paths.makedirs(p.workdir)
        report.write_json(paths.join(p.workdir, 'config.json'), config_lib.to_dict(config))
        print(f'jaxdistill: {p.task.dataset} | teacher {config.teacher.module} -> student '
              f'{config.student.module} | {p.mesh.size} {jax.devices()[0].platform} '
              f'device(s), mesh {dict(p.mesh.shape)} | workdir {p.workdir}')
    for t in p.teachers:
        if not t.checkpoint:
            teachers_lib.train_teacher(t, p.task, config, p.mesh, p.sample, is_main)
    all_vars = [load_teacher(p, i) for i in range(len(p.teachers))]
    p.init_params = students.initial_params(config, p.student, all_vars[0]['params'], p.mesh,
                                            p.sample)
    teacher_model = teachers_lib.combined(p.teachers, config.distill.ensemble)
    # what the student learns from may be protected (distill.protection); `judge` is not
    teacher_model = protect.wrap(teacher_model, config, p.task, p.student)
    teacher_vars = teachers_lib.combined_vars(all_vars)
    judge = teachers_lib.combined(p.teachers, 'probs')  # students are scored against it
    say = print if is_main else (lambda *_: None)
    prepared = signals.prepare(config, p.workdir, p.task, teacher_model, teacher_vars,
                               provenance_lib.params_sha256(all_vars[0]['params']), p.student,
                               p.mesh, say)
    if config.mode == 'cache_teacher':
        return {'provenance': prepared.provenance}
    evaluator = p.task.evaluator(p.mesh, judge, teacher_vars, p.student)
    scores, histories, models = train_students(p, teacher_model, teacher_vars, evaluator,
                                               is_main, prepared)
    results = assemble_results(p, all_vars, evaluator, scores)
    results['provenance'].update(teacher_signal=config.distill.teacher_signal,
                                 **prepared.provenance)
    # what the student trained with (a signal may replace distill.losses)
    results['provenance']['losses'] = _signal(p).objective(p.objective).describe()
    samples = p.task.samples(
        {'teacher': (p.teacher, all_vars[0]), **{k: (p.student, v) for k, v in models.items()}},
        p.mesh)
    if samples is not None:
        results['samples'] = samples
    for t in p.teachers:
        history = results[t.name].pop('history', None)
        if history:
            histories = {t.name: history, **histories}
    if is_main:
        _write_outputs(p.workdir, results, histories)
    return results


def _signal(p: Plan) -> signals.Signal:
    return signals.get(p.config.distill.teacher_signal)


def train_students(p: Plan, teacher_model, teacher_vars, evaluator, is_main: bool,
                   prepared: signals.Prepared | None = None):
    """The label-only baseline (if asked for) and the distilled student; returns their
    scores, learning curves and final ``{'params', 'state'}``.

    The configured `signals.Signal` says what the student learns from (the teacher inside
    the step, batches that carry its cached top-k, or its completions), and ``prepared``
    (default: nothing) is what its `Signal.prepare` made: rows, batch hook, provenance.

    A task without labels (``embedding``) has no label-only baseline to train: its
    ``baseline`` is the student at initialisation, the distilled student's step 0.
    """
    config, seed = p.config, p.config.seed
    mixup = config.data.mixup
    signal, prepared = _signal(p), prepared or signals.Prepared()
    student_objective = signal.objective(p.objective)
    needs_teacher = student_objective.needs_teacher and signal.teacher_in_step
    identity = {'params_sha256': provenance_lib.params_sha256(teacher_vars['params']),
                'checkpoint': p.teacher_dir}  # recorded in, and checked on resume of, student/
    stages = []
    scores, histories, models = {}, {}, {}
    if config.train.baseline and not p.task.has_labels:
        scores['baseline'] = untrained_scores(p, evaluator)
    elif config.train.baseline:
        stages.append(train.Stage('baseline', paths.join(p.workdir, 'baseline'), p.student,
                                  objective.label_only(), config.train.steps, seed,
                                  p.task.train_batches(seed, 'labelled'), evaluate=evaluator,
                                  prepare=p.task.prepare_fn(mixup), token_loss=p.token_loss,
                                  init_params=p.init_params))
    # the student depends on the teacher: through its loss terms, or rows the signal made
    from_teacher = student_objective.needs_teacher or prepared.rows is not None
    stages.append(train.Stage('student', paths.join(p.workdir, 'student'), p.student,
                              student_objective, config.train.steps, seed,
                              p.task.train_batches(seed, 'transfer') if prepared.rows is None
                              else p.task.batches_from(prepared.rows, seed),
                              teacher=teacher_model if needs_teacher else None,
                              teacher_model=teacher_vars if needs_teacher else None,
                              teacher_shardings=jax.tree.map(lambda x: x.sharding,
                                                             teacher_vars),
                              evaluate=evaluator, projections=p.projections,
                              teacher_identity=identity if from_teacher else None,
                              prepare=signals.step_prepare(signal, p.task.prepare_fn(mixup)),
                              batch_hook=prepared.batch_hook, token_loss=p.token_loss,
                              init_params=p.init_params))
    for stage in stages:
        result = train.run_stage(stage, config, p.mesh, p.sample, is_main)
        scores[stage.name] = {
            **evaluator(result.model), 'params': train.count_params(result.model['params']),
            'steps': stage.steps, 'train_loss': result.meta['train_loss'],
            'steps_per_second': result.meta['steps_per_second'],
            'params_sha256': provenance_lib.params_sha256(result.model['params'])}
        histories[stage.name] = result.meta['history']
        models[stage.name] = result.model
    return scores, histories, models


def untrained_scores(p: Plan, evaluator) -> dict[str, Any]:
    """The student exactly as the distilled stage starts it (same seed, same init code)."""
    config = p.config
    optimizer = train.make_optimizer(config.optimizer, config.train.steps)
    state, _ = train.create_train_state(p.student, optimizer, jax.random.key(config.seed),
                                        p.sample, p.mesh, p.projections, p.init_params)
    return {**evaluator(state.model), 'params': train.count_params(state.params), 'steps': 0,
            'train_loss': None, 'steps_per_second': None,
            'params_sha256': provenance_lib.params_sha256(state.params)}


def assemble_results(p: Plan, all_vars, evaluator, scores) -> dict[str, Any]:
    """results.json: every public key (see the Quickstart issue) plus provenance.

    ``teacher`` is the first teacher; with several, ``teacher_<i>`` are the others and
    ``ensemble`` their probability mixture, which the students' agreement and KL refer to.
    """
    config = p.config
    entries = {}
    for t, variables in zip(p.teachers, all_vars):
        t_meta = teachers_lib.meta(t)
        own = (evaluator.teacher_scores() if len(p.teachers) == 1
               else p.task.scorer(t.model, p.mesh)(variables))
        entries[t.name] = {**own, 'params': train.count_params(variables['params']),
                           'params_sha256': provenance_lib.params_sha256(variables['params']),
                           'steps': t_meta.get('steps'),
                           'steps_per_second': t_meta.get('steps_per_second'),
                           'history': t_meta.get('history')}
    if len(p.teachers) > 1:
        entries['ensemble'] = {**evaluator.teacher_scores(),
                               'params': sum(entries[t.name]['params'] for t in p.teachers)}
    first = entries['teacher']
    provenance = {
        'teacher_params_sha256': first['params_sha256'],
        'teacher_checkpoint': p.teacher_dir,
        'teacher_module': config.teacher.module,
        'losses': p.objective.describe(),
        'seed': config.seed,
        'task': p.task.name,
        'token_loss': p.token_loss,
        **p.task.provenance(),
    }
    if len(p.teachers) > 1:
        provenance['ensemble'] = config.distill.ensemble
        provenance['teachers'] = [
            {'name': t.name, 'module': t.module, 'checkpoint': t.directory,
             'weight': w, 'params_sha256': entries[t.name]['params_sha256']}
            for t, w in zip(p.teachers, ensemble_lib.normalise([t.weight for t in p.teachers]))]
    return {**entries, **scores, 'provenance': provenance,
            'test_examples': evaluator.test_examples}


def _write_outputs(workdir: str, results: dict[str, Any], histories) -> None:
    png = 'learning_curves.png'
    if not report.plot_curves(histories, paths.join(workdir, png)):
        png = None  # no matplotlib: report.md without the figure
    report.write_json(paths.join(workdir, 'results.json'), results)
    text = report.markdown(results, png)
    report.write_atomic(paths.join(workdir, 'report.md'), text)
    table = [line for line in text.splitlines() if line.startswith('|')]
    print('\n'.join(table))
    print(f'wrote {workdir}/results.json, report.md' + (f', {png}' if png else ''))
