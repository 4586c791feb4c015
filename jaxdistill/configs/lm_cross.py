"""Distil a BPE-tokenized language model into a byte-level student (cross-tokenizer).

The teacher is ``configs/lm_text.py``'s 4-layer decoder trained on the BPE-512 tokenization of
``pytext``; the student is its 2-layer byte-level decoder (259 ids). Both read the same text,
aligned by byte offsets in the data pipeline (``jaxdistill/crosstok``); the teacher runs on its
own 64-token rows inside the student's step. Bits per byte compares them. First the teacher
(and the same-tokenizer KD student, the ceiling), then a cross-tokenizer student:

    python -m jaxdistill.main --config=configs/lm_text.py --workdir=/tmp/jd/bpe \
        --config.data.tokenizer=bpe --config.data.vocab_size=512 \
        --config.teacher.kwargs.vocab_size=512 --config.student.kwargs.vocab_size=512 \
        --config.teacher.steps=250 --config.train.steps=300 --config.train.baseline=False
    python -m jaxdistill.main --config=configs/lm_cross.py --workdir=/tmp/jd/x_byte \
        --config.teacher.checkpoint=/tmp/jd/bpe
    python -m jaxdistill.main --config=configs/lm_cross.py:aligned_kl --workdir=/tmp/jd/x_alm \
        --config.teacher.checkpoint=/tmp/jd/bpe --config.train.baseline=False

The objective keeps the next-token cross-entropy at weight 1 and adds the cross-tokenizer term
(the README's sweep, ``tools/crosstok_sweep.py``: a term that takes half of the label weight
loses more than it brings at 200 steps). Presets: ``byte_kl`` (default; weight 1: the
teacher projected onto the next byte), ``aligned_kl`` or ``uld`` (weight 0.25), each
optionally after ``smoke`` (``configs/lm_cross.py:smoke,uld``: tiny shapes, seconds; its
teacher must be a smoke BPE-512 teacher).
"""

from jaxdistill.config import loss_entry

LOSSES = {'byte_kl': 1.0, 'aligned_kl': 0.25, 'uld': 0.25}  # name: weight (ce: 1)


def get_config(arg: str | None = None):
    import importlib.util
    import os

    spec = importlib.util.spec_from_file_location(
        'lm_text', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'lm_text.py'))
    lm_text = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(lm_text)
    presets = [a for a in (arg or '').split(',') if a]
    loss = [a for a in presets if a in LOSSES]
    rest = [a for a in presets if a not in LOSSES]
    if len(loss) > 1 or rest not in ([], ['smoke']):
        raise ValueError(f'unknown preset {arg!r} for configs/lm_cross.py (known: smoke, and one '
                         f'of {", ".join(LOSSES)}, e.g. smoke,uld)')
    c = lm_text.get_config('smoke' if rest else None)
    c.teacher.tokenizer = 'bpe:512'
    c.teacher.kwargs.vocab_size = 512
    c.teacher.seq_len = c.data.seq_len // 2  # ~3.5 bytes per BPE token: room to spare
    name = loss[0] if loss else 'byte_kl'
    c.distill.losses = (loss_entry(name, weight=LOSSES[name]), loss_entry('ce', weight=1.0))
    if not rest:
        c.train.steps = 300
        c.train.eval_every = 0
        c.train.checkpoint_every = 300
    return c
