"""configs/lm_large.py: the 1.1B -> 345M recipe's shapes and shardings, and its tiny preset run.

The full recipe needs a TPU slice, so it is checked without computing a parameter: its
parameter counts come from ``jax.eval_shape`` of the two modules (against the docstring's
formula and the nominal 1.1B / 345M), and its shardings on a v4-32 from the rules on an
abstract 16-chip mesh. The ``tiny`` preset (same module, scan, remat, bfloat16, rules, mesh)
is initialised on the 8 forced CPU devices as FSDP shards and run end to end.
"""

import json
import math

import jax
import jax.numpy as jnp
import pytest
from flax.core import meta
from jax.sharding import AbstractMesh
from jax.sharding import PartitionSpec as P

from jaxdistill import config as config_lib
from jaxdistill import provenance, run, train
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from tests.helpers import ROOT, load_config, load_module

NAME = 'lm_large.py'
NOMINAL = {'teacher': 1.1e9, 'student': 345e6}
V4_32 = 16  # chips (JAX devices) of a v4-32 slice


def _model(c, side: str) -> Model:
    return Model(modules.resolve(c[side].module, c[side].kwargs, key=f'{side}.module'),
                 name=side, sharding_rules=mesh_lib.normalize_rules(c[side].sharding_rules))


def _boxed_params(model: Model, length: int = 8):
    """Shapes and logical names of the parameters, nothing computed."""
    tokens = jnp.zeros((1, length), jnp.int32)
    params, _ = jax.eval_shape(lambda: model.init(jax.random.key(0), tokens, boxed=True))
    return params


def _count(tree) -> int:
    return sum(math.prod(x.shape) for x in jax.tree.leaves(tree))


@pytest.fixture(scope='module')
def full():
    return load_config(NAME)


def test_full_config_validates(full):
    config_lib.validate(full)
    assert full.task == 'lm' and full.data.tokenizer == 'bpe' and full.data.seq_len == 2048
    assert [e.name for e in full.distill.losses] == ['kd', 'ce']
    assert mesh_lib.axis_sizes(full.mesh, V4_32) == (1, V4_32, 1)
    assert full.data.batch_size % V4_32 == 0 and full.data.eval_batch_size % V4_32 == 0
    for side in ('teacher', 'student'):
        kw = full[side].kwargs
        assert kw.dtype == 'bfloat16' and kw.param_dtype == 'float32'
        assert kw.scan_layers and kw.remat and kw.max_len == full.data.seq_len


@pytest.mark.parametrize('side', ['teacher', 'student'])
def test_full_parameter_counts(full, side):
    """eval_shape's count == the docstring's formula == its number, within 5 % of nominal."""
    recipe = load_module(NAME)
    params = _boxed_params(_model(full, side))
    n = _count(params)
    stated = {'teacher': recipe.TEACHER_PARAMS, 'student': recipe.STUDENT_PARAMS}[side]
    assert n == recipe.param_count(full[side].kwargs) == stated
    assert f'{stated:,}' in recipe.__doc__
    assert abs(n / NOMINAL[side] - 1) < 0.05, n
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params))
    if side == 'teacher':  # TinyLlama: grouped queries (8 per kv head), untied output
        assert full.teacher.kwargs.num_heads // full.teacher.kwargs.num_kv_heads == 8
        assert 'lm_head' in params


@pytest.mark.parametrize('side', ['teacher', 'student'])
def test_full_recipe_is_fsdp_over_a_v4_32(full, side):
    """Every parameter is split 16 ways over 'fsdp': 4 P / 16 bytes of float32 per chip."""
    mesh = AbstractMesh((1, V4_32, 1), mesh_lib.AXES)
    params = _boxed_params(_model(full, side))
    shardings = mesh_lib.param_sharding(mesh, params, full[side].sharding_rules)
    plain = jax.tree.leaves(meta.unbox(params))
    per_chip = 0
    for leaf, sharding in zip(plain, jax.tree.leaves(shardings)):
        assert 'fsdp' in sharding.spec, (leaf.shape, sharding.spec)
        per_chip += math.prod(sharding.shard_shape(leaf.shape)) * 4
    assert per_chip * V4_32 == 4 * _count(params)


def test_tiny_preset_keeps_the_structure(full):
    """Only shapes, sizes and step counts differ from the full recipe."""
    tiny = load_config(NAME, 'tiny')
    config_lib.validate(tiny)
    shapes = ('vocab_size', 'num_layers', 'd_model', 'num_heads', 'num_kv_heads', 'mlp_dim',
              'max_len')
    for side in ('teacher', 'student'):
        t, f = (dict(c[side].to_dict(), steps=None) for c in (tiny, full))
        for kw in (t['kwargs'], f['kwargs']):
            for key in shapes:
                kw.pop(key)
        assert t == f, side
    assert tiny.teacher.kwargs.num_kv_heads < tiny.teacher.kwargs.num_heads  # still GQA
    for section in ('distill', 'mesh', 'optimizer'):
        t, f = (dict(c[section].to_dict(), warmup_steps=None) for c in (tiny, full))
        assert t == f, section
    assert (tiny.task, tiny.data.name, tiny.data.tokenizer) == (full.task, 'pytext', 'bpe')
    with pytest.raises(ValueError, match="known: 'tiny'"):
        load_config(NAME, 'smoke')


def _param_bytes(params) -> dict:
    out = {}
    for leaf in jax.tree.leaves(params):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def test_tiny_teacher_state_is_fsdp_sharded_on_8_devices():
    """The preset's own mesh (data 1, fsdp -1) on 8 CPU devices: each holds an eighth."""
    if jax.device_count() != 8:
        pytest.skip('needs the 8 forced CPU devices of tests/conftest.py')
    c = load_config(NAME, 'tiny')
    mesh = mesh_lib.make_mesh(c.mesh)
    assert dict(mesh.shape) == {'data': 1, 'fsdp': 8, 'tensor': 1}
    model = _model(c, 'teacher')
    opt = train.make_optimizer(c.optimizer, c.teacher.steps)
    sample = jnp.zeros((1, c.data.seq_len), jnp.int32)
    state, shardings = train.create_train_state(model, opt, jax.random.key(0), sample, mesh)
    specs = jax.tree.map(lambda s: s.spec, shardings.params)
    assert specs['embedding'] == P(None, 'fsdp') and specs['lm_head'] == P('fsdp')
    # scanned layers: a leading 'layers' axis, kept whole; d_model split over fsdp
    assert specs['layers']['attn']['key'] == P(None, 'fsdp')
    assert specs['layers']['down'] == P(None, None, 'fsdp')
    total = train.count_params(state.params) * 4
    assert set(_param_bytes(state.params).values()) == {total // 8}


@pytest.fixture(scope='module')
def tiny_run(data_dir, tmp_path_factory):
    c = load_config(NAME, 'tiny')
    c.data.data_dir = data_dir
    c.train.baseline = False  # a third stage to compile, and nothing recipe-specific in it
    workdir = str(tmp_path_factory.mktemp('lm_large'))
    return c, workdir, run.train_and_evaluate(c, workdir)


@pytest.mark.slow
def test_tiny_preset_runs_end_to_end(tiny_run):
    c, workdir, result = tiny_run
    with open(f'{workdir}/results.json') as f:
        saved = json.load(f)
    assert saved['student']['steps'] == saved['teacher']['steps'] == 2
    vocab = c.student.kwargs.vocab_size
    for name in ('teacher', 'student'):
        assert 1.0 < saved[name]['perplexity'] < 2 * vocab, name
    assert math.isfinite(saved['student']['train_loss'])
    assert 0.0 <= saved['student']['agreement'] <= 1.0
    assert saved['provenance']['tokenizer'] == 'bpe'
    assert saved['provenance']['seq_len'] == 32


@pytest.mark.slow
def test_tiny_run_restores_the_teacher_into_fsdp_shards(tiny_run):
    c, workdir, result = tiny_run
    if jax.device_count() != 8:
        pytest.skip('needs the 8 forced CPU devices of tests/conftest.py')
    c.teacher.checkpoint = workdir
    p = run.plan(c, workdir + '_probe')
    teacher = run.load_teacher(p)
    assert teacher['params']['embedding'].sharding.spec == P(None, 'fsdp')
    total = train.count_params(teacher['params']) * 4
    assert set(_param_bytes(teacher['params']).values()) == {total // 8}
    assert provenance.params_sha256(teacher['params']) == result['provenance'][
        'teacher_params_sha256']


def test_docstring_has_the_launch_commands():
    doc = open(f'{ROOT}/configs/{NAME}').read().replace('\\\n', '')
    assert 'launch/tpu_vm.sh --name lm-large --accelerator-type v4-32' in doc
    assert f'--config=configs/{NAME}' in doc
    assert f'python -m jaxdistill.main --config=configs/{NAME}' in ' '.join(doc.split())
