"""jaxdistill/runtime/mesh.py: mesh sizes, sharding rules, and the same run on every layout."""

import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from jaxdistill import config as config_lib
from jaxdistill import provenance, run, train
from jaxdistill.config import loss_entry
from jaxdistill.errors import ConfigError
from jaxdistill.models import modules
from jaxdistill.models.adapter import Model
from jaxdistill.runtime import mesh as mesh_lib
from jaxdistill.train import checkpoint as ckpt_lib
from tests.helpers import load_config


def cfg(data=-1, fsdp=1, tensor=1):
    return ml_collections.ConfigDict(dict(data=data, fsdp=fsdp, tensor=tensor))


@pytest.mark.parametrize('c,n,want', [
    (cfg(), 8, (8, 1, 1)), (cfg(data=2, fsdp=-1), 8, (2, 4, 1)),
    (cfg(data=-1, tensor=2), 8, (4, 1, 2)), (cfg(), 1, (1, 1, 1)),
])
def test_axis_sizes(c, n, want):
    assert mesh_lib.axis_sizes(c, n) == want


@pytest.mark.parametrize('c,match', [
    (cfg(data=3, fsdp=-1), 'does not divide'), (cfg(data=2, fsdp=2, tensor=1), 'has 4 devices'),
    (cfg(data=-1, fsdp=-1), 'only one'),
])
def test_bad_mesh(c, match):
    with pytest.raises(ConfigError, match=match):
        mesh_lib.axis_sizes(c, 8)


def test_make_mesh_uses_every_device():
    mesh = mesh_lib.make_mesh(cfg(data=-1, tensor=2))
    assert mesh.axis_names == ('data', 'fsdp', 'tensor')
    assert mesh.size == jax.device_count()


def test_batch_placer_places_like_to_global():
    mesh = mesh_lib.make_mesh(cfg(data=4, fsdp=2))
    rng = np.random.default_rng(0)
    batch = {'image': rng.random((16, 5, 5, 3), dtype=np.float32),
             'label': rng.integers(0, 9, 16).astype(np.int32), 'mask': rng.random(16) < 0.5}
    place = mesh_lib.batch_placer(mesh)
    want = mesh_lib.to_global(mesh, batch)
    for _ in range(2):  # the second call reuses the compiled identity
        got = place(batch)
        for k in batch:
            assert got[k].dtype == want[k].dtype and got[k].sharding == want[k].sharding, k
            np.testing.assert_array_equal(np.asarray(got[k]), batch[k])


def test_batch_divisibility():
    mesh = mesh_lib.make_mesh(cfg())
    mesh_lib.check_batch(mesh, 8 * jax.device_count())
    if jax.device_count() > 1:
        with pytest.raises(ConfigError, match='data.batch_size=9 is not divisible'):
            mesh_lib.check_batch(mesh, 9)


# ---------------------------------------------------------------- rules -> specs

RULES = mesh_lib.DEFAULT_RULES


@pytest.mark.parametrize('mesh_cfg,shape,names,want', [
    # FSDP on the input side, tensor parallel on the output side of a Dense kernel.
    (cfg(data=1, fsdp=4, tensor=2), (64, 32), ('embed', 'mlp'), P('fsdp', 'tensor')),
    # 3 input channels over 8 devices would not compile: that dimension stays whole.
    (cfg(data=1, fsdp=8), (3, 3, 3, 16), (None, None, 'conv_in', 'conv_out'), P()),
    (cfg(data=1, fsdp=8), (3, 3, 16, 16), (None, None, 'conv_in', 'conv_out'),
     P(None, None, 'fsdp')),
    # Size-1 mesh axes are dropped: a replicated run's specs are exactly P().
    (cfg(), (64, 32), ('embed', 'mlp'), P()),
    (cfg(data=1, tensor=8), (16, 10), ('embed', 'classes'), P()),
    # Unnamed (user module) matrices: the largest dimension the fsdp axis divides.
    (cfg(data=1, fsdp=8), (12, 40), None, P(None, 'fsdp')),
    (cfg(data=1, fsdp=8), (40, 12), None, P('fsdp')),
    (cfg(data=1, fsdp=8), (64,), None, P()),  # vectors stay replicated
])
def test_spec_for(mesh_cfg, shape, names, want):
    mesh = mesh_lib.make_mesh(mesh_cfg)
    assert mesh_lib.spec_for(mesh, shape, names, RULES) == want


def test_empty_rules_replicate_everything():
    mesh = mesh_lib.make_mesh(cfg(data=1, fsdp=8))
    assert mesh_lib.spec_for(mesh, (64, 32), ('embed', 'mlp'), ()) == P()
    assert mesh_lib.spec_for(mesh, (64, 32), None, ()) == P()


@pytest.mark.parametrize('rules,match', [
    ((('embed', 'model'),), r"student.sharding_rules\[0\]=\('embed', 'model'\): 'model' is "
                            r"not a mesh axis; use one of 'data', 'fsdp', 'tensor' or None"),
    ((('embed', ('fsdp', 'pipe')),), "'pipe' is not a mesh axis"),
    (('embed',), r'student.sharding_rules\[0\]=.* is not a \(logical name, mesh axis\) pair'),
])
def test_bad_rules_are_one_line_config_errors(rules, match):
    c = config_lib.base_config()
    c.student.sharding_rules = rules
    with pytest.raises(ConfigError, match=match) as e:
        config_lib.validate(c)
    assert '\n' not in str(e.value)


def _mlp(rules, hidden=(64, 64)):
    return Model(modules.resolve('mlp', dict(hidden=hidden), key='student.module'),
                 name='student', sharding_rules=mesh_lib.normalize_rules(rules))


def test_optimizer_state_is_sharded_like_its_params():
    mesh = mesh_lib.make_mesh(cfg(data=1, fsdp=4, tensor=2))
    model = _mlp(RULES)
    opt = train.make_optimizer(config_lib.base_config().optimizer, 10)
    abstract, shardings = train.abstract_state(model, opt, jax.random.key(0),
                                               jnp.zeros((1, 8, 8, 1)), mesh)
    params = jax.tree.map(lambda s: s.spec, shardings.params)
    assert params['dense0']['kernel'] == P('fsdp', 'tensor')
    assert params['head']['kernel'] == P('fsdp') and params['head']['bias'] == P()
    adam = [s for s in jax.tree.leaves(shardings.opt_state, is_leaf=lambda x: hasattr(x, 'mu'))
            if hasattr(s, 'mu')][0]
    for moment in (adam.mu, adam.nu):
        assert jax.tree.map(lambda s: s.spec, moment[0]) == params
    # The state holds plain arrays: what checkpoints and params_sha256 see.
    assert all(isinstance(x, jax.ShapeDtypeStruct) for x in jax.tree.leaves(abstract))


def test_teacher_fsdp_student_data_parallel():
    """One mesh, two rule sets: the teacher split over all 8 devices, the student whole."""
    mesh = mesh_lib.make_mesh(cfg(data=1, fsdp=-1))
    opt = train.make_optimizer(config_lib.base_config().optimizer, 10)
    sample = jnp.zeros((1, 8, 8, 1))
    _, teacher = train.abstract_state(_mlp(RULES), opt, jax.random.key(0), sample, mesh)
    _, student = train.abstract_state(_mlp(()), opt, jax.random.key(0), sample, mesh)
    assert teacher.params['dense1']['kernel'].spec == P('fsdp')
    assert all(s.spec == P() for s in jax.tree.leaves(student))


def _param_bytes(params) -> dict:
    """Bytes of ``params`` held by each device, from the arrays' real shards."""
    out = {}
    for leaf in jax.tree.leaves(params):
        for shard in leaf.addressable_shards:
            out[shard.device] = out.get(shard.device, 0) + shard.data.nbytes
    return out


def bytes_per_device(tree):
    """Bytes each device holds of ``tree`` (arrays or sharded ShapeDtypeStructs)."""
    out = {}
    for leaf in jax.tree.leaves(tree):
        shard = leaf.sharding.shard_shape(leaf.shape)
        size = math.prod(shard) * np.dtype(leaf.dtype).itemsize
        for device in leaf.sharding.device_set:
            out[device] = out.get(device, 0) + size
    return out


def test_fsdp_holds_an_eighth_of_the_parameters_per_device():
    """A 1.2M-parameter MLP: replicated, every device holds it all; fsdp=8, an eighth."""
    opt = train.make_optimizer(config_lib.base_config().optimizer, 10)
    sample = jnp.zeros((1, 32, 32, 1))
    model = _mlp(RULES, hidden=(1024, 128))
    per_device = {}
    for name, mesh_cfg in (('replicated', cfg()), ('fsdp', cfg(data=1, fsdp=8))):
        mesh = mesh_lib.make_mesh(mesh_cfg)
        state, _ = train.create_train_state(model, opt, jax.random.key(0), sample, mesh)
        per_device[name] = _param_bytes(state.params)
        if name == 'fsdp':
            abstract, _ = train.abstract_state(model, opt, jax.random.key(0), sample, mesh)
            assert bytes_per_device(abstract.params) == per_device[name]
    total = train.count_params(state.params) * 4
    assert set(per_device['replicated'].values()) == {total}
    ratio = max(per_device['fsdp'].values()) / total
    # Only the biases (1,162 of 1.18M values) stay whole on every device.
    assert 1 / 8 <= ratio < 1 / 8 * 1.01, ratio


# ---------------------------------------------------------------- one run, every layout

LAYOUTS = {'one': None, 'data': (8, 1, 1), 'fsdp': (1, 8, 1), 'data_x_tensor': (4, 1, 2)}
STEPS = 6


def smoke_config(data_dir, layout=(1, 1, 1), teacher=''):
    """configs/digits.py:smoke for ``STEPS`` steps, every loss logged, no baseline."""
    c = load_config('digits.py', 'smoke')
    c.data.data_dir = data_dir
    # A label term keeps the loss O(1), so a 1e-5 relative tolerance means something.
    c.distill.losses = (loss_entry('kd', weight=0.5, temperature=2.0),
                        loss_entry('ce', weight=0.5))
    c.teacher.steps = c.train.steps = c.train.checkpoint_every = STEPS
    c.train.log_every, c.train.eval_every, c.train.baseline = 1, 0, False
    c.teacher.checkpoint = teacher
    c.mesh.data, c.mesh.fsdp, c.mesh.tensor = layout
    return c


def stage_result(workdir: str, stage: str, config) -> tuple[np.ndarray, dict]:
    """(logged losses, final params as numpy) of one stage, read back from its checkpoint."""
    side = 'teacher' if stage == 'teacher' else 'student'
    model = Model(modules.resolve(config[side].module, config[side].kwargs, key=side))
    mesh = mesh_lib.make_mesh(cfg(), jax.devices()[:1])
    params, state = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    abstract, _ = mesh_lib.sharded_abstract(mesh, {'params': params, 'state': state})
    restored, source = ckpt_lib.load_model(f'{workdir}/{stage}', abstract)
    losses = np.array([h['loss'] for h in ckpt_lib.read_meta(f'{workdir}/{stage}')['history']
                       if 'loss' in h])
    assert source['step'] == STEPS and len(losses) == STEPS
    return losses, jax.tree.map(np.asarray, restored['params'])


def assert_same_run(got, want, rtol=1e-5):
    """Losses and every parameter within ``rtol`` (relative to the largest |value| of a
    tensor, so entries that happen to be ~0 do not divide by noise)."""
    np.testing.assert_allclose(got[0], want[0], rtol=rtol)
    for a, b in zip(jax.tree.leaves(got[1]), jax.tree.leaves(want[1])):
        np.testing.assert_allclose(a, b, rtol=0, atol=rtol * np.abs(b).max())


@pytest.fixture(scope='module')
def layouts(data_dir, tmp_path_factory):
    """The job once per layout; the 1-device run trains the teacher the others load."""
    out = {}
    for name, layout in LAYOUTS.items():
        workdir = str(tmp_path_factory.mktemp(name))
        teacher = '' if layout is None else out['one'][0]
        config = smoke_config(data_dir, layout or (1, 1, 1), teacher)
        devices = jax.devices()[:1] if layout is None else None
        out[name] = (workdir, config, run.train_and_evaluate(config, workdir, devices=devices))
    return out


@pytest.mark.parametrize('name', [n for n in LAYOUTS if n != 'one'])
def test_every_layout_trains_the_same_student(layouts, name):
    workdir, config, _ = layouts[name]
    want = stage_result(layouts['one'][0], 'student', layouts['one'][1])
    assert_same_run(stage_result(workdir, 'student', config), want)


def test_layouts_shard_the_teacher_they_load(layouts, data_dir):
    """The fsdp run restored the teacher straight into fsdp shardings."""
    workdir, config, results = layouts['fsdp']
    p = run.plan(config, workdir)
    teacher = run.load_teacher(p)
    specs = {s.sharding.spec for s in jax.tree.leaves(teacher['params'])}
    assert P('fsdp') in specs
    assert provenance.params_sha256(teacher['params']) == results['provenance'][
        'teacher_params_sha256'] == layouts['one'][2]['provenance']['teacher_params_sha256']
