"""``model_type='gemma'`` (Gemma 1): RMSNorm scaled by ``(1 + w)``, embeddings by
``sqrt(d_model)``, a GeGLU MLP with tanh-approximated GELU, an explicit ``head_dim``.

HF maps the legacy ``hidden_act='gelu'`` of the original releases to the tanh approximation
too (``GemmaConfig``), and so does this reader.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxdistill.errors import ConfigError
from jaxdistill.hf.decoder import Family, common_config, common_kwargs, refuse, register_family
from jaxdistill.models.decoder import Decoder

TANH_GELU = ('gelu_pytorch_tanh', 'gelu_tanh', 'gelu_new', 'gelu_fast', 'gelu')


def kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    act = config.get('hidden_activation') or config.get('hidden_act') or 'gelu_pytorch_tanh'
    if act not in TANH_GELU:
        raise ConfigError(f'config.json hidden_activation={act!r}: Decoder implements only '
                          "GeGLU with tanh-approximated GELU for model_type 'gemma'")
    refuse(config, 'attention_bias', False, 'attention without biases', 'gemma')
    return {**common_kwargs({'head_dim': 256, **config}, tie_default=True),
            'norm_plus_one': True, 'scale_embeddings': True, 'activation': 'gelu_tanh'}


def matches(m: Decoder) -> bool:
    return (m.norm_plus_one and m.scale_embeddings and m.activation == 'gelu_tanh'
            and not (m.qkv_bias or m.sliding_window))


def config(m: Decoder) -> dict[str, Any]:
    return {**common_config(m, FAMILY), 'hidden_act': 'gelu_pytorch_tanh',
            'hidden_activation': 'gelu_pytorch_tanh', 'attention_bias': False}


FAMILY = register_family(Family('gemma', 'GemmaForCausalLM', kwargs, config, matches))
