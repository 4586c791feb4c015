"""``model_type='qwen2'``: Llama's layers with biases on the query, key and value projections.

Qwen2's optional per-layer sliding windows (``use_sliding_window``) are refused: released
checkpoints ship with it off.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxdistill.hf.decoder import Family, common_config, common_kwargs, refuse, register_family
from jaxdistill.models.decoder import Decoder


def kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    refuse(config, 'hidden_act', 'silu', "SwiGLU with SiLU ('silu')", 'qwen2')
    refuse(config, 'use_sliding_window', False, 'full attention (use_sliding_window=false)',
           'qwen2')
    return {**common_kwargs(config, tie_default=False), 'qkv_bias': True}


def matches(m: Decoder) -> bool:
    return m.qkv_bias and not (m.norm_plus_one or m.scale_embeddings or m.sliding_window
                               or m.activation != 'silu')


def config(m: Decoder) -> dict[str, Any]:
    return {**common_config(m, FAMILY), 'hidden_act': 'silu', 'use_sliding_window': False,
            'sliding_window': None, 'max_window_layers': m.num_layers}


FAMILY = register_family(Family('qwen2', 'Qwen2ForCausalLM', kwargs, config, matches))
