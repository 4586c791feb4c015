"""Distil a 1.1B-parameter Llama-style language model into a 345M one on a TPU slice.

Teacher: TinyLlama-1.1B's shapes (Zhang et al. 2024, "TinyLlama: An Open-Source Small
Language Model", https://arxiv.org/abs/2401.02385): 22 layers, d_model 2048, 32 query heads
sharing 4 key/value heads (grouped-query attention), SwiGLU width 5632, untied output
projection, vocabulary 32,000. Student: GPT-2 medium's depth and width (Radford et al. 2019,
"Language Models are Unsupervised Multitask Learners", table 2: 345M, 24 layers, d_model
1024; 16 heads in the released hparams) in the same Llama-style block, with tied embeddings
as GPT-2 has. Both are the built-in ``decoder`` (RoPE, RMSNorm, SwiGLU) computing in
bfloat16 with float32 parameters, layers under ``nn.scan`` and rematerialised.

Parameter counts, from the shapes (``h * head_dim = d``, ``g = kv_heads * head_dim``):
one layer has ``2 d^2 + 2 d g`` attention weights (query, out; key, value), ``3 d m`` SwiGLU
weights (gate, up, down) and ``2 d`` norm scales; the model adds ``V d`` embedding (twice if
untied) and the final norm ``d``: ``P = L (2 d^2 + 2 d g + 3 d m + 2 d) + V d (1 or 2) + d``.

- teacher, L 22, d 2048, g 4 x 64 = 256, m 5632, untied: 22 x 44,044,288 + 131,072,000 +
  2,048 = **1,100,048,384**;
- student, L 24, d 1024, g 16 x 64 = 1024, m 2816, tied: 24 x 12,847,104 + 32,768,000 +
  1,024 = **341,099,520** (1.1 % under GPT-2 medium's nominal 345M).

The SwiGLU widths are Llama's rule, ``m = 256 * ceil(8 d / 3 / 256)``: 5632 for d 2048
(TinyLlama's value), 2816 for d 1024. `param_count` computes the formula;
tests/test_lm_large.py checks it against ``jax.eval_shape`` of both modules.

Sources of the other hyper-parameters:

- sequence length 2048, peak learning rate 4e-4, 2,000 warm-up steps, cosine decay: the
  TinyLlama model card's "Training Details"; AdamW with b1 0.9, b2 0.95, weight decay 0.1,
  gradient clipping 1.0: the TinyLlama paper (its decay ends at 4e-5; jaxdistill's cosine
  ends at 0, and one optimizer config serves every stage);
- objective: token-level ``kd`` at T = 1 plus next-token cross-entropy, weights 0.5 / 0.5
  (Hinton et al. 2015, https://arxiv.org/abs/1503.02531; the word-level KD baseline of
  MiniLLM, Gu et al. 2024, https://arxiv.org/abs/2306.08543, which distils into GPT-2
  students of 120M / 340M / 760M); ``configs/lm_text.py``'s on-policy preset shows GKD's
  variant (Agarwal et al. 2024, https://arxiv.org/abs/2306.13649);
- batch 128 rows x 2048 = 262,144 tokens per step (8 rows per chip on 16 chips, see the
  memory arithmetic below; TinyLlama's 2M-token batch is ``data.batch_size=1024`` on 128
  chips); steps: 20 tokens per parameter (Hoffmann et al. 2022, "Training Compute-Optimal
  Large Language Models", https://arxiv.org/abs/2203.15556): 22.0B tokens = 84,000 teacher
  steps, 6.8B tokens = 26,000 student steps.

**Data.** ``task='lm'`` reads one corpus, ``pytext`` (Python's own documentation, offline),
tokenized by a byte-level BPE trained on its train split. ``data.vocab_size=32000`` asks for
TinyLlama's vocabulary size, but on pytext the BPE runs out of merges at 8,581 ids (every word
of the corpus is then one token; CPython 3.11.7), so the models' 32,000 outputs include ids
that never occur (allowed: see jaxdistill/data/tokenizer.py). The train split is then 72,552
target tokens (36 rows of 2048), the test split 11,642: a step's 128 rows are 3.6 epochs,
and the step counts above presume a corpus of at least 22B tokens. On pytext this recipe is
therefore a systems run (sharding, memory, throughput, checkpoints on a slice), not a quality
result: the teacher memorises the corpus. No config key selects another corpus for
``task='lm'``; one needs a TFDS text builder like jaxdistill/data/text.py and its name in
``TEXT_DATASETS`` (jaxdistill/tasks/lm.py). The shapes are TinyLlama's, but a pretrained
TinyLlama (``teacher.checkpoint='hf:DIR'``) would not help here: its embeddings index
Llama's SentencePiece ids, not the local BPE's.

**Mesh.** ``mesh.data=1, mesh.fsdp=-1``: every chip is one FSDP shard, the batch split over
all of them. `RULES` (teacher and student alike) map the decoder's ``'embed'`` dimension to
``fsdp``, so every weight matrix, embedding and norm scale is split 16 ways on a v4-32
(2048 / 16 and 1024 / 16 divide); ``'layers'`` (the scan axis) stays whole, so a scan step
needs one layer's weights gathered at a time. A ``tensor`` axis (``--config.mesh.tensor=4``)
would also split ``heads``, ``mlp`` and ``vocab``; it is not needed at these sizes.

**Memory arithmetic** (per chip of a v4-32: 16 chips of 32 GiB; estimates, XLA's buffer
assignment decides). States: the teacher trained here holds parameters, gradients and two
AdamW moments in float32, 16 x 1.100B / 16 = 1.10 GB; in distillation it is frozen, 4 x
1.100B / 16 = 0.28 GB; the student trains with 16 x 0.341B / 16 = 0.34 GB. Activations per
row of 2048 tokens: scan + remat keep only each layer's bfloat16 input (teacher 22 x 2048 x
2048 x 2 B = 185 MB, student 24 x 2048 x 1024 x 2 B = 101 MB); the layer being recomputed in
the backward pass holds float32 attention scores ``heads x T x T`` (teacher 32 x 2048^2 x 4 B =
537 MB, student 268 MB) plus the bfloat16 probabilities and their cotangents, ~1.6 / 0.8 GB;
the logits are 2048 x 32,000 x 4 B = 262 MB per model, and kd + ce hold about six such arrays
(both log-softmaxes, probabilities, cotangents), ~1.6 GB. So ~3 GB per row in either stage,
8 rows per chip ~24 GB next to ~1 GB of states: it fits a 32 GiB v4 chip. On 16 GiB chips
(v5litepod-16) halve ``data.batch_size``; on v5p (95 GiB) it can triple.

**Compute** (6 FLOP per parameter per trained token, 2 per teacher-forward token; attention
and remat not counted) at 40 % of a v4 chip's 275 bf16 TFLOP/s, 1.8 PFLOP/s on a v4-32:
teacher 6 x 1.1B x 22B = 1.5e20 FLOP, ~23 h; student 6 x 0.34B x 6.8B plus teacher forwards
2 x 1.1B x 6.8B = 2.9e19 FLOP, ~5 h; the label-only baseline ~2 h
(``--config.train.baseline=False`` skips it).

Run on a v4-32 (``git commit`` first: the launcher installs ``git archive HEAD``)::

    launch/tpu_vm.sh --name lm-large --accelerator-type v4-32 --bucket BUCKET all -- \\
        --config=configs/lm_large.py --workdir=/home/$USER/BUCKET/lm_large

which starts, on every worker, ``python -m jaxdistill.main --config=configs/lm_large.py
--workdir=/home/$USER/BUCKET/lm_large``. Each worker prepares pytext and its BPE in its own
``~/tensorflow_datasets`` (seconds, deterministic). Give a trained teacher with
``--config.teacher.checkpoint=DIR`` (a jaxdistill workdir) to skip its 84,000 steps.

Presets: ``configs/lm_large.py:tiny``: the same module, scan, remat, bfloat16, GQA, untied /
tied heads, BPE, objective, optimizer, mesh and rules on 2-layer, 32-wide models with rows
of 32 tokens, 2 steps per stage: seconds on a CPU (tests/test_lm_large.py).
"""

import math

from jaxdistill.config import base_config, loss_entry

# Logical axis name -> mesh axis for the decoder's parameters (and activations): FSDP over
# d_model; 'tensor' (size 1 here) would take heads, SwiGLU width and vocabulary.
RULES = (
    ('batch', ('data', 'fsdp')),
    ('embed', 'fsdp'),
    ('heads', 'tensor'),
    ('mlp', 'tensor'),
    ('vocab', 'tensor'),
    ('kv', None),
    ('layers', None),
    ('length', None),
)
VOCAB = 32_000  # TinyLlama's (Llama's) vocabulary size
SEQ_LEN = 2048
TEACHER_PARAMS = 1_100_048_384
STUDENT_PARAMS = 341_099_520


def swiglu_width(d_model: int) -> int:
    """Llama's hidden width: 2/3 of 4 d_model, rounded up to a multiple of 256."""
    return 256 * math.ceil(8 * d_model / 3 / 256)


def decoder(vocab_size: int, num_layers: int, d_model: int, num_heads: int, num_kv_heads: int,
            mlp_dim: int, max_len: int, tie_embeddings: bool) -> dict:
    return dict(vocab_size=vocab_size, num_layers=num_layers, d_model=d_model,
                num_heads=num_heads, num_kv_heads=num_kv_heads, mlp_dim=mlp_dim,
                max_len=max_len, tie_embeddings=tie_embeddings, dtype='bfloat16',
                param_dtype='float32', scan_layers=True, remat=True, norm_eps=1e-5)


def param_count(kwargs) -> int:
    """``L (2 d^2 + 2 d g + 3 d m + 2 d) + V d (1 tied, 2 untied) + d`` (see the docstring)."""
    d, L, m, V = kwargs['d_model'], kwargs['num_layers'], kwargs['mlp_dim'], kwargs['vocab_size']
    g = kwargs['num_kv_heads'] * (d // kwargs['num_heads'])
    layer = 2 * d * d + 2 * d * g + 3 * d * m + 2 * d
    return L * layer + V * d * (1 if kwargs['tie_embeddings'] else 2) + d


def get_config(arg: str | None = None):
    c = base_config()
    c.task = 'lm'
    c.data.name = 'pytext'
    c.data.tokenizer = 'bpe'
    c.data.vocab_size = VOCAB  # pytext's BPE stops at 8,581 ids; the models keep 32,000
    c.data.seq_len = SEQ_LEN
    c.data.batch_size = 128  # 8 rows per chip on a v4-32
    c.data.eval_batch_size = 128
    c.teacher.module = 'decoder'
    c.teacher.kwargs = decoder(VOCAB, 22, 2048, 32, 4, swiglu_width(2048), SEQ_LEN,
                               tie_embeddings=False)
    c.teacher.steps = 84_000  # 22.0B tokens: 20 per parameter
    c.teacher.sharding_rules = RULES
    c.student.module = 'decoder'
    c.student.kwargs = decoder(VOCAB, 24, 1024, 16, 16, swiglu_width(1024), SEQ_LEN,
                               tie_embeddings=True)
    c.student.sharding_rules = RULES
    c.train.steps = 26_000  # 6.8B tokens: 20 per parameter
    c.train.log_every = 50
    c.train.eval_every = 2000
    c.train.checkpoint_every = 1000
    c.distill.losses = (loss_entry('kd', weight=0.5, temperature=1.0),
                        loss_entry('ce', weight=0.5))
    c.optimizer.name = 'adamw'
    c.optimizer.learning_rate = 4e-4
    c.optimizer.b1 = 0.9
    c.optimizer.b2 = 0.95
    c.optimizer.weight_decay = 0.1
    c.optimizer.warmup_steps = 2000
    c.optimizer.clip_norm = 1.0
    c.optimizer.schedule = 'cosine'
    c.mesh.data = 1
    c.mesh.fsdp = -1
    c.mesh.tensor = 1
    if arg == 'tiny':  # same structure (module, scan/remat/bf16, GQA, rules); CPU sizes
        c.data.vocab_size = 320
        c.data.seq_len = 32
        c.teacher.kwargs = decoder(320, 2, 32, 4, 2, 64, 32, tie_embeddings=False)
        c.student.kwargs = decoder(320, 2, 16, 2, 2, 32, 32, tie_embeddings=True)
        c.data.batch_size = 16
        c.data.eval_batch_size = 128  # 256 hangs XLA:CPU's collectives on 8 forced devices
        c.teacher.steps = 2
        c.train.steps = 2
        c.train.log_every = 1
        c.train.eval_every = 0
        c.train.checkpoint_every = 2
        c.optimizer.warmup_steps = 1
    elif arg:
        raise ValueError(f"unknown preset {arg!r} for configs/lm_large.py (known: 'tiny')")
    return c
