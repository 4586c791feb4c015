"""Distil a Hugging Face causal LM into a half-depth student cut from it, on your own text.

The teacher is a Hugging Face directory (Llama, Mistral, Qwen2 or Gemma: ``config.json``,
``model.safetensors`` or shards, ``tokenizer.json``), its architecture read from its
``config.json`` (``module='hf'``). The text is ``data.files`` (``.jsonl`` at ``data.text_key``,
``.txt``, ``.parquet``; bundled ``pytext`` when unset), tokenized with the teacher's own
tokenizer and packed once into ArrayRecord rows. The student keeps every other teacher layer
(``student.from_teacher_layers``, DistilBERT / Minitron depth pruning), initialised from the
teacher's weights with its embeddings, final norm and head; the label-only baseline starts
from the same cut. The objective is token ``kd`` at T = 1 plus the next-token cross-entropy
(alpha = 0.5); at vocabularies >= 32k the logit terms are computed chunk by chunk from the
hidden states (``distill.token_loss='auto'``).

    python -m jaxdistill.main --config=configs/hf_lm.py:hf:/models/llama --workdir=/tmp/hf_lm \
        --config.data.files='~/corpus/*.jsonl'

then ship the student as a Hugging Face directory (``WORKDIR/export/hf``):

    python -m jaxdistill.main --config=configs/hf_lm.py:hf:/models/llama --workdir=/tmp/hf_lm \
        --config.data.files='~/corpus/*.jsonl' --config.mode=export --config.export.format=hf

Arguments after the colon, comma-separated: ``hf:DIR`` names the teacher (its
``num_hidden_layers`` decides the cut: layers 0, 2, 4, ...; without it set
``--config.teacher.checkpoint=hf:DIR --config.student.from_teacher_layers='(0, 2)'``), and
``smoke`` shrinks everything to seconds (tests). ``random`` starts the student from a random
initialisation of the same cut architecture instead (the comparison in the README).
"""

import json
import os

from jaxdistill.config import base_config, loss_entry

PRESETS = ('smoke', 'random')


def every_other_layer(directory: str) -> tuple[int, ...]:
    """``(0, 2, 4, ...)`` of the teacher's ``num_hidden_layers`` (at least one layer)."""
    with open(os.path.join(os.path.expanduser(directory), 'config.json')) as f:
        layers = int(json.load(f)['num_hidden_layers'])
    return tuple(range(0, layers, 2))


def random_student(directory: str, num_layers: int) -> dict:
    """``decoder`` kwargs of the teacher's architecture (from its config.json) with
    ``num_layers`` layers: the cut student's shape, to initialise at random."""
    import dataclasses
    import pathlib

    from jaxdistill.hf import decoder, files

    module = decoder.from_hf_config(files.read_config(pathlib.Path(directory).expanduser()))
    out = {}
    for field in dataclasses.fields(module):
        value = getattr(module, field.name)
        if field.name in ('parent', 'name') or value == field.default:
            continue
        if isinstance(value, (bool, int, float, str, tuple)):
            out[field.name] = value
    return {**out, 'num_layers': num_layers}


def get_config(arg: str | None = None):
    parts = [a for a in (arg or '').split(',') if a]
    teacher = [a for a in parts if a.startswith('hf:')]
    presets = [a for a in parts if not a.startswith('hf:')]
    unknown = [a for a in presets if a not in PRESETS]
    if unknown or len(teacher) > 1:
        raise ValueError(f'unknown argument {arg!r} for configs/hf_lm.py: give hf:DIR and any '
                         f'of {", ".join(PRESETS)}, e.g. hf:/models/llama,smoke')
    c = base_config()
    c.task = 'lm'
    c.data.name = 'pytext'  # when data.files is not given
    c.data.tokenizer = 'teacher'
    c.data.seq_len = 256
    c.data.batch_size = 32
    c.data.eval_batch_size = 32
    c.teacher.module = 'hf'
    c.student.module = 'hf'
    c.student.from_teacher_layers = (0, 2)
    if teacher:
        c.teacher.checkpoint = teacher[0]
        c.student.from_teacher_layers = every_other_layer(teacher[0][len('hf:'):])
    c.distill.losses = (loss_entry('kd', weight=0.5, temperature=1.0),
                        loss_entry('ce', weight=0.5))
    c.train.steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    # a cut student starts near a trained model: a smaller step than from scratch
    c.optimizer.learning_rate = 5e-4
    c.optimizer.warmup_steps = 50
    c.optimizer.weight_decay = 0.01
    if 'random' in presets:
        if not teacher:
            raise ValueError("configs/hf_lm.py: 'random' reads the teacher's architecture: give "
                             'hf:DIR too, e.g. hf:/models/llama,random')
        layers = len(c.student.from_teacher_layers)
        c.student.from_teacher_layers = ()
        c.student.module = 'decoder'
        c.student.kwargs = random_student(teacher[0][len('hf:'):], layers)
    if 'smoke' in presets:
        c.data.seq_len = 32
        c.data.batch_size = 8
        c.data.eval_batch_size = 16
        c.train.steps = 6
        c.train.log_every = 2
        c.train.eval_every = 0
        c.train.checkpoint_every = 3
        c.optimizer.warmup_steps = 1
    return c
