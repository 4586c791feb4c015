"""Checks that `transformers` loads jaxdistill's Hugging Face exports and computes its logits.

Two steps, in two environments (the test suite needs neither torch nor this script):

    # 1. with jaxdistill (writes the exports and jaxdistill's logits into DIR)
    PYTHONPATH=. python tools/check_hf_export.py write /tmp/hf_export
    # 2. with torch + transformers (loads each with AutoModelForCausalLM / AutoTokenizer,
    #    compares, and writes the reference the suite checks: tests/fixtures/hf/export/)
    python tools/check_hf_export.py check /tmp/hf_export

The exported models (`cases`): each family fixture of tests/fixtures/hf re-exported
(Llama, Mistral, Qwen2, Gemma layouts chosen from the module), a student cut from the Llama
fixture (layer 1 only), and a plain jaxdistill `Decoder` with the byte tokenizer (its
tokenizer.json is built, so AutoTokenizer must give jaxdistill's ids).
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parent.parent
FIXTURES = ROOT / 'tests' / 'fixtures' / 'hf'
REFERENCE = FIXTURES / 'export'
TEXT = 'def f(x):\n    return x + 1  # café'


def cases():
    """``name -> (module, params, tokenizer)`` of every export, deterministic."""
    import jax

    from jaxdistill import hf
    from jaxdistill.data.tokenizer import ByteTokenizer
    from jaxdistill.models import students
    from jaxdistill.models.decoder import Decoder

    out = {}
    for family in ('llama', 'mistral', 'qwen2', 'gemma'):
        out[family] = hf.load_causal_lm(FIXTURES / family)
    module, params, tok = out['llama']
    out['cut_llama'] = (students.cut_module(module, (1,), {}),
                        students.cut_params(params, (1,)), tok)
    plain = Decoder(vocab_size=259, num_layers=2, d_model=32, num_heads=4, num_kv_heads=2,
                    mlp_dim=64, max_len=64, tie_embeddings=False)
    params = plain.init(jax.random.key(7), np.zeros((1, 4), np.int32))['params']
    out['byte_decoder'] = (plain, jax.tree.map(np.asarray, jax.device_get(
        __import__('flax').linen.meta.unbox(params))), ByteTokenizer())
    return out


def input_ids(tokenizer) -> np.ndarray:
    ids = [tokenizer.bos_id, *tokenizer.encode(TEXT)][:12]
    return np.array([ids, ids[::-1]], np.int32)


def write(directory: pathlib.Path) -> None:
    import jax

    from jaxdistill.hf import export

    for name, (module, params, tok) in cases().items():
        out = export.save_pretrained(module, params, directory / name, tokenizer=tok,
                                     provenance={'case': name})
        ids = input_ids(tok)
        logits = np.asarray(jax.jit(lambda p, t, m=module: m.apply({'params': p}, t))(params, ids))
        np.savez(out / 'jaxdistill.npz', input_ids=ids, logits=logits,
                 text_ids=np.asarray(tok.encode(TEXT), np.int32))
        print('wrote', out)


def check(directory: pathlib.Path) -> None:
    import torch
    import transformers

    REFERENCE.mkdir(parents=True, exist_ok=True)
    report = {'transformers': transformers.__version__, 'torch': torch.__version__, 'cases': {}}
    for case in sorted(p for p in directory.iterdir() if p.is_dir()):
        ours = np.load(case / 'jaxdistill.npz')
        model = transformers.AutoModelForCausalLM.from_pretrained(case, dtype=torch.float32)
        with torch.no_grad():
            theirs = model(torch.from_numpy(ours['input_ids']).long()).logits.numpy()
        tok = transformers.AutoTokenizer.from_pretrained(case)
        text_ids = tok(TEXT, add_special_tokens=False)['input_ids']
        diff = float(np.abs(theirs - ours['logits']).max())
        same_ids = list(text_ids) == ours['text_ids'].tolist()
        # transformers 5 picks a tokenizer class by model_type (Qwen2Tokenizer re-splits with
        # Qwen's own pattern), so a copied tokenizer is compared with its source directory.
        source = FIXTURES / case.name
        if not same_ids and (source / 'tokenizer.json').is_file():
            same_ids = text_ids == transformers.AutoTokenizer.from_pretrained(source)(
                TEXT, add_special_tokens=False)['input_ids']
        report['cases'][case.name] = {'class': type(model).__name__, 'max_abs_diff': diff,
                                      'tokenizer_ids_equal': same_ids}
        print(case.name, report['cases'][case.name])
        config = json.loads((case / 'config.json').read_text())
        config.pop('jaxdistill')
        np.savez_compressed(REFERENCE / f'{case.name}.npz', input_ids=ours['input_ids'],
                            logits=theirs.astype(np.float32))
        (REFERENCE / f'{case.name}.config.json').write_text(json.dumps(config, indent=2) + '\n')
        assert diff <= 1e-4 and same_ids, case.name
    (REFERENCE / 'REPORT.json').write_text(json.dumps(report, indent=2) + '\n')


if __name__ == '__main__':
    step, where = sys.argv[1], pathlib.Path(sys.argv[2])
    {'write': write, 'check': check}[step](where)
