"""A student written back as a Hugging Face model directory (``export.format='hf'``).

`save_pretrained` writes what ``transformers.AutoModelForCausalLM.from_pretrained`` (decoder
students: Llama, Mistral, Qwen2 or Gemma layout, whichever expresses the module) or
``AutoModel`` (BERT students) reads:

    config.json              the family's config, plus a ``jaxdistill`` key with provenance
    model.safetensors        float32 tensors under Hugging Face names
    tokenizer.json           the run's tokenizer: copied from an hf: tokenizer, or built for
    tokenizer_config.json    jaxdistill's byte / BPE tokenizers (same ids, same text)
    generation_config.json   BOS / EOS / pad ids (decoders)
    README.md                a model card: what was distilled from what, and how

Everything is written beside the target and renamed into place, so a failed export never
leaves half a directory; an unsupported module is refused before anything is written.
"""

from __future__ import annotations

import json
import pathlib
import shutil
from collections.abc import Mapping
from typing import Any

import numpy as np

from jaxdistill.hf import convert, files
from jaxdistill.models.decoder import Decoder

TOKENIZER_FILES = (files.TOKENIZER_FILE, files.TOKENIZER_CONFIG_FILE, 'special_tokens_map.json')


def byte_tokenizer_json() -> str:
    """`ByteTokenizer` as a ``tokenizers`` JSON: byte ``b`` is id ``b + 3`` after the three
    specials, through the byte-level alphabet (no merges), so ids and text are unchanged."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from jaxdistill.data.tokenizer import SPECIAL_TOKENS

    alphabet = _bytes_to_unicode()
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({alphabet[b]: b + len(SPECIAL_TOKENS) for b in range(256)})
    tok = Tokenizer(models.BPE(vocab, []))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok.to_str()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (the ByteLevel pre-tokenizer's)."""
    keep = [*range(ord('!'), ord('~') + 1), *range(ord('¡'), ord('¬') + 1),
            *range(ord('®'), ord('ÿ') + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


def _tokenizer_files(tokenizer: Any, out: pathlib.Path) -> dict[str, int]:
    """Writes the tokenizer files; returns its special ids (none for a bare directory)."""
    if isinstance(tokenizer, pathlib.Path):  # a directory holding tokenizer.json
        for name in TOKENIZER_FILES:
            if (tokenizer / name).is_file():
                shutil.copyfile(tokenizer / name, out / name)
        return {}
    ids = {'bos_token_id': tokenizer.bos_id, 'eos_token_id': tokenizer.eos_id,
           'pad_token_id': tokenizer.pad_id}
    source = getattr(tokenizer, 'directory', None)
    if source is not None:  # a Hugging Face tokenizer: its own files
        for name in TOKENIZER_FILES:
            if (pathlib.Path(source) / name).is_file():
                shutil.copyfile(pathlib.Path(source) / name, out / name)
        return ids
    from jaxdistill.data.tokenizer import SPECIAL_TOKENS

    to_json = getattr(tokenizer, 'to_json', None)
    (out / files.TOKENIZER_FILE).write_text(to_json() if callable(to_json)
                                            else byte_tokenizer_json())
    pad, bos, eos = SPECIAL_TOKENS
    config = {'tokenizer_class': 'PreTrainedTokenizerFast', 'bos_token': bos,
              'eos_token': eos, 'pad_token': pad, 'add_bos_token': False,
              'add_eos_token': False, 'model_max_length': 1 << 30}
    (out / files.TOKENIZER_CONFIG_FILE).write_text(json.dumps(config, indent=2) + '\n')
    return ids


def _card(config: Mapping[str, Any], provenance: Mapping[str, Any]) -> str:
    arch = config.get('architectures', ['?'])[0]
    rows = '\n'.join(f'| {k} | `{v}` |' for k, v in provenance.items()
                     if not isinstance(v, (dict, list)) and v not in (None, ''))
    losses = provenance.get('losses')
    return (f'---\nlibrary_name: transformers\ntags:\n- jaxdistill\n- distillation\n---\n\n'
            f'# {arch} distilled with jaxdistill\n\n'
            f'A {config.get("model_type")} model ({config.get("num_hidden_layers")} layers, '
            f'hidden size {config.get("hidden_size")}, vocabulary {config.get("vocab_size")}) '
            'trained by knowledge distillation with jaxdistill and exported in Hugging Face '
            'format (float32 safetensors).\n\n'
            '```python\nfrom transformers import AutoModelForCausalLM, AutoTokenizer\n'
            'model = AutoModelForCausalLM.from_pretrained(PATH)\n'
            'tokenizer = AutoTokenizer.from_pretrained(PATH)\n```\n\n'
            '## Provenance\n\n| key | value |\n|---|---|\n' + rows + '\n\n'
            + (f'Losses: `{json.dumps(losses)}`\n\n' if losses else '')
            + 'The same record is in `config.json` under `jaxdistill`.\n')


def check_exportable(module: Any, key: str = 'student.module') -> convert.Converter:
    """The converter of ``module``; a one-line error for modules with no Hugging Face form."""
    return convert.for_module(module, key)


def save_pretrained(module: Any, params: Mapping[str, Any], out: str | pathlib.Path, *,
                    tokenizer: Any = None, provenance: Mapping[str, Any] | None = None
                    ) -> pathlib.Path:
    """Writes ``module`` with ``params`` as a Hugging Face model directory at ``out``.

    ``tokenizer``: a jaxdistill tokenizer (byte, BPE or `HFTokenizer`) or a directory whose
    tokenizer files are copied; ``provenance`` goes into config.json and the model card.
    """
    from safetensors.numpy import save_file

    converter = check_exportable(module)
    out = pathlib.Path(out)
    config = converter.hf_config(module)
    tensors = {k: np.ascontiguousarray(v, np.float32) for k, v in converter.to_hf(params).items()}
    tmp = out.with_name(out.name + '.tmp')
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    ids = _tokenizer_files(tokenizer, tmp) if tokenizer is not None else {}
    config.update(ids)
    config['jaxdistill'] = dict(provenance or {})
    save_file(tensors, str(tmp / files.WEIGHTS_FILE), metadata={'format': 'pt'})
    (tmp / files.CONFIG_FILE).write_text(json.dumps(config, indent=2, default=str) + '\n')
    if isinstance(module, Decoder):
        generation = {**ids, '_from_model_config': True}
        (tmp / 'generation_config.json').write_text(json.dumps(generation, indent=2) + '\n')
    (tmp / 'README.md').write_text(_card(config, provenance or {}))
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out
