"""Random-access data: TFDS ArrayRecord (or a user function) -> Grain -> numpy batches.

Training batches are a `grain.MapDataset` indexed by step: batch ``s`` of a run is a
pure function of (source, seed, s), so a resumed run consumes exactly the examples an
uninterrupted one would. Each process reads only its own rows of every global batch,
the contiguous block ``[p * B/P, (p + 1) * B/P)`` that its devices hold of the batch
axes; together they read the global batch one process would, in the same order.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxdistill.errors import ConfigError, DataError


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
    """Opens the train/test sources named by the ``data`` config block (cached if small)."""
    splits = _open_splits(cfg)
    kw = dict(image_key=cfg.image_key, label_key=cfg.label_key, limit_mb=cfg.cache_mb)
    return dataclasses.replace(splits, train=cache_in_memory(splits.train, **kw),
                               test=cache_in_memory(splits.test, **kw))


def _open_splits(cfg) -> Splits:
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
        prepare_offline(builder)
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


def prepare_offline(builder) -> None:
    """Builds an offline TFDS dataset (`digits`, `pytext`, `pysentences`) once as
    ArrayRecord; a crash leaves only TFDS's incomplete dir."""
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


def _crop(example: dict[str, np.ndarray], rng: np.random.Generator,
          flip: bool = False) -> dict[str, np.ndarray]:
    """Random shift: a crop of the image zero-padded by H/8 pixels (4 for CIFAR's 32x32,
    He et al. 2016), with a random horizontal flip if ``flip`` (not for digits!)."""
    image = example['image']
    if flip and rng.random() < 0.5:
        image = image[:, ::-1]
    h, w = image.shape[:2]
    pad = max(1, h // 8)
    padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)))
    y, x = rng.integers(0, 2 * pad + 1, size=2)
    return {**example, 'image': np.ascontiguousarray(padded[y:y + h, x:x + w])}


def _resize(image: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of an HWC float image in [0, 1] (Pillow, per channel)."""
    from PIL import Image

    h, w = size
    channels = [np.asarray(Image.fromarray(image[..., c]).resize((w, h), Image.BILINEAR))
                for c in range(image.shape[-1])]
    return np.stack(channels, axis=-1).astype(np.float32)


def _inception_crop(example: dict[str, np.ndarray], rng: np.random.Generator,
                    size: int) -> dict[str, np.ndarray]:
    """Random-resized crop (8-100 % area, aspect 3/4-4/3; Szegedy et al. 2015) + flip."""
    image = example['image']
    h, w = image.shape[:2]
    for _ in range(10):
        area = h * w * rng.uniform(0.08, 1.0)
        aspect = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        ch, cw = int(round(np.sqrt(area / aspect))), int(round(np.sqrt(area * aspect)))
        if 0 < ch <= h and 0 < cw <= w:
            y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
            break
    else:
        ch, cw, y, x = h, w, 0, 0
    crop = image[y:y + ch, x:x + cw]
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    return {**example, 'image': _resize(np.ascontiguousarray(crop), (size, size))}


def center_crop(example: dict[str, np.ndarray], size: int) -> dict[str, np.ndarray]:
    """Evaluation view: shorter side to ``size * 8 / 7`` (256 for 224), centre ``size`` crop."""
    image = example['image']
    h, w = image.shape[:2]
    scale = size * 8 / 7 / min(h, w)
    nh, nw = max(size, int(round(h * scale))), max(size, int(round(w * scale)))
    image = _resize(image, (nh, nw))
    y, x = (nh - size) // 2, (nw - size) // 2
    return {**example, 'image': image[y:y + size, x:x + size]}


class ArraySource:
    """A split decoded once into numpy arrays (``image``, ``label``): random access is free."""

    def __init__(self, arrays: dict[str, np.ndarray]):
        self.arrays = arrays

    def __len__(self) -> int:
        return len(self.arrays['label'])

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return {k: v[i] for k, v in self.arrays.items()}

    def take(self, ids: np.ndarray) -> dict[str, np.ndarray]:
        return {k: v[ids] for k, v in self.arrays.items()}


def _records(source: Sequence[Any], ids: Sequence[int]) -> list[Any]:
    ids = [int(i) for i in ids]
    if hasattr(source, '__getitems__'):
        try:
            return list(source.__getitems__(ids))
        except TypeError:  # tfds.testing.mock_data's __getitems__ has the wrong signature
            pass
    return [source[i] for i in ids]


def cache_in_memory(source: Sequence[Any], *, image_key: str, label_key: str,
                    limit_mb: float) -> Sequence[Any]:
    """Decodes a split once into arrays when it fits in ``limit_mb`` and shapes agree.

    Decoding a TFDS record costs ~0.3 ms; a small split (digits, CIFAR) read once is then
    batched by fancy indexing instead of per-record decoding every step.
    """
    n = len(source)
    if limit_mb <= 0 or n == 0:
        return source
    first = to_example(source[0], image_key, label_key)
    if n * first['image'].nbytes / 2**20 > limit_mb:
        return source
    examples = []
    for start in range(0, n, 1024):
        examples += [to_example(r, image_key, label_key)
                     for r in _records(source, range(start, min(start + 1024, n)))]
    if any(e['image'].shape != first['image'].shape for e in examples):
        return source  # variable-sized images are resized per batch instead
    return ArraySource({k: np.stack([e[k] for e in examples]) for k in ('image', 'label')})


def _examples(source: Sequence[Any], ids: np.ndarray, image_key: str,
              label_key: str) -> list[dict[str, np.ndarray]]:
    if isinstance(source, ArraySource):
        arrays = source.take(ids)
        return [{k: v[j] for k, v in arrays.items()} for j in range(len(ids))]
    return [to_example(r, image_key, label_key) for r in _records(source, ids)]


def labelled_subset(num_examples: int, fraction: float, seed: int) -> np.ndarray:
    """The sorted indices of the ``fraction`` of a split whose labels the students may use.

    A seeded uniform draw over indices (no record is read, so it scales to any split);
    at least one example. ``fraction=1`` keeps every index.
    """
    if fraction >= 1.0:
        return np.arange(num_examples)
    count = max(1, int(round(fraction * num_examples)))
    order = np.random.default_rng([seed, 0x1abe1]).permutation(num_examples)
    return np.sort(order[:count])


class Subset:
    """Random access to ``source[ids[i]]``: a split restricted to some of its examples."""

    def __init__(self, source: Sequence[Any], ids: np.ndarray):
        self.source, self.ids = source, np.asarray(ids)

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> Any:
        return self.source[int(self.ids[i])]


def subset(source: Sequence[Any], ids: np.ndarray) -> Sequence[Any]:
    """``source`` restricted to ``ids``; in-memory splits stay in-memory arrays."""
    if isinstance(source, ArraySource):
        return ArraySource(source.take(np.asarray(ids)))
    return Subset(source, ids)


def train_dataset(source: Sequence[Any], *, global_batch: int, seed: int, image_key: str,
                  label_key: str, augment: str = '', image_size: int = 0, process_index: int = 0,
                  process_count: int = 1, labelled: np.ndarray | None = None) -> grain.MapDataset:
    """This process's training batches: ``ds[step]`` is its rows of global batch ``step``.

    Grain shuffles example *indices* (a new permutation every epoch) and slices this
    process's share; the records are fetched per batch. Augmentation draws from a
    generator seeded by ``(seed, global row)``, so a row is augmented the same way
    whatever the number of processes. ``labelled`` (sorted indices into ``source``) adds
    a boolean ``labelled`` column: the rows whose labels a label loss may read; the
    others are images the teacher scores (a transfer set).
    """
    if global_batch % process_count:
        raise ConfigError(f'data.batch_size={global_batch} is not divisible by the '
                          f'{process_count} processes: use a multiple of {process_count}')
    local = global_batch // process_count
    ids = grain.MapDataset.range(len(source)).shuffle(seed=seed).repeat()
    ids = ids.batch(global_batch, drop_remainder=True)  # sliced per process in `fetch`
    own = process_index * local  # where this process's rows start in every global batch

    is_labelled = None
    if labelled is not None:
        is_labelled = np.zeros(len(source), bool)
        is_labelled[labelled] = True

    def fetch(step: int, batch_ids: np.ndarray) -> dict[str, np.ndarray]:
        batch_ids = np.asarray(batch_ids)[own:own + local]
        batch = _fetch(step, batch_ids)
        if is_labelled is not None:
            batch['labelled'] = is_labelled[batch_ids]
        return batch

    def _fetch(step: int, batch_ids: np.ndarray) -> dict[str, np.ndarray]:
        if isinstance(source, ArraySource) and not (augment or image_size):
            return source.take(batch_ids)
        examples = _examples(source, batch_ids, image_key, label_key)
        out = []
        for j, example in enumerate(examples):
            row = step * global_batch + own + j
            rng = np.random.default_rng([seed, row])
            if augment in ('crop', 'flip_crop'):
                example = _crop(example, rng, flip=augment == 'flip_crop')
            elif augment == 'inception_crop':
                example = _inception_crop(example, rng, image_size)
            elif image_size:
                example = center_crop(example, image_size)
            out.append(example)
        return {k: np.stack([e[k] for e in out]) for k in ('image', 'label')}

    return ids.map_with_index(fetch)


def eval_batches(source: Sequence[Any], *, global_batch: int, image_key: str, label_key: str,
                 image_size: int = 0, process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """The whole split once, in order, padded to full batches; ``mask`` marks real rows."""
    n = len(source)
    local = global_batch // process_count
    for start in range(0, n, global_batch):
        rows = []
        for j in range(local):
            i = start + j * process_count + process_index
            example = _examples(source, np.array([min(i, n - 1)]), image_key, label_key)[0]
            if image_size:
                example = center_crop(example, image_size)
            rows.append((example, i < n))
        batch = {k: np.stack([r[0][k] for r in rows]) for k in ('image', 'label')}
        batch['mask'] = np.array([r[1] for r in rows])
        yield batch
