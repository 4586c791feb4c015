"""jaxdistill/hf/export.py: students written as Hugging Face model directories.

tools/check_hf_export.py exported the same models, had ``transformers`` load each one
(``AutoModelForCausalLM``, ``AutoTokenizer``) and saved its logits and the config.json it
accepted under tests/fixtures/hf/export/; these tests export again (no torch here) and
compare with that reference.
"""

import importlib.util
import json
import pathlib

import jax
import numpy as np
import pytest
from safetensors.numpy import load_file

from jaxdistill import hf
from jaxdistill.errors import ConfigError
from jaxdistill.hf import export
from jaxdistill.models.bert import BertEncoder
from jaxdistill.models.cnn import CNN

ROOT = pathlib.Path(__file__).resolve().parent.parent
REFERENCE = ROOT / 'tests' / 'fixtures' / 'hf' / 'export'


def _tool():
    spec = importlib.util.spec_from_file_location('check_hf_export',
                                                  ROOT / 'tools' / 'check_hf_export.py')
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope='module')
def exported(tmp_path_factory):
    tool = _tool()
    out = tmp_path_factory.mktemp('hf_export')
    made = {}
    for name, (module, params, tok) in tool.cases().items():
        made[name] = (export.save_pretrained(module, params, out / name, tokenizer=tok,
                                             provenance={'case': name}), module, params, tok)
    return tool, made


CASES = ('llama', 'mistral', 'qwen2', 'gemma', 'cut_llama', 'byte_decoder')


@pytest.mark.parametrize('case', CASES)
def test_transformers_reference_logits(exported, case):
    tool, made = exported
    directory, module, params, tok = made[case]
    config = json.loads((directory / 'config.json').read_text())
    assert config.pop('jaxdistill') == {'case': case}
    assert config == json.loads((REFERENCE / f'{case}.config.json').read_text())
    ref = np.load(REFERENCE / f'{case}.npz')
    assert ref['input_ids'].tolist() == tool.input_ids(tok).tolist()
    loaded, loaded_params, loaded_tok = hf.load_causal_lm(directory)
    got = np.asarray(loaded.apply({'params': loaded_params}, ref['input_ids']))
    diff = float(np.abs(got - ref['logits']).max())
    assert diff <= 1e-4, f'{case}: max abs diff to transformers {diff:.2e}'
    assert loaded_tok.encode(tool.TEXT) == tok.encode(tool.TEXT)
    assert (loaded_tok.bos_id, loaded_tok.eos_id, loaded_tok.pad_id) == (
        tok.bos_id, tok.eos_id, tok.pad_id)
    tensors = load_file(str(directory / 'model.safetensors'))
    want = hf.decoder.decoder_params_to_hf(params)
    assert set(tensors) == set(want)
    for name, value in want.items():
        np.testing.assert_array_equal(tensors[name], value, err_msg=name)
    generation = json.loads((directory / 'generation_config.json').read_text())
    assert generation['eos_token_id'] == tok.eos_id
    assert 'library_name: transformers' in (directory / 'README.md').read_text()


def test_family_is_chosen_from_the_module(exported):
    _, made = exported
    kinds = {case: json.loads((made[case][0] / 'config.json').read_text())['model_type']
             for case in CASES}
    assert kinds == {'llama': 'llama', 'mistral': 'mistral', 'qwen2': 'qwen2', 'gemma': 'gemma',
                     'cut_llama': 'llama', 'byte_decoder': 'llama'}


def test_bert_layout(tmp_path):
    module = BertEncoder(vocab_size=40, hidden=16, layers=2, heads=2, intermediate=32,
                         max_len=16)
    ids = np.ones((1, 8), np.int32)
    params = jax.device_get(module.init(jax.random.key(0), ids)['params'])
    out = export.save_pretrained(module, params, tmp_path / 'bert', provenance={'x': 1})
    config = json.loads((out / 'config.json').read_text())
    assert config['architectures'] == ['BertModel'] and config['jaxdistill'] == {'x': 1}
    again, back = hf.load_bert_checkpoint(out)
    assert again == module.clone(pad_token_id=module.pad_token_id)
    jax.tree.map(np.testing.assert_array_equal, jax.device_get(back), params)


def test_modules_without_a_hf_layout_are_refused_before_writing(tmp_path):
    with pytest.raises(ConfigError, match=r"student.module: hf: checkpoints load into the "
                                          r"'bert' .* 'decoder' .* not CNN"):
        export.save_pretrained(CNN(num_classes=10), {}, tmp_path / 'x')
    assert not (tmp_path / 'x').exists() and not (tmp_path / 'x.tmp').exists()
