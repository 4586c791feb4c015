"""``model_type='mistral'``: Llama's layers with a sliding attention window.

Each position attends to itself and the ``sliding_window - 1`` positions before it (HF's
``kv_idx > q_idx - sliding_window``); ``sliding_window: null`` is full attention.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxdistill.errors import ConfigError
from jaxdistill.hf.decoder import Family, common_config, common_kwargs, refuse, register_family
from jaxdistill.models.decoder import Decoder


def kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    refuse(config, 'hidden_act', 'silu', "SwiGLU with SiLU ('silu')", 'mistral')
    kinds = set(config.get('layer_types') or ())
    if len(kinds) > 1:
        raise ConfigError(f'config.json layer_types mixes {sorted(kinds)}: per-layer attention '
                          "kinds (Ministral) are not implemented for model_type 'mistral'")
    window = config.get('sliding_window')
    return {**common_kwargs(config, tie_default=False), 'sliding_window': int(window or 0)}


def matches(m: Decoder) -> bool:
    return m.sliding_window > 0 and not (m.qkv_bias or m.norm_plus_one or m.scale_embeddings
                                         or m.activation != 'silu')


def config(m: Decoder) -> dict[str, Any]:
    return {**common_config(m, FAMILY), 'hidden_act': 'silu',
            'sliding_window': m.sliding_window or None}


FAMILY = register_family(Family('mistral', 'MistralForCausalLM', kwargs, config, matches))
