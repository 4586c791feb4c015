"""Random-access data: TFDS ArrayRecord (or a user function) -> Grain -> numpy batches.

Training batches are a `grain.MapDataset` indexed by step: batch ``s`` of a run is a
pure function of (source, seed, s), so a resumed run consumes exactly the examples an
uninterrupted one would. Each process reads only its own rows of every global batch,
the contiguous block ``[p * B/P, (p + 1) * B/P)`` that its devices hold of the batch
axes; together they read the global batch one process would, in the same order.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib
import os
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import grain
import numpy as np

from jaxdistill.data import loader
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
    """Opens the train/test splits named by the ``data`` config block (cached if small).

    Their records read as ``{'image', 'label'}`` whatever ``data.image_key`` and
    ``data.label_key`` name them in the source (`Examples`): everything after this
    function sees only those two keys.
    """
    splits = _open_splits(cfg)

    def examples(split):
        return cache_in_memory(Examples(split, cfg.image_key, cfg.label_key), cfg.cache_mb)

    return dataclasses.replace(splits, train=examples(splits.train), test=examples(splits.test))


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


class Examples:
    """A split whose records read as ``{'image': float32, 'label': int32}``, whatever its
    source calls them: the one place ``data.image_key`` / ``data.label_key`` are applied.

    ``image`` is any array ``[..., C]``: an image ``[H, W, C]`` or a signal ``[L, C]``.
    """

    def __init__(self, source: Sequence[Any], image_key: str, label_key: str):
        self.source, self.image_key, self.label_key = source, image_key, label_key

    def __len__(self) -> int:
        return len(self.source)

    def __getitem__(self, i: int) -> dict[str, np.ndarray]:
        return to_example(self.source[int(i)], self.image_key, self.label_key)

    def __getitems__(self, ids: Sequence[int]) -> list[dict[str, np.ndarray]]:
        return [to_example(r, self.image_key, self.label_key) for r in _records(self.source, ids)]


def _mix(x: np.ndarray) -> np.ndarray:
    """SplitMix64's step (Steele et al. 2014) on uint64 arrays: a bijection whose outputs
    pass BigCrush for consecutive inputs."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> np.ndarray:
    with np.errstate(over='ignore'):
        key = _mix(np.full(1, seed % 2**64, np.uint64))
    key.flags.writeable = False  # shared by every call with this seed
    return key


def row_uniforms(seed: int, rows: np.ndarray, draws: int) -> np.ndarray:
    """``[len(rows), draws]`` uniforms in [0, 1), a pure function of (seed, global row,
    draw): every process draws a row's augmentation the same way, and a whole batch's
    draws are a few vector operations (a numpy ``Generator`` per row costs ~20 us to
    create, more than the rest of a small batch's augmentation)."""
    with np.errstate(over='ignore'):
        h = _mix(_seed_key(seed) ^ np.asarray(rows, np.uint64)[:, None])
        h = _mix(h ^ np.arange(draws, dtype=np.uint64)[None, :])
    return (h >> np.uint64(11)).astype(np.float64) * 2.0**-53


def shift_params(seed: int, rows: np.ndarray, spatial: tuple[int, ...],
                 flip: bool) -> tuple[np.ndarray, np.ndarray]:
    """Each row's random shift ``[B, len(spatial)]`` in ``[0, 2 * pad]`` and flip ``[B]``."""
    pad = max(1, spatial[0] // 8)
    u = row_uniforms(seed, rows, len(spatial) + 1)
    offsets = np.minimum((u[:, :-1] * (2 * pad + 1)).astype(np.int64), 2 * pad)
    flips = (u[:, -1] < 0.5) & flip
    return offsets, flips


def _shift(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray) -> np.ndarray:
    """Random shifts of a batch ``[B, *spatial, C]``: each row zero-padded by
    ``spatial[0] // 8`` (at least 1; 4 for CIFAR's 32x32, He et al. 2016) along every
    spatial axis and cropped back at its ``offsets``, after a flip of the last spatial axis
    (horizontal, for images) where ``flips``.

    One zero-filled buffer and one gather for the whole batch: a strided view of every
    window of the padded batch ``[B, 2 * pad + 1, ..., *spatial, C]``, indexed by (row,
    offsets). 2-3.5x faster than ``np.pad`` and a broadcast fancy index
    (benchmarks/input_pipeline.py ``producer``), which matters where the step is short (the
    digits job: ~3 ms).
    """
    spatial = images.shape[1:-1]
    pad = max(1, spatial[0] // 8)
    padded = np.zeros((len(images),) + tuple(s + 2 * pad for s in spatial) + images.shape[-1:],
                      images.dtype)
    inner = (slice(None),) + tuple(slice(pad, pad + s) for s in spatial)
    padded[inner] = images
    if flips.any():  # the zero border is symmetric: flipping the padded row is the same
        padded[flips] = padded[flips][..., ::-1, :]
    axes = padded.strides[1:-1]
    windows = np.ndarray((len(images),) + (2 * pad + 1,) * len(spatial) + images.shape[1:],
                         images.dtype, buffer=padded,
                         strides=padded.strides[:1] + axes + axes + padded.strides[-1:])
    return windows[(np.arange(len(images)),) + tuple(offsets.T)]


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
    # Batched reads (a TFDS / Grain ArrayRecord source reads them on a thread pool, which
    # matters on gs://). Their host memory was measured bounded, unlike the packed text
    # rows' (`packed.RecordFile`): 64 records of 30 KB at a time, RSS +28 MB after one pass
    # over 86 MB and +31 MB after twelve (1 GB), against +4 MB read one by one.
    ids = [int(i) for i in ids]
    if hasattr(source, '__getitems__'):
        try:
            return list(source.__getitems__(ids))
        except TypeError:  # tfds.testing.mock_data's __getitems__ has the wrong signature
            pass
    return [source[i] for i in ids]


def cache_in_memory(source: Sequence[Any], limit_mb: float) -> Sequence[Any]:
    """Decodes a split of examples once into arrays when it fits in ``limit_mb`` and
    shapes agree.

    Decoding a TFDS record costs ~0.3 ms; a small split (digits, CIFAR) read once is then
    batched by fancy indexing instead of per-record decoding every step.
    """
    n = len(source)
    if limit_mb <= 0 or n == 0:
        return source
    first = source[0]
    if n * first['image'].nbytes / 2**20 > limit_mb:
        return source
    examples = []
    for start in range(0, n, 1024):
        examples += _records(source, range(start, min(start + 1024, n)))
    if any(e['image'].shape != first['image'].shape for e in examples):
        return source  # variable-sized images are resized per batch instead
    return ArraySource({k: np.stack([e[k] for e in examples]) for k in ('image', 'label')})


def _examples(source: Sequence[Any], ids: np.ndarray) -> list[dict[str, np.ndarray]]:
    if isinstance(source, ArraySource):
        arrays = source.take(ids)
        return [{k: v[j] for k, v in arrays.items()} for j in range(len(ids))]
    return _records(source, ids)


def _stacked(source: Sequence[Any], ids: np.ndarray) -> dict[str, np.ndarray]:
    if isinstance(source, ArraySource):
        return source.take(ids)
    examples = _records(source, ids)
    return {k: np.stack([e[k] for e in examples]) for k in ('image', 'label')}


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


class EpochOrder:
    """The example indices of every global batch, ``order[step] -> [global_batch]``.

    Epoch ``e`` visits ``range(n)`` in the order ``default_rng([seed, e, SALT])``
    permutes it; epochs follow one another and batch ``s`` is positions
    ``[s * B, (s + 1) * B)`` of that endless sequence (a batch may straddle two epochs, or
    several when ``n < B``). A pure function of (n, B, seed, step): a resumed run reads
    what an uninterrupted one would, on any number of processes.

    Each epoch's permutation is computed once, O(n), and kept while batches read it. Grain's
    ``MapDataset.shuffle`` instead shuffles index by index with a cipher over a domain of
    several thousand values that it cycle-walks down to ``n``: ~200 us per index at n = 144
    against ~5 us at 10**5, so a small split's batches cost more than a large one's
    (benchmarks/NOTES.md 14).
    """

    SALT = 0x5EED

    def __init__(self, num_examples: int, global_batch: int, seed: int):
        if num_examples < 1:
            raise DataError('a training split has no examples')
        self.n, self.batch, self.seed = num_examples, global_batch, seed
        self._cache: dict[int, np.ndarray] = {}

    def __len__(self) -> int:
        return sys.maxsize // self.batch  # endless: stages index it by step

    def epoch(self, e: int) -> np.ndarray:
        """The order of epoch ``e`` (the last few are kept; thread-safe enough: a race
        computes the same array twice)."""
        order = self._cache.get(e)
        if order is None:
            order = np.random.default_rng([self.seed, e, self.SALT]).permutation(self.n)
            self._cache = {k: v for k, v in self._cache.items() if e - 2 <= k <= e + 2}
            self._cache[e] = order
        return order

    def __getitem__(self, step: int) -> np.ndarray:
        start = int(step) * self.batch
        parts, need = [], self.batch
        while need:
            e, offset = divmod(start, self.n)
            part = self.epoch(e)[offset:offset + need]
            parts.append(part)
            need -= len(part)
            start += len(part)
        return np.concatenate(parts)


def train_dataset(source: Sequence[Any], *, global_batch: int, seed: int, augment: str = '',
                  image_size: int = 0, process_index: int = 0, process_count: int = 1,
                  labelled: np.ndarray | None = None) -> grain.MapDataset | loader.WholeBatches:
    """This process's training batches: ``ds[step]`` is its rows of global batch ``step``;
    a `loader.WholeBatches` where they are made a whole batch at a time (no augmentation,
    or the shifts of ``crop`` / ``flip_crop``), else a Grain per-example pipeline.

    ``source`` holds ``{'image', 'label'}`` examples (`load_splits`). `EpochOrder` picks
    the example *indices* of every global batch, this process slices its share, and the
    records are fetched per batch; the cost of a batch does not depend on the size of
    the split. Augmentation draws from a generator seeded by ``(seed, global row)``, so a
    row is augmented the same way whatever the number of processes. ``labelled`` (sorted
    indices into ``source``) adds a boolean ``labelled`` column: the rows whose labels a
    label loss may read; the others are inputs the teacher scores (a transfer set).
    """
    if global_batch % process_count:
        raise ConfigError(f'data.batch_size={global_batch} is not divisible by the '
                          f'{process_count} processes: use a multiple of {process_count}')
    local = global_batch // process_count
    own = process_index * local  # where this process's rows start in every global batch
    order = EpochOrder(len(source), global_batch, seed)
    ids = grain.MapDataset.source(order)

    is_labelled = None
    if labelled is not None:
        is_labelled = np.zeros(len(source), bool)
        is_labelled[labelled] = True

    def fetch(step: int, batch_ids: np.ndarray) -> dict[str, np.ndarray]:
        rows = step * global_batch + own + np.arange(local)  # global rows
        return _made(np.asarray(batch_ids)[own:own + local], rows)

    def _made(batch_ids: np.ndarray, rows: np.ndarray) -> dict[str, np.ndarray]:
        batch = _stacked(source, batch_ids)
        if augment:
            batch['image'] = _shift(batch['image'], *shift_params(
                seed, rows, batch['image'].shape[1:-1], augment == 'flip_crop'))
        if is_labelled is not None:
            batch['labelled'] = is_labelled[batch_ids]
        return batch

    def many(first: int, count: int) -> list[dict[str, np.ndarray]]:
        """Batches ``first .. first + count - 1`` made by one call of each operation on
        their rows together: equal to `fetch`'s, row by row (each row's shift is drawn
        from its global row alone)."""
        steps = range(first, first + count)
        batch_ids = np.concatenate([np.asarray(order[s])[own:own + local] for s in steps])
        rows = np.concatenate([s * global_batch + own + np.arange(local) for s in steps])
        block = _made(batch_ids, rows)
        return [{k: v[i * local:(i + 1) * local] for k, v in block.items()}
                for i in range(count)]

    if augment in ('crop', 'flip_crop') or not (augment or image_size):
        one = _made(np.zeros(1, np.int64), np.zeros(1, np.int64))  # a row's bytes
        batch_bytes = local * sum(v.nbytes for v in one.values())
        return loader.WholeBatches(loader.BlockCache(many, batch_bytes),
                                   ids.map_with_index(fetch))

    def one(example: dict[str, np.ndarray], row: int) -> dict[str, np.ndarray]:
        if augment == 'inception_crop':
            return _inception_crop(example, np.random.default_rng([seed, row]), image_size)
        return center_crop(example, image_size)

    # Image by image: a Grain per-example pipeline (data/loader.py), run by data.workers.
    return loader.per_example_batches(source, loader.ProcessRows(ids, global_batch, local, own),
                                      one, is_labelled)


def eval_batches(source: Sequence[Any], *, global_batch: int, image_size: int = 0,
                 process_index: int = 0,
                 process_count: int = 1) -> Iterator[dict[str, np.ndarray]]:
    """The whole split once, in order, padded to full batches; ``mask`` marks real rows."""
    n = len(source)
    local = global_batch // process_count
    for start in range(0, n, global_batch):
        rows = start + np.arange(local) * process_count + process_index
        examples = _examples(source, np.minimum(rows, n - 1))
        if image_size:
            examples = [center_crop(e, image_size) for e in examples]
        batch = {k: np.stack([e[k] for e in examples]) for k in ('image', 'label')}
        batch['mask'] = rows < n
        yield batch
