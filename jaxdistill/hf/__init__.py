"""Hugging Face models in and out, without torch: safetensors + config.json + tokenizer.json.

One home for everything Hugging Face:

- `files`: safetensors reading (single file or sharded with an index, tensor by tensor),
  config.json;
- `convert`: the registry of converters (module class <-> HF tensors) and import reports;
- `bert`: BERT-family encoders <-> `BertEncoder`;
- `decoder`: decoder-only LMs <-> `Decoder`, with one module per family holding its
  config.json translation: `llama`, `mistral`, `qwen2`, `gemma`;
- `tokenizer`: ``tokenizer.json`` for sentences (`encode`) and for LM text (`HFTokenizer`);
- `teacher`: ``teacher.checkpoint='hf:DIR'`` / ``module='hf'`` at config and load time.

`load_causal_lm` is the one-call entry point for a decoder-only checkpoint directory.
"""

from __future__ import annotations

import pathlib
from typing import Any

from jaxdistill.hf import convert, files, gemma, llama, mistral, qwen2  # noqa: F401  (register the families)
from jaxdistill.hf import decoder as decoder
from jaxdistill.hf.bert import (
    bert_name_map,
    bert_params_from_hf,
    bert_params_to_hf,
    check_bert_tensors,
    load_bert_checkpoint,
)
from jaxdistill.hf.convert import CheckpointMismatchError, ImportReport
from jaxdistill.hf.files import (
    HF_PREFIX,
    INDEX_FILE,
    TOKENIZER_FILE,
    WEIGHTS_FILE,
    find_minilm,
    load_safetensors,
    model_max_length,
)
from jaxdistill.hf.tokenizer import (
    HFTokenizer,
    TruncationWarning,
    encode,
    load_lm_tokenizer,
    load_tokenizer,
)


def load_causal_lm(path: str | pathlib.Path, **overrides: Any
                   ) -> tuple[Any, dict[str, Any], HFTokenizer | None]:
    """``(module, params, tokenizer)`` of a Hugging Face causal LM directory.

    ``module.apply({'params': params}, token_ids)`` gives ``[B, T, V]`` float32 logits. The
    architecture comes from ``config.json`` (model_type llama, mistral, qwen2 or gemma;
    ``overrides`` may set `decoder.OVERRIDES` such as ``dtype``), the weights from
    ``model.safetensors`` or its shards (bf16 or f32, kept in ``param_dtype``, float32 by
    default), checked tensor by tensor first; ``tokenizer`` is None when the directory has
    no ``tokenizer.json``. ``path`` may carry the ``hf:`` prefix.
    """
    path = pathlib.Path(str(path).removeprefix(HF_PREFIX)).expanduser()
    directory = files.model_dir(path)
    config = files.read_config(directory)
    module = decoder.from_hf_config(config, **overrides)
    weights = files.open_weights(path)
    params = decoder.decoder_params_from_hf(weights, module)
    tokenizer = None
    if (directory / TOKENIZER_FILE).is_file():
        tokenizer = load_lm_tokenizer(directory, module.vocab_size, key=str(directory))
    return module, params, tokenizer


__all__ = ['CheckpointMismatchError', 'HF_PREFIX', 'HFTokenizer', 'INDEX_FILE', 'ImportReport',
           'TOKENIZER_FILE', 'TruncationWarning', 'WEIGHTS_FILE', 'bert_name_map',
           'bert_params_from_hf', 'bert_params_to_hf', 'check_bert_tensors', 'convert',
           'decoder', 'encode', 'files', 'find_minilm', 'load_bert_checkpoint', 'load_causal_lm',
           'load_lm_tokenizer', 'load_safetensors', 'load_tokenizer', 'model_max_length']
