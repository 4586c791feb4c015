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
    kw = dict(global_batch=32, image_key='image', label_key='label')
    a = data_lib.train_dataset(digits.train, seed=0, **kw)
    b = data_lib.train_dataset(digits.train, seed=0, **kw)
    c = data_lib.train_dataset(digits.train, seed=1, **kw)
    np.testing.assert_array_equal(a[7]['image'], b[7]['image'])
    assert not np.array_equal(a[7]['label'], c[7]['label'])
    assert a[0]['image'].shape == (32, 8, 8, 1) and a[0]['label'].dtype == np.int32


def test_epoch_covers_every_example_once(digits):
    ds = data_lib.train_dataset(digits.train, global_batch=1437, seed=3, image_key='image',
                                label_key='label')
    first = ds[0]['image'].reshape(1437, -1)
    assert len({row.tobytes() for row in first}) == len(
        {digits.train[i]['image'].tobytes() for i in range(1437)})


def test_process_shards_partition_the_global_batch(digits):
    kw = dict(global_batch=32, seed=5, image_key='image', label_key='label')
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
    batches = list(data_lib.eval_batches(digits.test, global_batch=128, image_key='image',
                                         label_key='label'))
    assert len(batches) == 3 and all(b['image'].shape[0] == 128 for b in batches)
    assert sum(int(b['mask'].sum()) for b in batches) == 360


def test_flip_crop_keeps_shape(digits):
    ds = data_lib.train_dataset(digits.train, global_batch=8, seed=0, image_key='image',
                                label_key='label', augment='flip_crop')
    plain = data_lib.train_dataset(digits.train, global_batch=8, seed=0, image_key='image',
                                   label_key='label')
    assert ds[0]['image'].shape == plain[0]['image'].shape
    np.testing.assert_array_equal(ds[0]['label'], plain[0]['label'])
    assert not np.array_equal(ds[0]['image'], plain[0]['image'])


def test_other_tfds_dataset_with_mock_data():
    with tfds.testing.mock_data(num_examples=64):
        splits = data_lib.load_splits(data_cfg('/nonexistent', name='mnist'))
        assert splits.num_classes == 10 and len(splits.train) == 64
        ds = data_lib.train_dataset(splits.train, global_batch=16, seed=0, image_key='image',
                                    label_key='label')
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
    kw = dict(global_batch=64, seed=2, image_key='image', label_key='label')
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
