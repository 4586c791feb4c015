"""Hugging Face tokenizers (``tokenizer.json``) for sentences and for language-model text.

`HFTokenizer` (`load_lm_tokenizer`) serves language models: the jaxdistill `Tokenizer`
interface with the BOS/EOS/pad ids the checkpoint names. `load_tokenizer` and `encode`
serve encoders (``[CLS] ... [SEP]``, padded batches).
Over-long sequences are *truncated with a warning* (`TruncationWarning`), not refused:
that is what sentence-transformers does at ``max_seq_length``, so embeddings stay
comparable with the reference; the warning makes the loss of text visible.
"""

from __future__ import annotations

import pathlib
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np

from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.hf.files import CONFIG_FILE, TOKENIZER_CONFIG_FILE, TOKENIZER_FILE, optional


class TruncationWarning(UserWarning):
    """Some sentences were longer than ``max_len`` tokens and lost their tail."""


def load_tokenizer(model_dir: str | pathlib.Path) -> Any:
    """The `tokenizers.Tokenizer` from ``tokenizer.json``, with its own truncation and
    padding switched off: MiniLM's file caps at 128 and pads to 128, while the model is
    used at 256 (sentence-transformers overrides the file). `encode` does both, visibly."""
    path = pathlib.Path(model_dir)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise CheckpointError(f'{path}: no tokenizer file; give the model directory holding '
                              f'{TOKENIZER_FILE} (a fast-tokenizer export)')
    tokenizers = optional('tokenizers', 'tokenizers')
    try:
        tok = tokenizers.Tokenizer.from_file(str(path))
    except Exception as e:  # noqa: BLE001 - the file's fault, shown in one line
        raise CheckpointError(f'{path}: not a tokenizers JSON file ({e})') from None
    tok.no_truncation()
    tok.no_padding()
    return tok


def encode(tokenizer: Any, sentences: Sequence[str] | str, max_len: int, *,
           pad_to: int | None = None, pad_id: int = 0) -> dict[str, np.ndarray]:
    """Token ids and mask, int32 ``(batch, length)``, right-padded with ``pad_id``.

    Sentences over ``max_len`` tokens (special tokens included) are truncated, keeping
    the final ``[SEP]``, with a `TruncationWarning`. ``length`` is the longest sequence,
    or ``pad_to`` when given (fixed shapes avoid recompiling a jitted model per batch).
    """
    if isinstance(sentences, str):
        sentences = [sentences]
    if max_len < 2:
        raise ConfigError(f'max_len={max_len}: needs room for [CLS] and [SEP]; use >= 2')
    saved_trunc, saved_pad = tokenizer.truncation, tokenizer.padding
    try:
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_len)
        encodings = tokenizer.encode_batch(list(sentences))
    finally:
        tokenizer.no_truncation()
        if saved_trunc:
            tokenizer.enable_truncation(**saved_trunc)
        if saved_pad:
            tokenizer.enable_padding(**saved_pad)
    cut = [i for i, e in enumerate(encodings) if e.overflowing]
    if cut:
        warnings.warn(f'{len(cut)} of {len(encodings)} sentences exceed max_len={max_len} '
                      f'tokens (first: #{cut[0]}); truncated to {max_len}, as '
                      'sentence-transformers does', TruncationWarning, stacklevel=2)
    length = max((len(e.ids) for e in encodings), default=0)
    if pad_to is not None:
        if pad_to < length:
            raise ConfigError(f'pad_to={pad_to} is shorter than the longest encoded sentence '
                              f'({length} tokens); use pad_to >= max_len')
        length = pad_to
    ids = np.full((len(encodings), length), pad_id, np.int32)
    mask = np.zeros((len(encodings), length), np.int32)
    for i, e in enumerate(encodings):
        ids[i, :len(e.ids)] = e.ids
        mask[i, :len(e.ids)] = 1
    return {'input_ids': ids, 'attention_mask': mask}


# ---------------------------------------------------------------------------- language models


def _token_text(value: Any) -> str | None:
    """``tokenizer_config.json`` writes a special token as text or ``{'content': text}``."""
    if isinstance(value, dict):
        value = value.get('content')
    return value if isinstance(value, str) else None


def special_ids(directory: pathlib.Path, tok: Any) -> dict[str, int | None]:
    """``{'bos', 'eos', 'pad'}`` ids: tokenizer_config.json's tokens, else config.json's (and
    generation_config.json's) ``*_token_id``; a list of ids keeps its first."""
    import json

    def read(name: str) -> dict[str, Any]:
        path = directory / name
        if not path.is_file():
            return {}
        try:
            data = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CheckpointError(f'{path}: not valid JSON ({e}); restore the file') from None
        return data if isinstance(data, dict) else {}

    tok_config = read(TOKENIZER_CONFIG_FILE)
    configs = (read(CONFIG_FILE), read('generation_config.json'))
    out: dict[str, int | None] = {}
    for kind in ('bos', 'eos', 'pad'):
        text = _token_text(tok_config.get(f'{kind}_token'))
        found = tok.token_to_id(text) if text is not None else None
        for config in configs:
            if found is None:
                value = config.get(f'{kind}_token_id')
                value = value[0] if isinstance(value, list) and value else value
                found = value if isinstance(value, int) else None
        out[kind] = found
    return out


class HFTokenizer:
    """A ``tokenizer.json`` as a `jaxdistill.data.tokenizer.Tokenizer` for text tasks.

    ``encode`` adds no special tokens (packing adds BOS/EOS per document). When the model
    has no BOS token (Qwen2) documents start with its EOS, as its pretraining separated
    them; a missing pad token is the EOS (masks keep padding out of every loss).
    """

    def __init__(self, tok: Any, directory: pathlib.Path, ids: dict[str, int | None]):
        self._tok, self.directory = tok, directory
        self.vocab_size = tok.get_vocab_size(with_added_tokens=True)
        if ids['eos'] is None:
            raise CheckpointError(f'{directory}: neither {TOKENIZER_CONFIG_FILE} nor '
                                  f'{CONFIG_FILE} names an EOS token; add eos_token_id to '
                                  f'{CONFIG_FILE}')
        self.eos_id = ids['eos']
        self.bos_id = ids['bos'] if ids['bos'] is not None else self.eos_id
        self.pad_id = ids['pad'] if ids['pad'] is not None else self.eos_id
        self.name = f'hf:{directory}'

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        """`encode` of many texts in one (multi-threaded) call."""
        return [e.ids for e in self._tok.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)

    def to_json(self) -> str:
        """The ``tokenizer.json`` text (what identifies the tokenizer in packed caches)."""
        return self._tok.to_str()


def load_lm_tokenizer(directory: str | pathlib.Path, model_vocab: int | None = None,
                      key: str = 'data.tokenizer') -> HFTokenizer:
    """The `HFTokenizer` of a model directory; larger than ``model_vocab`` is an error."""
    directory = pathlib.Path(directory)
    directory = directory if directory.is_dir() else directory.parent
    tok = load_tokenizer(directory)
    out = HFTokenizer(tok, directory, special_ids(directory, tok))
    if model_vocab is not None and out.vocab_size > model_vocab:
        raise ConfigError(f'{key}: the tokenizer of {directory} has {out.vocab_size} ids but '
                          f'the model has a vocabulary of {model_vocab}: use the tokenizer '
                          'that belongs to the checkpoint')
    return out
