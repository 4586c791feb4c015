"""Writes tests/fixtures/hf/: tiny random causal LMs saved by `transformers` itself, with
reference logits computed by `transformers` (float32, CPU).

Not part of the test suite, which never needs torch: run it in an environment with torch +
transformers when the importers or the fixtures change, then commit the output:

    /path/to/venv-with-transformers/bin/python tools/make_hf_fixtures.py

One directory per case, each ``save_pretrained`` (safetensors) + a byte-level BPE
``tokenizer.json`` trained here with ``tokenizers`` (on Python's own pydoc text) saved through
``PreTrainedTokenizerFast`` (so ``tokenizer_config.json`` is transformers'), and
``reference.npz`` with ``input_ids`` [2, 12] and ``logits`` [2, 12, vocab] float32:

- ``llama``: untied head, GQA (4 heads, 2 kv), llama3 rope scaling (all three bands), f32,
  **sharded** (``model.safetensors.index.json`` + 3 shards);
- ``mistral``: sliding window 5 < the 12 tokens compared, f32;
- ``qwen2``: q/k/v biases, tied head, stored as **bf16** (logits in f32 from the bf16 values);
- ``gemma``: explicit head_dim 12 (d_model 32 / 4 heads would be 8), tied head, GeGLU.
"""

from __future__ import annotations

import json
import pathlib
import shutil
import sys

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

OUT = pathlib.Path(__file__).resolve().parent.parent / 'tests' / 'fixtures' / 'hf'
VOCAB = 160  # tokenizer ids; the models have 192 (a model may be larger than its tokenizer)
MODEL_VOCAB = 192
SPECIALS = ['<pad>', '<s>', '</s>']
SMALL = dict(vocab_size=MODEL_VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64,
             rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)
CASES = {
    'llama': (transformers.LlamaConfig, dict(
        tie_word_embeddings=False,
        max_position_embeddings=128,
        rope_parameters={'rope_type': 'llama3', 'rope_theta': 10000.0, 'factor': 4.0,
                         'low_freq_factor': 1.0, 'high_freq_factor': 4.0,
                         'original_max_position_embeddings': 64}), torch.float32, '40KB'),
    'mistral': (transformers.MistralConfig, dict(tie_word_embeddings=False, sliding_window=5,
                                                 rope_parameters={'rope_type': 'default',
                                                                  'rope_theta': 500.0}),
                torch.float32, None),
    'qwen2': (transformers.Qwen2Config, dict(tie_word_embeddings=True), torch.bfloat16, None),
    'gemma': (transformers.GemmaConfig, dict(head_dim=12, tie_word_embeddings=True,
                                             hidden_activation='gelu_pytorch_tanh'),
              torch.float32, None),
}


def train_tokenizer() -> Tokenizer:
    from pydoc_data.topics import topics

    texts = [topics[k] for k in sorted(topics)][:40]
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    # No 256-byte initial alphabet (it would not fit in 160 ids): the characters of the text.
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return tok


def input_ids(tok: Tokenizer) -> np.ndarray:
    texts = ['for item in items: print(item)', 'The with statement wraps a block']
    rows = [[1] + tok.encode(t, add_special_tokens=False).ids for t in texts]
    return np.array([r[:12] + [5] * (12 - len(r)) for r in rows], np.int64)


def write_case(name: str, tok: Tokenizer) -> dict:
    config_cls, extra, dtype, shard = CASES[name]
    torch.manual_seed({'llama': 1, 'mistral': 2, 'qwen2': 3, 'gemma': 4}[name])
    config = config_cls(**{**SMALL, **extra})
    config._attn_implementation = 'eager'
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():  # random norms and biases, so a missing (1 + w) or bias shows
        for p in model.parameters():
            if p.ndim == 1:
                p.normal_(0.0, 0.5)
            else:
                p.normal_(0.0, 0.3)
    model = model.to(dtype)
    out = OUT / name
    shutil.rmtree(out, ignore_errors=True)
    kwargs = {'max_shard_size': shard} if shard else {}
    model.save_pretrained(out, safe_serialization=True, **kwargs)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token='<s>',
                                                eos_token='</s>', pad_token='<pad>')
    fast.save_pretrained(out)
    ids = input_ids(tok)
    # From the files, as a user gets it: the in-memory model's buffers (rotary inv_freq)
    # were rounded to bf16 by .to(dtype), which the files do not hold.
    model = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.from_numpy(ids)).logits.numpy().astype(np.float32)
    np.savez_compressed(out / 'reference.npz', input_ids=ids.astype(np.int32), logits=logits)
    files = sorted(p.name for p in out.iterdir())
    return {'files': files, 'dtype': str(dtype), 'logits_abs_max': float(np.abs(logits).max())}


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    tok = train_tokenizer()
    summary = {'transformers': transformers.__version__, 'torch': torch.__version__,
               'python': sys.version.split()[0], 'cases': {}}
    for name in CASES:
        summary['cases'][name] = write_case(name, tok)
        print(name, summary['cases'][name])
    (OUT / 'MANIFEST.json').write_text(json.dumps(summary, indent=2) + '\n')
    size = sum(p.stat().st_size for p in OUT.rglob('*') if p.is_file())
    print(f'wrote {OUT} ({size / 1024:.0f} KiB)')


if __name__ == '__main__':
    main()
