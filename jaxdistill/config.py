"""The config schema: every key jaxdistill reads, its default, and its validation.

Configs in ``configs/*.py`` start from `base_config()` and change what differs, so a
typo in a config file or on the command line is caught here (with the closest known
key) before anything is compiled or written. The keys named in the README and the
issues are a public interface: extend them, never rename or drop one.
"""

from __future__ import annotations

import importlib.util
import json
from collections.abc import Mapping
from typing import Any

import ml_collections

from jaxdistill import signals, tasks
from jaxdistill.data.loader import worker_kind
from jaxdistill.errors import ConfigError, closest
from jaxdistill.runtime.mesh import DEFAULT_RULES, check_rules
from jaxdistill.teachers.ensemble import MODES as ENSEMBLE_MODES

# Sub-trees whose keys belong to the user (module constructor arguments).
FREE_FORM = ('teacher.kwargs', 'student.kwargs')
MODES = ('train', 'list_features', 'export', 'cache_teacher')
EXPORT_FORMATS = ('jaxdistill', 'hf')
OPTIMIZERS = ('adamw', 'adam', 'sgd')
SCHEDULES = ('cosine', 'constant', 'linear')
AUGMENTS = ('', 'crop', 'flip_crop', 'inception_crop')


def loss_entry(name: str, weight: Any = 1.0, **hyper: Any) -> ml_collections.ConfigDict:
    """One entry of ``distill.losses``: ``{name, weight, ...hyper}``."""
    return ml_collections.ConfigDict(dict(name=name, weight=weight, **hyper))


def base_config() -> ml_collections.ConfigDict:
    """Every key with its default. Configs copy this and change what differs."""
    c = ml_collections.ConfigDict()
    c.seed = 0
    c.mode = 'train'  # 'train', or 'list_features': print every tappable layer and exit
    # ('export': write the finished student alone to WORKDIR/export, see jaxdistill/export.py;
    # 'cache_teacher': write the teacher's top-k per train token for
    # distill.teacher_signal='cached', then exit; see jaxdistill/signals)
    # what is distilled: 'classification', 'lm' or 'embedding' (jaxdistill/tasks)
    c.task = 'classification'
    c.export = ml_collections.ConfigDict()
    # mode='export' writes 'jaxdistill' (WORKDIR/export: export.json + Orbax), or 'hf': a
    # Hugging Face model directory WORKDIR/export/hf (config.json, model.safetensors,
    # tokenizer files, generation_config.json, README.md) for decoder/hf/bert students
    c.export.format = 'jaxdistill'

    c.teacher = ml_collections.ConfigDict()
    c.teacher.module = 'cnn'  # built-in name or 'pkg.mod:Class'
    c.teacher.kwargs = ml_collections.ConfigDict()
    # empty: train the teacher first in WORKDIR/teacher; a jaxdistill workdir (or its
    # teacher/); or 'hf:DIR' / 'hf:minilm': Hugging Face safetensors for the 'bert' or
    # 'decoder' module, or for module='hf', which builds the architecture from the checkpoint's
    # config.json (llama, mistral, qwen2, gemma, bert; kwargs may only set dtype, param_dtype,
    # scan_layers, remat, max_len) (jaxdistill/hf/)
    c.teacher.checkpoint = ''
    c.teacher.steps = -1  # steps when the teacher is trained here; -1: train.steps
    c.teacher.logits_key = ''  # for modules returning dicts: which entry holds logits
    # (logical axis name, mesh axis or None) pairs, first match wins; '*' covers parameters
    # without names. E.g. a teacher FSDP over every device (mesh.fsdp=-1) next to a
    # data-parallel student (student.sharding_rules=()). See docs/scaling.md.
    c.teacher.sharding_rules = DEFAULT_RULES

    # task='lm': the teacher's tokenizer when it is not the student's (data.tokenizer):
    # '' (an hf: teacher's own tokenizer.json, else data.tokenizer), 'byte', 'bpe'
    # (data.vocab_size merges), 'bpe:N', or 'hf:DIR'. Differing tokenizers switch on
    # distill.cross_tokenizer (jaxdistill/crosstok).
    c.teacher.tokenizer = ''
    c.teacher.seq_len = 0  # the teacher's row length across tokenizers; 0: data.seq_len
    c.teacher.weight = 1.0  # its weight when several teachers are combined (see `teachers`)
    # More teachers, each a dict with the keys of `teacher` (module, kwargs, checkpoint, steps,
    # logits_key, weight); one without a checkpoint is trained in WORKDIR/teacher_<i>.
    c.teachers = ()

    c.student = ml_collections.ConfigDict()
    c.student.module = 'mlp'
    c.student.kwargs = ml_collections.ConfigDict()
    c.student.logits_key = ''
    c.student.sharding_rules = DEFAULT_RULES  # as teacher.sharding_rules; () replicates
    # 'hf:DIR': the student starts from these Hugging Face weights (module 'hf': with their
    # config.json's architecture; 'decoder'/'bert': checked against the kwargs)
    c.student.checkpoint = ''
    # (i, j, ...): the student is the teacher's architecture with only these layers (sorted,
    # 0-based), initialised from the teacher's weights (embeddings, final norm and head too),
    # as DistilBERT / Minitron depth pruning; student.module 'hf' or the teacher's, no kwargs.
    # The baseline starts from the same initialisation.
    c.student.from_teacher_layers = ()

    c.data = ml_collections.ConfigDict()
    c.data.name = 'digits'  # a TFDS name (prepared as ArrayRecord) or 'digits'
    c.data.data_dir = ''  # empty: the TFDS default (~/tensorflow_datasets)
    c.data.source = ''  # 'pkg.mod:fn' returning (train, test) random-access sources
    c.data.train_split = 'train'
    c.data.test_split = 'test'
    c.data.image_key = 'image'
    c.data.label_key = 'label'
    c.data.batch_size = 128  # global, over all processes and devices
    c.data.eval_batch_size = 256
    # '', 'crop' (random shift by up to H/8 px), 'flip_crop' (+ horizontal flip, CIFAR),
    # 'inception_crop' (random-resized crop to data.image_size + flip, ImageNet)
    c.data.augment = ''
    c.data.image_size = 0  # >0: resize (eval: shorter side to size*8/7, centre crop)
    # Beta(a, a) mixup on device for the baseline and student stages (a teacher trained here
    # trains without it); the teacher scores the same mixed images the student sees.
    c.data.mixup = 0.0
    # threads making training batches ahead of the step (0: one per CPU core, up to 8); image-
    # by-image augmentation (inception_crop, image_size) runs as a Grain per-example pipeline
    c.data.workers = 0
    # 'threads' (one process) or 'processes' (Grain's mp_prefetch: spawned workers, each with
    # a pickled copy of the pipeline; for image-by-image augmentation of large images where
    # the GIL limits threads). The same batches either way. Spawning re-imports the script
    # that started training: a Python script must guard its entry point with
    # `if __name__ == '__main__':` (the CLI does).
    c.data.workers_kind = 'threads'
    c.data.cache_mb = 1024.0  # decode a split once into memory when smaller than this
    # The fraction of the train split whose labels the students (baseline and distilled)
    # may use, drawn per seed. The baseline trains on those examples alone; the distilled
    # student sees every train image, label losses reading only the labelled rows (the
    # rest is an unlabelled transfer set the teacher scores). A teacher trained here
    # uses every label: it stands for a model trained on more data than you have.
    c.data.labelled_fraction = 1.0
    # task='lm': text is tokenized ('byte': UTF-8 bytes, 259 ids; 'bpe': a byte-level BPE of
    # data.vocab_size ids trained offline on the train split) and packed into rows of
    # data.seq_len next-token targets; or, for task='lm' and 'embedding', 'teacher'
    # (tokenizer.json beside an hf: teacher checkpoint) or 'hf:DIR' (its BOS/EOS/pad ids from
    # tokenizer_config.json / config.json). task='embedding': sentences are padded to
    # data.seq_len tokens, and longer ones truncated with a warning.
    c.data.tokenizer = 'byte'
    c.data.vocab_size = 0
    c.data.seq_len = 128
    # Your own text (task='lm' or 'embedding', jaxdistill/data/corpus.py): one glob or a list of
    # globs of .jsonl (the text at data.text_key), .txt (a file is a document) or .parquet
    # (the data.text_key column) files. Set, it replaces data.name; a TFDS dataset named by
    # data.name (other than pytext / pysentences) is read the same way, at data.text_key.
    c.data.files = ml_collections.FieldReference((), field_type=object)
    c.data.text_key = 'text'
    # Test documents: these files, or else the documents whose SHA-256 falls in the first
    # data.test_fraction of the hash range (a pure function of the text).
    c.data.test_files = ml_collections.FieldReference((), field_type=object)
    c.data.test_fraction = 0.01
    # task='lm' on data.files or a TFDS text dataset: tokenized and packed once into
    # ArrayRecord rows in this directory (empty: jaxdistill_packed/ beside the data), with a
    # fingerprint that refuses a stale or foreign cache (jaxdistill/data/packed.py).
    c.data.cache_dir = ''

    c.train = ml_collections.ConfigDict()
    c.train.steps = 1000  # student (and baseline) steps
    c.train.log_every = 50
    c.train.eval_every = 0  # 0: evaluate at the end of each stage only
    c.train.checkpoint_every = 500
    c.train.keep_checkpoints = 2  # the last N steps of each stage are kept
    # Also keep the best step by this evaluation metric ('' = off), e.g. 'eval/accuracy';
    # a checkpoint is then also written at every evaluation (train.eval_every).
    c.train.best_metric = ''
    c.train.best_mode = 'max'  # 'max' or 'min' (e.g. for 'eval/kl_to_teacher')
    # A non-finite loss stops training, naming the step and the last good checkpoint;
    # True: skip such steps instead (no update) and count them (train/nonfinite_skips).
    c.train.skip_nonfinite = False
    # Split each batch of data.batch_size rows into N micro-batches whose gradients are summed
    # before one update: the same update as the whole batch at once (token losses are
    # normalised by the whole batch's valid tokens), in 1/N of the activation memory.
    c.train.grad_accum_steps = 1
    # also train the same student on labels alone; task='embedding' has no labels: the
    # baseline is then the student at initialisation (untrained), scored the same way
    c.train.baseline = True
    # (start, stop): trace steps [start, stop) of each stage long enough with jax.profiler into
    # WORKDIR/profile/STAGE (TensorBoard's profile plugin, Perfetto); () = off
    c.train.profile_steps = ()
    # JAX's persistent compilation cache: 'auto' = WORKDIR/compilation_cache (a resumed run
    # loads its compiled steps instead of compiling again), 'off', or a directory. A
    # JAX_COMPILATION_CACHE_DIR set in the environment wins.
    c.train.compilation_cache = 'auto'
    # Weights & Biases project to log every stage's scalars and the config to ('' = off;
    # pip install "jaxdistill[wandb]"); TensorBoard and metrics.jsonl are always written
    c.train.wandb_project = ''
    # Peak TFLOP/s of one device for train/mfu; 0: known TPUs and GPUs
    # (jaxdistill/train/telemetry.py)
    c.train.peak_tflops = 0.0

    c.distill = ml_collections.ConfigDict()
    # Several teachers: 'probs' distils from the weighted mean of their probabilities,
    # 'terms' applies every teacher-based loss once per teacher, weighted (jaxdistill/ensemble).
    c.distill.ensemble = 'probs'
    # alpha * kd(T) + (1 - alpha) * CE, alpha weighting the distillation term.
    c.distill.losses = (
        loss_entry('kd', weight=0.9, temperature=4.0),
        loss_entry('ce', weight=0.1),
    )
    # Where the student's teacher signal comes from (jaxdistill/signals; all but 'online' need
    # task='lm'): 'online' runs the teacher inside every step; 'cached' reads the teacher's
    # top-k log-probabilities per train token, written once to distill.cache.path (by
    # --config.mode=cache_teacher, or on first use), and never runs the teacher while training;
    # 'sequence' trains the student by cross-entropy on completions the teacher generated for
    # prompts (black-box: text only, as from an API); 'on_policy' (GKD) replaces a batch, with
    # probability distill.on_policy.lmbda, by the student's own completions of its prompts,
    # which the teacher then scores inside the step.
    c.distill.teacher_signal = 'online'
    # Teacher and student with different tokenizers (task='lm'): both tokenize the same text,
    # aligned by byte offsets in the data pipeline; losses 'uld' and 'aligned_kl' (docs/losses.md).
    # Switched on by itself, with a note, when teacher.tokenizer differs from data.tokenizer or
    # a loss needs it.
    c.distill.cross_tokenizer = False
    # How token-level logit terms are computed (jaxdistill/train/hidden_logits.py): 'dense' (the
    # models' [B, T, V] logits), 'chunked' (from the decoders' final hidden states and heads,
    # distill.chunk_size tokens at a time: no [B, T, V] array), 'vocab_sharded' (logits split
    # over mesh.tensor), or 'auto': chunked for decoder students with vocabularies >= 32k.
    c.distill.token_loss = 'auto'
    c.distill.chunk_size = 1024
    # Each signal's own section (distill.cache for 'cached', distill.sampling for 'sequence'
    # and 'on_policy', distill.on_policy), documented and defaulted in its jaxdistill/signals
    # file.
    for section, defaults in signals.defaults().items():
        c.distill[section] = defaults
    # An output protection on everything the student learns from (online teacher, cache):
    # name '' (none), 'topk' (k), 'round' (decimals), 'temperature' (spread), 'antidistill'
    # (lam, proxy_seed). Students are still scored against the unprotected teacher.
    # jaxdistill/audit/protect.py; measured in docs/audit.md.
    c.distill.protection = ml_collections.ConfigDict(dict(
        name='', k=1, decimals=1, spread=1.0, lam=2.0, proxy_seed=0))

    c.optimizer = ml_collections.ConfigDict()
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 1e-3
    c.optimizer.schedule = 'cosine'
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 1e-4
    c.optimizer.clip_norm = 1.0  # 0: no clipping
    c.optimizer.momentum = 0.9  # sgd only
    c.optimizer.nesterov = False  # sgd only
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.999

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # -1: all devices not used by the other axes
    c.mesh.fsdp = 1
    c.mesh.tensor = 1
    return c


def _flatten(d: Mapping[str, Any], prefix: str = '') -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f'{prefix}{k}'
        if key in FREE_FORM:
            out[key] = v
        elif isinstance(v, (Mapping, ml_collections.ConfigDict)):
            out.update(_flatten(v, key + '.'))
        else:
            out[key] = v
    return out


def flat_keys(config: ml_collections.ConfigDict) -> list[str]:
    """Every dotted key of ``config`` (free-form sub-trees count as one key)."""
    return list(_flatten(config))


def _type_ok(value: Any, default: Any) -> bool:
    if isinstance(default, bool):
        return isinstance(value, bool)
    if isinstance(default, int):
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(default, float):
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if isinstance(default, str):
        return isinstance(value, str)
    if isinstance(default, tuple):
        return isinstance(value, (tuple, list))
    return True


def validate(config: ml_collections.ConfigDict) -> None:
    """Checks keys and types against `base_config()`; raises a one-line ConfigError."""
    schema = _flatten(base_config())
    given = _flatten(config)
    for key, value in given.items():
        if key in GLOB_KEYS and key in schema:
            _check_globs(key, value)
            continue
        if key not in schema:
            raise ConfigError(
                f'unknown config key {key!r}: {closest(key, schema)} '
                f'(every key is listed in jaxdistill/config.py)')
        if not _type_ok(value, schema[key]):
            raise ConfigError(
                f'config key {key!r} must be {type(schema[key]).__name__}, got '
                f'{value!r} ({type(value).__name__}): fix it in the config or with '
                f'--config.{key}=...')
    _check_choice(config, 'mode', MODES)
    _check_choice(config, 'export.format', EXPORT_FORMATS)
    _check_student_source(config)
    _check_choice(config, 'task', tasks.names())
    _check_choice(config, 'distill.ensemble', ENSEMBLE_MODES)
    signals.check_config(config)
    _check_protection(config)
    _check_teachers(config)
    _check_choice(config, 'optimizer.name', OPTIMIZERS)
    _check_choice(config, 'optimizer.schedule', SCHEDULES)
    _check_choice(config, 'data.augment', AUGMENTS)
    if config.data.augment == 'inception_crop' and config.data.image_size <= 0:
        raise ConfigError("data.augment='inception_crop' needs data.image_size > 0 (e.g. 224)")
    _positive(config, 'train.steps', config.train.steps)
    _positive(config, 'data.batch_size', config.data.batch_size)
    _positive(config, 'data.eval_batch_size', config.data.eval_batch_size)
    _positive(config, 'optimizer.learning_rate', config.optimizer.learning_rate)
    _positive(config, 'train.log_every', config.train.log_every)
    _positive(config, 'train.checkpoint_every', config.train.checkpoint_every)
    _positive(config, 'train.keep_checkpoints', config.train.keep_checkpoints)
    _check_best(config)
    _check_telemetry(config)
    if config.data.workers < 0:
        raise ConfigError(f'data.workers={config.data.workers} must be >= 0 (0: one per CPU '
                          'core, up to 8)')
    worker_kind(config.data)
    _check_accum(config)
    if config.optimizer.warmup_steps < 0 or config.optimizer.warmup_steps >= config.train.steps:
        raise ConfigError(
            f'optimizer.warmup_steps={config.optimizer.warmup_steps} must be in '
            f'[0, train.steps={config.train.steps}): lower it')
    if config.teacher.steps == 0 or config.teacher.steps < -1:
        raise ConfigError(
            f'teacher.steps={config.teacher.steps} must be positive, or -1 for train.steps')
    if config.data.cache_mb < 0:
        raise ConfigError(f'data.cache_mb={config.data.cache_mb} must be >= 0 (0 disables it)')
    if not 0 < config.data.labelled_fraction <= 1:
        raise ConfigError(f'data.labelled_fraction={config.data.labelled_fraction} must be in '
                          '(0, 1]: 1 uses every label')
    if config.data.mixup < 0:
        raise ConfigError(f'data.mixup={config.data.mixup} must be >= 0 (0 disables it)')
    for side in ('teacher', 'student'):
        check_rules(config[side].sharding_rules, f'{side}.sharding_rules')
    for axis in ('data', 'fsdp', 'tensor'):
        size = config.mesh[axis]
        if size == 0 or size < -1:
            raise ConfigError(f'mesh.{axis}={size} must be positive or -1 (the rest)')
    if not isinstance(config.distill.losses, (tuple, list)) or not config.distill.losses:
        raise ConfigError(
            'distill.losses must be a non-empty list of {name, weight, ...} entries, '
            "e.g. --config.distill.losses=\"({'name': 'kd', 'weight': 1.0},)\"")


def _check_telemetry(config) -> None:
    from jaxdistill.train import telemetry

    telemetry.check_profile_steps(config.train.profile_steps, config.train.steps)
    if config.train.wandb_project and importlib.util.find_spec('wandb') is None:
        raise ConfigError(f'train.wandb_project={config.train.wandb_project!r} needs wandb, '
                          'which is not installed: pip install "jaxdistill[wandb]" (or set '
                          "train.wandb_project='')")
    if config.train.peak_tflops < 0:
        raise ConfigError(f'train.peak_tflops={config.train.peak_tflops} must be >= 0 '
                          '(0: from the device kind)')


GLOB_KEYS = ('data.files', 'data.test_files')


def _check_globs(key: str, value: Any) -> None:
    ok = isinstance(value, str) or (isinstance(value, (tuple, list))
                                    and all(isinstance(v, str) and v for v in value))
    if not ok:
        raise ConfigError(f'{key}={value!r} must be a glob or a list of globs, e.g. '
                          "'~/corpus/*.jsonl' or ('a/*.jsonl', 'b/*.txt')")


def _check_accum(config) -> None:
    n = config.train.grad_accum_steps
    if n < 1:
        raise ConfigError(f'train.grad_accum_steps={n} must be >= 1 (1: no accumulation)')
    if config.data.batch_size % n:
        raise ConfigError(f'train.grad_accum_steps={n} does not divide data.batch_size='
                          f'{config.data.batch_size}: use a divisor of the batch, or a batch '
                          f'of a multiple of {n}')


def _check_student_source(config) -> None:
    """student.checkpoint / from_teacher_layers: what can be told without the teacher (the
    layer indices' range is checked against it in `jaxdistill.models.cut`)."""
    s = config.student
    layers = s.from_teacher_layers
    if s.checkpoint and not s.checkpoint.startswith('hf:'):
        raise ConfigError(f"student.checkpoint={s.checkpoint!r} must be 'hf:DIR' (Hugging Face "
                          "weights to start from) or ''")
    if s.module == 'hf' and not (s.checkpoint or layers):
        raise ConfigError("student.module='hf' takes its architecture from a checkpoint: set "
                          "student.checkpoint='hf:DIR' or student.from_teacher_layers=(i, j, ...)")
    if not layers:
        return
    if s.checkpoint:
        raise ConfigError('student.checkpoint and student.from_teacher_layers both say where the '
                          'student starts: set only one')
    if not all(isinstance(i, int) and not isinstance(i, bool) for i in layers):
        raise ConfigError(f'student.from_teacher_layers={tuple(layers)!r} must be layer indices '
                          '(ints), e.g. (0, 2, 5)')
    if list(layers) != sorted(set(layers)):
        raise ConfigError(f'student.from_teacher_layers={tuple(layers)!r} must be sorted and '
                          f'without repeats, e.g. {tuple(sorted(set(layers)))!r}')
    if s.module not in ('hf', config.teacher.module):
        raise ConfigError(f'student.from_teacher_layers cuts the teacher: set '
                          f"student.module='hf' (or {config.teacher.module!r}), not {s.module!r}")


def _check_best(config) -> None:
    _check_choice(config, 'train.best_mode', ('max', 'min'))
    metric = config.train.best_metric
    if metric and not metric.startswith('eval/'):
        raise ConfigError(f'train.best_metric={metric!r} must name an evaluation metric, e.g. '
                          "'eval/accuracy', 'eval/agreement' or 'eval/kl_to_teacher' ('' = off)")
    if metric and config.train.eval_every <= 0:
        raise ConfigError(f'train.best_metric={metric!r} needs evaluations during training: set '
                          'train.eval_every > 0 (or train.best_metric=\'\')')


TEACHER_KEYS = ('module', 'kwargs', 'checkpoint', 'steps', 'logits_key', 'weight',
                'sharding_rules')


def _check_protection(config) -> None:
    from jaxdistill.audit import protect
    protect.check(config.distill.protection)


def _check_teachers(config) -> None:
    if config.teacher.weight <= 0:
        raise ConfigError(f'teacher.weight={config.teacher.weight} must be positive')
    if not isinstance(config.teachers, (tuple, list)):
        raise ConfigError('teachers must be a list of dicts with the keys of `teacher`, e.g. '
                          "({'module': 'cnn', 'checkpoint': '/path/to/run'},)")
    for i, entry in enumerate(config.teachers):
        entry = entry.to_dict() if hasattr(entry, 'to_dict') else entry
        where = f'teachers[{i}]'
        if not isinstance(entry, dict) or not isinstance(entry.get('module'), str):
            raise ConfigError(f"{where} must be a dict with at least 'module', e.g. "
                              "{'module': 'cnn', 'kwargs': {...}, 'checkpoint': 'DIR'}")
        for key in entry:
            if key not in TEACHER_KEYS:
                raise ConfigError(f'{where}.{key} is not a teacher key: '
                                  f'{closest(key, TEACHER_KEYS)}')
        if entry.get('weight', 1.0) <= 0:
            raise ConfigError(f"{where}.weight={entry['weight']} must be positive")


def _check_choice(config, key: str, choices) -> None:
    value = config
    for part in key.split('.'):
        value = value[part]
    if value not in choices:
        raise ConfigError(f'{key}={value!r} is not one of {list(choices)}: '
                          f'{closest(str(value), choices)}')


def _positive(config, key: str, value) -> None:
    del config
    if value <= 0:
        raise ConfigError(f'{key}={value} must be positive')


def teacher_steps(config: ml_collections.ConfigDict) -> int:
    return config.train.steps if config.teacher.steps == -1 else config.teacher.steps


def to_dict(config: ml_collections.ConfigDict) -> dict[str, Any]:
    """A JSON-ready plain copy (tuples become lists)."""
    return json.loads(config.to_json_best_effort())
