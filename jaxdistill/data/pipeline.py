"""Random-access data: TFDS ArrayRecord (or a user function) -> Grain -> numpy batches.

Training batches are a `grain.MapDataset` indexed by step: batch ``s`` of a run is a
pure function of (source, seed, s), so a resumed run consumes exactly the examples an
uninterrupted one would. Each process reads only its own rows of every global batch
(``process_index::process_count``); together they read the same global batch as one
process would.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxdistill.errors import ConfigError, DataError, closest


@dataclasses.dataclass(frozen=True)
class Splits:
    train: Sequence[Any]
    test: Sequence[Any]
    num_classes: int | None
    name: str  # provenance: where the data came from


def data_dir(cfg) -> str:
    if cfg.data_dir:
        return os.path.expanduser(cfg.data_dir)
    return os.path.expanduser(os.environ.get('TFDS_DATA_DIR', '~/tensorflow_datasets'))


def load_splits(cfg) -> Splits:
    """Opens the train/test sources named by the ``data`` config block."""
    if cfg.source:
        return _user_source(cfg)
    import tensorflow_datasets as tfds

    ddir = data_dir(cfg)
    try:
        builder = tfds.builder(cfg.name, data_dir=ddir)
    except tfds.core.registered.DatasetNotFoundError:
        known = tfds.list_builders(with_community_datasets=False)
        from jaxdistill.errors import closest
        raise DataError(f"data.name={cfg.name!r} is not a TFDS dataset "
                        f"({closest(cfg.name, known)}); or set data.source='pkg.mod:fn'") from None
    if cfg.name == 'digits' and not builder.is_prepared():
        _prepare_offline(builder)
    prepared = builder.is_prepared()
    splits = builder.info.splits
    for key in ('train_split', 'test_split'):
        if prepared and cfg[key].split('[')[0] not in splits:
            raise DataError(f'data.{key}={cfg[key]!r} is not a split of {cfg.name!r} '
                            f'(it has {sorted(splits)})')
    try:
        train = builder.as_data_source(split=cfg.train_split)
        test = builder.as_data_source(split=cfg.test_split)
    except Exception as e:  # noqa: BLE001 - not prepared, or prepared as TFRecord
        if not prepared:
            raise DataError(
                f'data.name={cfg.name!r} is not prepared in data.data_dir={ddir!r}: prepare it '
                f'once with `tfds build {cfg.name} --file_format=array_record --data_dir={ddir}` '
                'on a machine with network, or point data.data_dir at a directory that has it'
            ) from None
        raise DataError(f'data.name={cfg.name!r} in {ddir!r} cannot be read without '
                        f'TensorFlow ({type(e).__name__}: {e}); rebuild it with '
                        '--file_format=array_record') from None
    features = builder.info.features
    label = features[cfg.label_key] if cfg.label_key in features else None
    num_classes = getattr(label, 'num_classes', None)
    for key in ('image_key', 'label_key'):
        if cfg[key] not in features:
            raise DataError(f'data.{key}={cfg[key]!r} is not a feature of {cfg.name!r} '
                            f'(it has {sorted(features)})')
    return Splits(train, test, num_classes, f'tfds:{cfg.name}/{builder.version}')


def _prepare_offline(builder) -> None:
    """Builds `digits` once as ArrayRecord; a crash leaves only TFDS's incomplete dir."""
    import contextlib
    import io

    import tensorflow_datasets as tfds

    print(f'preparing {builder.name} once as ArrayRecord in {builder.data_dir} ...', flush=True)
    tfds.disable_progress_bar()
    with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own banner
        builder.download_and_prepare(file_format='array_record')


def _user_source(cfg) -> Splits:
    mod_name, _, attr = cfg.source.partition(':')
    try:
        fn = getattr(importlib.import_module(mod_name), attr)
    except Exception as e:  # noqa: BLE001
        raise ConfigError(f'data.source={cfg.source!r} cannot be imported '
                          f"({type(e).__name__}: {e}); use 'pkg.mod:fn'") from None
    out = fn()
    if not (isinstance(out, (tuple, list)) and len(out) == 2):
        raise DataError(f'data.source={cfg.source!r} must return (train, test) sources')
    train, test = out
    num_classes = getattr(train, 'num_classes', None)
    for split in (train, test):
        if not (hasattr(split, '__len__') and hasattr(split, '__getitem__')) or not len(split):
            raise DataError(f'data.source={cfg.source!r}: each split must be a non-empty '
                            'random-access sequence of {image, label} records')
        rec = split[0]
        for key in (cfg.image_key, cfg.label_key):
            if key not in rec:
                raise DataError(f'data.source={cfg.source!r}: records have keys {sorted(rec)}, '
                                f'not {key!r}; set data.image_key / data.label_key')
    return Splits(train, test, num_classes, f'source:{cfg.source}')


def to_example(record: dict[str, Any], image_key: str, label_key: str) -> dict[str, np.ndarray]:
    image = np.asarray(record[image_key])
    if image.dtype == np.uint8:
        image = image.astype(np.float32) / 255.0
    return {'image': image.astype(np.float32), 'label': np.asarray(record[label_key], np.int32)}


def _flip_crop(example: dict[str, np.ndarray], rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Random horizontal flip and a random crop of the 4-pixel zero-padded image."""
    image = example['image']
    if rng.random() < 0.5:
        image = image[:, ::-1]
    h, w = image.shape[:2]
    padded = np.pad(image, ((4, 4), (4, 4), (0, 0)))
    y, x = rng.integers(0, 9, size=2)
    return {**example, 'image': np.ascontiguousarray(padded[y:y + h, x:x + w])}


def train_dataset(source: Sequence[Any], *, global_batch: int, seed: int, image_key: str,
                  label_key: str, augment: str = '', process_index: int = 0,
                  process_count: int = 1) -> grain.MapDataset:
    """This process's training batches: ``ds[step]`` is its rows of global batch ``step``."""
    if global_batch % process_count:
        raise ConfigError(f'data.batch_size={global_batch} is not divisible by the '
                          f'{process_count} processes: use a multiple of {process_count}')
    ds = grain.MapDataset.source(source).shuffle(seed=seed).repeat()
    ds = ds[process_index::process_count]
    ds = ds.map(lambda r: to_example(r, image_key, label_key))
    if augment == 'flip_crop':
        ds = ds.random_map(_flip_crop, seed=seed + 1)
    return ds.batch(global_batch // process_count, drop_remainder=True)


def eval_batches(source: Sequence[Any], *, global_batch: int, image_key: str, label_key: str,
                 process_index: int = 0, process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """The whole split once, in order, padded to full batches; ``mask`` marks real rows."""
    n = len(source)
    local = global_batch // process_count
    for start in range(0, n, global_batch):
        rows = []
        for j in range(local):
            i = start + j * process_count + process_index
            rows.append((to_example(source[min(i, n - 1)], image_key, label_key), i < n))
        batch = {k: np.stack([r[0][k] for r in rows]) for k in ('image', 'label')}
        batch['mask'] = np.array([r[1] for r in rows])
        yield batch
