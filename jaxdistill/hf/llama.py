"""``model_type='llama'``: the plain `Decoder` (SwiGLU, no biases, full attention)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jaxdistill.hf.decoder import Family, common_config, common_kwargs, refuse, register_family
from jaxdistill.models.decoder import Decoder


def kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
    for key, want, what in (('hidden_act', 'silu', "SwiGLU with SiLU ('silu')"),
                            ('attention_bias', False, 'attention without biases'),
                            ('mlp_bias', False, 'an MLP without biases')):
        refuse(config, key, want, what, 'llama')
    return common_kwargs(config, tie_default=False)


def plain(m: Decoder) -> bool:
    return not (m.qkv_bias or m.norm_plus_one or m.scale_embeddings or m.sliding_window
                or m.activation != 'silu')


def config(m: Decoder) -> dict[str, Any]:
    return {**common_config(m, FAMILY), 'hidden_act': 'silu', 'attention_bias': False,
            'mlp_bias': False}


FAMILY = register_family(Family('llama', 'LlamaForCausalLM', kwargs, config, plain))
