"""Distil a 4-layer byte-level language model into a 2-layer one on Python's own docs.

Runs here in minutes, offline: the text is ``pydoc_data.topics`` (shipped with every
CPython; TFDS builder `pytext`), tokenized as UTF-8 bytes and packed into rows of 128
next-token targets. The teacher (4 layers, d_model 128) is pretrained first by plain
language modelling in ``WORKDIR/teacher``; then a label-only baseline and a distilled
student (2 layers, d_model 64, ~5x fewer parameters) train for the same steps from the
same initialisation. The objective is token-level ``kd`` at T = 1 plus the next-token
cross-entropy (``alpha = 0.5``), averaged over real (unpadded) tokens.

    python -m jaxdistill.main --config=configs/lm_text.py --workdir=/tmp/jaxdistill/lm_text

Presets: ``configs/lm_text.py:smoke`` (seconds, for tests).
"""

from jaxdistill.config import base_config, loss_entry


def decoder(num_layers: int, d_model: int, num_heads: int, max_len: int) -> dict:
    return dict(vocab_size=259, num_layers=num_layers, d_model=d_model, num_heads=num_heads,
                mlp_dim=4 * d_model, max_len=max_len)


def get_config(arg: str | None = None):
    c = base_config()
    c.task = 'lm'
    c.data.name = 'pytext'
    c.data.tokenizer = 'byte'
    c.data.seq_len = 128
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.teacher.module = 'decoder'
    c.teacher.kwargs = decoder(4, 128, 4, c.data.seq_len)
    c.teacher.steps = 1500
    c.student.module = 'decoder'
    c.student.kwargs = decoder(2, 64, 2, c.data.seq_len)
    c.train.steps = 1000
    c.train.log_every = 50
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.distill.losses = (loss_entry('kd', weight=0.5, temperature=1.0),
                        loss_entry('ce', weight=0.5))
    c.optimizer.learning_rate = 3e-3
    c.optimizer.warmup_steps = 100
    c.optimizer.weight_decay = 0.01
    if arg == 'smoke':
        c.data.seq_len = 32
        c.teacher.kwargs = decoder(2, 32, 2, c.data.seq_len)
        c.student.kwargs = decoder(1, 16, 2, c.data.seq_len)
        c.teacher.steps = 20
        c.train.steps = 20
        c.train.log_every = 5
        c.train.eval_every = 10
        c.train.checkpoint_every = 10
        c.optimizer.warmup_steps = 2
        c.data.batch_size = 16
        c.data.eval_batch_size = 64
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for configs/lm_text.py (known: 'smoke')")
    return c
