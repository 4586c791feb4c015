"""jaxdistill/data: the offline digits builder, Grain batches, per-process shards."""

import ml_collections
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jaxdistill import config as config_lib
from jaxdistill import data as data_lib
from jaxdistill.errors import ConfigError, DataError


def data_cfg(data_dir, **kw):
    c = config_lib.base_config().data
    c.data_dir = data_dir
    c.update(kw)
    return c


@pytest.fixture(scope='module')
def digits(data_dir):
    return data_lib.load_splits(data_cfg(data_dir))


def test_digits_split(digits):
    from sklearn.datasets import load_digits

    assert (len(digits.train), len(digits.test)) == (1437, 360)
    assert digits.num_classes == 10
    rec = digits.train[0]
    assert rec['image'].shape == (8, 8, 1) and rec['image'].dtype == np.float32
    assert 0.0 <= rec['image'].min() and rec['image'].max() <= 1.0
    # Independent check: every test image is an sklearn digit with the same label.
    ref = load_digits()
    table = {ref.images[i].astype(np.float32).tobytes(): ref.target[i] for i in range(1797)}
    for i in range(0, 360, 37):
        r = digits.test[i]
        assert table[(r['image'][..., 0] * 16).round().astype(np.float32).tobytes()] == r['label']


def test_batches_deterministic_per_seed(digits):
    kw = dict(global_batch=32)
    a = data_lib.train_dataset(digits.train, seed=0, **kw)
    b = data_lib.train_dataset(digits.train, seed=0, **kw)
    c = data_lib.train_dataset(digits.train, seed=1, **kw)
    np.testing.assert_array_equal(a[7]['image'], b[7]['image'])
    assert not np.array_equal(a[7]['label'], c[7]['label'])
    assert a[0]['image'].shape == (32, 8, 8, 1) and a[0]['label'].dtype == np.int32


def test_epoch_covers_every_example_once(digits):
    ds = data_lib.train_dataset(digits.train, global_batch=1437, seed=3)
    first = ds[0]['image'].reshape(1437, -1)
    assert len({row.tobytes() for row in first}) == len(
        {digits.train[i]['image'].tobytes() for i in range(1437)})


def test_process_shards_partition_the_global_batch(digits):
    kw = dict(global_batch=32, seed=5)
    whole = data_lib.train_dataset(digits.train, **kw)[4]['image']
    parts = [data_lib.train_dataset(digits.train, process_index=p, process_count=2, **kw)[4]
             for p in range(2)]
    assert all(part['image'].shape[0] == 16 for part in parts)
    together = np.concatenate([part['image'] for part in parts]).reshape(32, -1)
    assert sorted(r.tobytes() for r in together) == sorted(
        r.tobytes() for r in whole.reshape(32, -1))
    with pytest.raises(ConfigError, match='not divisible by the 3 processes'):
        data_lib.train_dataset(digits.train, process_count=3, **kw)


def test_eval_batches_pad_and_mask(digits):
    batches = list(data_lib.eval_batches(digits.test, global_batch=128))
    assert len(batches) == 3 and all(b['image'].shape[0] == 128 for b in batches)
    assert sum(int(b['mask'].sum()) for b in batches) == 360


def test_flip_crop_keeps_shape(digits):
    ds = data_lib.train_dataset(digits.train, global_batch=8, seed=0, augment='flip_crop')
    plain = data_lib.train_dataset(digits.train, global_batch=8, seed=0)
    assert ds[0]['image'].shape == plain[0]['image'].shape
    np.testing.assert_array_equal(ds[0]['label'], plain[0]['label'])
    assert not np.array_equal(ds[0]['image'], plain[0]['image'])


def test_other_tfds_dataset_with_mock_data():
    with tfds.testing.mock_data(num_examples=64):
        splits = data_lib.load_splits(data_cfg('/nonexistent', name='mnist'))
        assert splits.num_classes == 10 and len(splits.train) == 64
        ds = data_lib.train_dataset(splits.train, global_batch=16, seed=0)
        batch = ds[0]
    assert batch['image'].shape == (16, 28, 28, 1) and batch['image'].dtype == np.float32
    assert batch['image'].max() <= 1.0


class ArraySource:
    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.x, self.y = rng.normal(size=(n, 4, 4, 1)).astype(np.float32), rng.integers(0, 3, n)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {'image': self.x[i], 'label': self.y[i]}


def arrays():
    return ArraySource(40), ArraySource(10)


def test_user_source():
    splits = data_lib.load_splits(data_cfg('', source=f'{__name__}:arrays'))
    assert len(splits.train) == 40 and splits.name.startswith('source:')


@pytest.mark.parametrize('kw,error,match', [
    (dict(name='digitz'), DataError, "did you mean 'digits'"),
    (dict(name='mnist'), DataError, 'not prepared.*tfds build mnist'),
    (dict(source='nope.mod:fn'), ConfigError, "data.source='nope.mod:fn' cannot be imported"),
    (dict(label_key='y'), DataError, "data.label_key='y'"),
])
def test_bad_data(tmp_path, data_dir, kw, error, match):
    d = data_dir if kw.get('name') is None else str(tmp_path)
    with pytest.raises(error, match=match):
        data_lib.load_splits(data_cfg(d, **kw))


def test_config_dict_type():
    assert isinstance(data_cfg(''), ml_collections.ConfigDict)


def test_labelled_subset_is_a_seeded_fraction(digits):
    a = data_lib.labelled_subset(1437, 0.1, seed=0)
    assert len(a) == 144 and len(set(a)) == 144 and np.all(np.diff(a) > 0)
    np.testing.assert_array_equal(a, data_lib.labelled_subset(1437, 0.1, seed=0))
    assert not np.array_equal(a, data_lib.labelled_subset(1437, 0.1, seed=1))
    np.testing.assert_array_equal(data_lib.labelled_subset(5, 1.0, 0), np.arange(5))
    assert len(data_lib.labelled_subset(5, 0.01, 0)) == 1


@pytest.mark.parametrize('in_memory', [True, False])
def test_baseline_rows_and_transfer_flags(digits, in_memory, data_dir):
    """The baseline's batches hold only labelled examples; the student's flag exactly those."""
    train = digits.train if in_memory else data_lib.load_splits(
        data_cfg(data_dir, cache_mb=0.0)).train
    ids = data_lib.labelled_subset(len(train), 0.25, seed=3)
    key = lambda image: image.tobytes()  # noqa: E731
    labelled = {key(train[int(i)]['image']) for i in ids}
    kw = dict(global_batch=64, seed=2)
    only = data_lib.train_dataset(data_lib.subset(train, ids), **kw)
    for step in (0, 9):
        assert all(key(x) in labelled for x in only[step]['image'])
    flagged = data_lib.train_dataset(train, labelled=ids, **kw)
    seen = 0
    for step in range(0, 40, 7):
        batch = flagged[step]
        assert batch['labelled'].dtype == bool
        want = np.array([key(x) in labelled for x in batch['image']])
        np.testing.assert_array_equal(batch['labelled'], want)
        seen += want.sum()
    assert 0.1 < seen / (6 * 64) < 0.4  # about a quarter of the rows are labelled


@pytest.mark.parametrize('n,batch', [(144, 64), (10, 64), (1437, 64), (7, 7)])
def test_epoch_order_against_reference(n, batch):
    """Batch ``s`` is positions [s*B, (s+1)*B) of the epochs' permutations laid end to end."""
    order = data_lib.pipeline.EpochOrder(n, batch, seed=4)
    epochs = 40 * batch // n + 2
    stream = np.concatenate([np.random.default_rng([4, e, order.SALT]).permutation(n)
                             for e in range(epochs)])
    for step in (0, 1, 2, 5, 17, 39, 3, 0):  # out of order too: the cache is not state
        np.testing.assert_array_equal(order[step], stream[step * batch:(step + 1) * batch])
    for e in range(3):
        np.testing.assert_array_equal(np.sort(stream[e * n:(e + 1) * n]), np.arange(n))
    assert not np.array_equal(order.epoch(0), order.epoch(1)) or n < 3
    other = data_lib.pipeline.EpochOrder(n, batch, seed=5)
    assert not np.array_equal(other[3], order[3]) or n < 3


def test_epoch_order_computes_each_epoch_once(monkeypatch):
    """What made a small split slow (one cipher walk per index, benchmarks/NOTES.md 14)
    is gone: 100 batches of a 144-example split permute each epoch once."""
    calls = []
    real = np.random.default_rng
    monkeypatch.setattr(np.random, 'default_rng', lambda key: calls.append(key) or real(key))
    order = data_lib.pipeline.EpochOrder(144, 64, seed=0)
    for step in range(100):
        order[step]
    assert calls == [[0, e, order.SALT] for e in range(100 * 64 // 144 + 1)]


def _shift_reference(image, offset, flip):
    """The per-image form (np.pad per example, as the pipeline did before batching it)."""
    if flip:
        image = np.flip(image, axis=-2)
    pad = max(1, image.shape[0] // 8)
    padded = np.pad(image, ((pad, pad),) * (image.ndim - 1) + ((0, 0),))
    window = tuple(slice(o, o + size) for o, size in zip(offset, image.shape[:-1]))
    return padded[window]


@pytest.mark.parametrize('shape,flip', [((8, 8, 1), True), ((32, 32, 3), False),
                                        ((32, 2), True), ((5, 4, 6, 2), False)])
def test_batched_shift_matches_per_image_reference(shape, flip):
    rng = np.random.default_rng(0)
    images = rng.normal(size=(16,) + shape).astype(np.float32)
    rows = np.arange(100, 116)
    offsets, flips = data_lib.pipeline.shift_params(7, rows, shape[:-1], flip)
    pad = max(1, shape[0] // 8)
    assert offsets.shape == (16, len(shape) - 1) and offsets.min() >= 0
    assert offsets.max() <= 2 * pad and (flips.any() if flip else not flips.any())
    out = data_lib.pipeline._shift(images, offsets, flips)
    for j in range(16):
        np.testing.assert_array_equal(out[j], _shift_reference(images[j], offsets[j], flips[j]))


def test_row_uniforms_are_uniform_and_per_row():
    u = data_lib.pipeline.row_uniforms(3, np.arange(20000), 3)
    assert u.shape == (20000, 3) and 0 <= u.min() and u.max() < 1
    counts = np.histogram(u[:, 0], bins=10, range=(0, 1))[0]
    assert np.all(np.abs(counts - 2000) < 200)  # 4.7 sigma of a binomial(20000, 0.1)
    assert abs(np.corrcoef(u[:, 0], u[:, 1])[0, 1]) < 0.03
    np.testing.assert_array_equal(data_lib.pipeline.row_uniforms(3, np.arange(5, 9), 3), u[5:9])
    assert not np.array_equal(data_lib.pipeline.row_uniforms(4, np.arange(5, 9), 3), u[5:9])


def test_augmented_rows_do_not_depend_on_the_process_count(digits):
    kw = dict(global_batch=32, seed=5, augment='flip_crop')
    whole = data_lib.train_dataset(digits.train, **kw)[4]['image']
    parts = [data_lib.train_dataset(digits.train, process_index=p, process_count=2, **kw)[4]
             for p in range(2)]
    np.testing.assert_array_equal(np.concatenate([p['image'] for p in parts]), whole)


def signal_records(n, key='signal', label_key='label'):
    rng = np.random.default_rng(n)
    return [{key: rng.normal(size=(32, 2)).astype(np.float32), label_key: int(rng.integers(4))}
            for _ in range(n)]


@pytest.mark.parametrize('cache_mb', [64.0, 0.0])
def test_examples_map_the_keys_once(cache_mb):
    """Records under other keys, cached in memory or read per batch, reach every consumer
    (the task's sample, training and evaluation batches) as {'image', 'label'}."""
    records = signal_records(40, 'signal', 'y')
    split = data_lib.pipeline.cache_in_memory(
        data_lib.pipeline.Examples(records, 'signal', 'y'), cache_mb)
    assert isinstance(split, data_lib.pipeline.ArraySource) == (cache_mb > 0)
    assert sorted(split[3]) == ['image', 'label']
    np.testing.assert_array_equal(split[3]['image'], records[3]['signal'])
    batch = data_lib.train_dataset(split, global_batch=8, seed=0, augment='crop')[2]
    assert batch['image'].shape == (8, 32, 2) and batch['label'].dtype == np.int32
    plain = data_lib.train_dataset(split, global_batch=8, seed=0)[2]
    ids = data_lib.pipeline.EpochOrder(40, 8, 0)[2]
    np.testing.assert_array_equal(plain['image'], np.stack([records[i]['signal'] for i in ids]))
    np.testing.assert_array_equal(plain['label'], [records[i]['y'] for i in ids])
    evals = list(data_lib.eval_batches(split, global_batch=16))
    np.testing.assert_array_equal(evals[0]['image'][5], records[5]['signal'])
    assert [int(b['mask'].sum()) for b in evals] == [16, 16, 8]
