"""Tokenizers that need no download: raw UTF-8 bytes, or a byte-level BPE trained locally.

Both share the special ids ``pad = 0``, ``bos = 1``, ``eos = 2``, so packed data, masks and
samplers never depend on which one is used. `ByteTokenizer` maps byte ``b`` to id ``b + 3``
(vocab 259). `BPETokenizer` is a GPT-2 style byte-level BPE (Hugging Face ``tokenizers``,
the ``hf`` extra): any string round-trips exactly, and unseen characters fall back to their
bytes. A model's ``vocab_size`` may exceed ``tokenizer.vocab_size`` (round it up to a
multiple of the mesh's tensor axis); the extra ids never occur in data.

``encode`` adds no special tokens; `jaxdistill.data.text.pack` adds BOS/EOS per document.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable, Sequence
from typing import Protocol, runtime_checkable

from jaxdistill.errors import ConfigError

PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
SPECIAL_TOKENS = ('<pad>', '<bos>', '<eos>')  # in id order
NUM_BYTES = 256


@runtime_checkable
class Tokenizer(Protocol):
    """What data packing and sampling need from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``, without BOS/EOS."""

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids``; special ids are dropped, invalid UTF-8 becomes U+FFFD."""


class ByteTokenizer:
    """UTF-8 bytes as tokens: no training, no unknown characters, ~1 token per character."""

    vocab_size = NUM_BYTES + len(SPECIAL_TOKENS)
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID
    name = 'byte'

    def encode(self, text: str) -> list[int]:
        offset = len(SPECIAL_TOKENS)
        return [b + offset for b in text.encode('utf-8')]

    def decode(self, ids: Sequence[int]) -> str:
        offset = len(SPECIAL_TOKENS)
        data = bytes(int(i) - offset for i in ids if offset <= int(i) < self.vocab_size)
        return data.decode('utf-8', errors='replace')


class BPETokenizer:
    """A byte-level BPE (``tokenizers``), trained by :meth:`train` or read from JSON."""

    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self, tokenizer) -> None:
        self._tok = tokenizer
        self.vocab_size = tokenizer.get_vocab_size()
        for i, token in enumerate(SPECIAL_TOKENS):
            if tokenizer.token_to_id(token) != i:
                raise ConfigError(f'tokenizer: special token {token!r} must have id {i}; '
                                  'train it with BPETokenizer.train')
        self.name = f'bpe{self.vocab_size}'

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> BPETokenizer:
        """Learns ``vocab_size - 259`` merges on ``texts`` (deterministic for a fixed input).

        The 256 byte symbols are always in the vocabulary (GPT-2's initial alphabet), so no
        text is ever out of vocabulary.
        """
        from tokenizers import Tokenizer as HFTokenizer
        from tokenizers import decoders, models, pre_tokenizers, trainers

        minimum = NUM_BYTES + len(SPECIAL_TOKENS) + 1
        if vocab_size < minimum:
            raise ConfigError(f'tokenizer vocab_size={vocab_size} is too small for a byte-level '
                              f'BPE: use at least {minimum} (256 bytes + 3 specials + merges)')
        tok = HFTokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=list(SPECIAL_TOKENS),
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                      show_progress=False)
        tok.train_from_iterator(list(texts), trainer)
        return cls(tok)

    @classmethod
    def load(cls, path: str) -> BPETokenizer:
        from tokenizers import Tokenizer as HFTokenizer

        return cls(HFTokenizer.from_file(path))

    def save(self, path: str) -> None:
        """Writes ``tokenizer.json`` atomically (readers never see a partial file)."""
        folder = os.path.dirname(os.path.abspath(path))
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, suffix='.json.tmp')
        with os.fdopen(fd, 'w') as f:
            f.write(self.to_json())
        os.replace(tmp, path)

    def to_json(self) -> str:
        """The canonical ``tokenizer.json`` text (keys sorted: equal models, equal text)."""
        return json.dumps(json.loads(self._tok.to_str()), sort_keys=True, ensure_ascii=False)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def decode(self, ids: Sequence[int]) -> str:
        return self._tok.decode([int(i) for i in ids], skip_special_tokens=True)
