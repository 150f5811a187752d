"""Segmentation input pipelines and ``get_dataset`` (the dataset interface of docs/CONTRACTS.md).

``config.dataset_name`` (the ``projects.registry`` name, default ``ade20k``) selects the tfds dataset
(``datasets.DATASETS``: ``ade20k``, ``cityscapes``, your own ``segmentation_folder``); images and masks are
decoded and the masks mapped to label codes (0 = ignore, c + 1 = class c; ADE20K's raw values) as that table
says, and everything below is the same for every dataset.

Training follows the official CrossFormer/mmseg recipe (``transforms.train_transform``): random rescale of
``scale`` by ``ratio_range``, random crop with ``cat_max_ratio``, flip, PhotoMetricDistortion, normalisation,
padding to ``crop_size``. It is deterministic and resumable: process ``p`` of ``P`` reads the contiguous
slice ``[N*p/P, N*(p+1)/P)`` of the train split (in its stored, pre-shuffled order), each epoch ``e`` of that
slice is shuffled with a seed derived from ``(seed, e)``, and each example is augmented with stateless ops
keyed by ``(seed, e, example index)``. Step ``s`` therefore always holds the same examples with the same
augmentation, and ``train_iter_fn(s)`` starts there directly (it only re-reads the records of the current
epoch before position ``s``, without decoding them).

Evaluation keeps every image at its own aspect ratio: ``AlignResize`` (``eval_scale``, keep ratio, sizes
rounded up to ``size_divisor``), then zero padding (label -1) to the smallest of a fixed set of shape buckets
that holds it, so the model compiles one program per bucket. Batches hold one bucket each; the last batch of a
bucket is completed with filler examples (``batch_mask`` 0). With several processes every process sees the
same sequence of bucket batches and takes its share of each global batch. Eval batches also carry each
annotation at its original size (``orig_label``, padded into a per-bucket canvas), so that the evaluator
scores as mmseg does: predictions resized back to the original size (``projects.segmentation.train``).

Batches are dicts of numpy arrays: ``inputs`` float32 (B, H, W, 3), ``label`` int32 (B, H, W) with classes
0..K-1 and -1 = ignore, ``batch_mask`` float32 (B,), and for evaluation ``image_size`` int32 (B, 2), the valid
(h, w) region, ``orig_label`` uint8 (B, Hc, Wc), the annotation at its original size as label codes (0 =
ignore, k = class k - 1, ADE20K's raw values; 0 in the padding) and ``orig_size`` int32 (B, 2), its (h, w);
fillers have size 0.
"""

import math
from typing import Any, Iterator, NamedTuple, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from projects.common import guards
from projects.common.dataset import Batch, Dataset
from projects.segmentation.data import ade20k_classes
from projects.segmentation.data import datasets
from projects.segmentation.data import transforms

DATASET_NAME = "ade20k"  # config.dataset_name when the config names none
# Landscape long sides (times the short side) of the default eval buckets; portrait buckets mirror them.
DEFAULT_EVAL_BUCKET_ASPECT_RATIOS = (1.0, 4 / 3, 1.5, 2.0)
_SKIP_IMAGES = {"image": tfds.decode.SkipDecoding(), "segmentation": tfds.decode.SkipDecoding()}
# Records are read in their stored order; no auto-cache (a resumed or stopped run reads epochs partially).
_READ_CONFIG = tfds.ReadConfig(try_autocache=False)
_SHUFFLE_STREAM, _AUGMENT_STREAM = 0, 1
_MAX_EPOCHS = 2 ** 40




def default_dataset_config() -> ml_collections.ConfigDict:
  """``config.dataset`` of the official recipe; ``get_dataset`` fills keys missing from a config from it.

  Keys: ``data_dir`` (tfds data dir; None
  = tfds's default), ``num_classes`` (150 for ADE20K; for other datasets None = the dataset's class count,
  or that count), ``scale`` / ``ratio_range`` (train Resize), ``crop_size`` (h, w), ``cat_max_ratio``,
  ``flip_prob``, ``photometric_distortion``, ``shuffle_buffer_size`` (records, per process),
  ``eval_scale`` / ``size_divisor`` (test AlignResize), ``eval_buckets`` (None = ``default_eval_buckets``, or
  a list of (h, w) multiples of ``size_divisor``). Batch sizes are ``config.batch_size`` and
  ``config.eval_batch_size`` (global; default: ``batch_size``), the seed ``config.rng_seed``.
  """
  return ml_collections.ConfigDict({
      "data_dir": None,
      "num_classes": ade20k_classes.NUM_CLASSES,
      "scale": (2048, 512),
      "ratio_range": (0.5, 2.0),
      "crop_size": (512, 512),
      "cat_max_ratio": 0.75,
      "flip_prob": 0.5,
      "photometric_distortion": True,
      "shuffle_buffer_size": 2048,
      "eval_scale": (2048, 512),
      "size_divisor": 32,
      "eval_buckets": None,
  })


def _align(x: float, divisor: int) -> int:
  return int(math.ceil(x / divisor)) * divisor


def default_eval_buckets(eval_scale: Sequence[int], size_divisor: int,
                         aspect_ratios: Sequence[float] = DEFAULT_EVAL_BUCKET_ASPECT_RATIOS
                         ) -> Tuple[Tuple[int, int], ...]:
  """Landscape and portrait bucket shapes for ``AlignResize(eval_scale, size_divisor)`` outputs.

  The short side is ``min(eval_scale)`` and the long sides are ``aspect_ratio * short`` for each ratio, plus
  ``max(eval_scale)`` so every image fits; all rounded up to ``size_divisor``. For (2048, 512) / 32:
  (512, 512), (512, 704), (512, 768), (512, 1024), (512, 2048) and the transposed portrait shapes.
  """
  short, longest = _align(min(eval_scale), size_divisor), _align(max(eval_scale), size_divisor)
  longs = sorted({min(_align(min(eval_scale) * r, size_divisor), longest) for r in aspect_ratios} | {longest})
  return tuple([(short, side) for side in longs] + [(side, short) for side in longs if side != short])


class _Settings(NamedTuple):
  name: str
  num_classes: Optional[int]
  data_dir: Optional[str]
  scale: Tuple[int, int]
  ratio_range: Tuple[float, float]
  crop_size: Tuple[int, int]
  cat_max_ratio: float
  flip_prob: float
  photometric_distortion: bool
  shuffle_buffer_size: int
  eval_scale: Tuple[int, int]
  size_divisor: int
  eval_buckets: Tuple[Tuple[int, int], ...]


def _pair(value: Any, key: str, kind: type = int) -> tuple:
  if not isinstance(value, (list, tuple)) or len(value) != 2 or any(kind(v) <= 0 for v in value):
    raise ValueError(f"config.dataset.{key} must be two positive numbers, got {value!r}")
  return tuple(kind(v) for v in value)


def _settings(config: ml_collections.ConfigDict) -> _Settings:
  """``config.dataset`` over the defaults, validated."""
  defaults = default_dataset_config()
  # An earlier run's config names the dataset in dataset.name (guards.upgrade_legacy_config).
  upgraded = guards.upgrade_legacy_config({"dataset_name": config.get("dataset_name") or DATASET_NAME,
                                           "dataset": config.get("dataset", ml_collections.ConfigDict()).to_dict()})
  name, given = upgraded["dataset_name"], upgraded["dataset"]
  unknown = sorted(set(given.keys()) - set(defaults.keys()))
  if unknown:
    raise ValueError(f"unknown config.dataset keys {unknown}; known: {sorted(defaults.keys())}")
  cfg = {**defaults.to_dict(), **given}
  datasets.get(name)
  if name == DATASET_NAME and cfg["num_classes"] != ade20k_classes.NUM_CLASSES:
    raise ValueError(f"config.dataset.num_classes must be {ade20k_classes.NUM_CLASSES} for ADE20K, "
                     f"got {cfg['num_classes']}")
  if cfg["num_classes"] is not None and int(cfg["num_classes"]) < 1:
    raise ValueError(f"config.dataset.num_classes must be positive (or None: the dataset's), "
                     f"got {cfg['num_classes']}")
  ratio_range = _pair(cfg["ratio_range"], "ratio_range", float)
  if ratio_range[0] > ratio_range[1]:
    raise ValueError(f"config.dataset.ratio_range must be (low, high) with low <= high, got {ratio_range}")
  if not 0.0 < cfg["cat_max_ratio"] <= 1.0:
    raise ValueError(f"config.dataset.cat_max_ratio must be in (0, 1], got {cfg['cat_max_ratio']}")
  if not 0.0 <= cfg["flip_prob"] <= 1.0:
    raise ValueError(f"config.dataset.flip_prob must be in [0, 1], got {cfg['flip_prob']}")
  if int(cfg["shuffle_buffer_size"]) < 1 or int(cfg["size_divisor"]) < 1:
    raise ValueError("config.dataset.shuffle_buffer_size and size_divisor must be positive, got "
                     f"{cfg['shuffle_buffer_size']} and {cfg['size_divisor']}")
  eval_scale, divisor = _pair(cfg["eval_scale"], "eval_scale"), int(cfg["size_divisor"])
  if cfg["eval_buckets"] is None:
    buckets = default_eval_buckets(eval_scale, divisor)
  else:
    buckets = tuple(_pair(b, "eval_buckets[...]") for b in cfg["eval_buckets"])
    _check_buckets(buckets, eval_scale, divisor)
  return _Settings(
      name=name, num_classes=None if cfg["num_classes"] is None else int(cfg["num_classes"]),
      data_dir=cfg["data_dir"], scale=_pair(cfg["scale"], "scale"), ratio_range=ratio_range,
      crop_size=_pair(cfg["crop_size"], "crop_size"), cat_max_ratio=float(cfg["cat_max_ratio"]),
      flip_prob=float(cfg["flip_prob"]), photometric_distortion=bool(cfg["photometric_distortion"]),
      shuffle_buffer_size=int(cfg["shuffle_buffer_size"]), eval_scale=eval_scale, size_divisor=divisor,
      eval_buckets=buckets)


def _check_buckets(buckets: Sequence[Tuple[int, int]], eval_scale: Sequence[int], divisor: int) -> None:
  """Bucket sides must be multiples of ``divisor`` and the largest possible outputs must fit somewhere."""
  for h, w in buckets:
    if h % divisor or w % divisor:
      raise ValueError(f"config.dataset.eval_buckets: ({h}, {w}) is not a multiple of size_divisor={divisor}")
  short, longest = _align(min(eval_scale), divisor), _align(max(eval_scale), divisor)
  for need in ((short, longest), (longest, short)):
    if not any(h >= need[0] and w >= need[1] for h, w in buckets):
      raise ValueError(f"config.dataset.eval_buckets {list(buckets)} has no bucket holding {need}, the "
                       f"largest {'landscape' if need[1] > need[0] else 'portrait'} AlignResize output for "
                       f"eval_scale={tuple(eval_scale)}; add one (or use eval_buckets=None)")


def _local_batch_size(config: ml_collections.ConfigDict, key: str, process_count: int) -> int:
  global_size = config.get(key) if key == "batch_size" else config.get(key, config.get("batch_size"))
  if global_size is None or int(global_size) < 1:
    raise ValueError(f"config.{key} must be a positive global batch size, got {global_size!r}")
  if int(global_size) % process_count:
    raise ValueError(f"config.{key}={global_size} does not split over {process_count} processes")
  return int(global_size) // process_count


def load_builder(data_dir: Optional[str], name: str = DATASET_NAME) -> tfds.core.DatasetBuilder:
  """The prepared builder of dataset ``name``; raises ``FileNotFoundError`` with the command if missing."""
  return datasets.load_builder(name, data_dir)


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _stream_seed(seed: int, stream: int) -> tf.Tensor:
  return tf.constant([seed, stream], tf.int64)


def train_dataset(builder: tfds.core.DatasetBuilder, settings: _Settings, *, seed: int, start_step: int,
                  batch_size: int, process_index: int, process_count: int) -> tf.data.Dataset:
  """This process's training batches from ``start_step`` on (infinite; see the module docstring)."""
  num_examples = builder.info.splits["train"].num_examples
  low = num_examples * process_index // process_count
  high = num_examples * (process_index + 1) // process_count
  if high == low:
    raise ValueError(f"process {process_index} of {process_count} gets no training example "
                     f"(the train split has {num_examples})")
  records = builder.as_dataset(split=f"train[{low}:{high}]", shuffle_files=False, decoders=_SKIP_IMAGES,
                               read_config=_READ_CONFIG)
  records = records.map(lambda ex: (ex["image"], ex["segmentation"])).enumerate(start=low)
  start_epoch, offset = divmod(start_step * batch_size, high - low)
  shuffle_seed, augment_seed = _stream_seed(seed, _SHUFFLE_STREAM), _stream_seed(seed, _AUGMENT_STREAM)
  decode = datasets.decoder(settings.name, builder)

  def epoch(e):
    epoch_seed = tf.random.stateless_uniform([], tf.random.experimental.stateless_fold_in(shuffle_seed, e),
                                             minval=None, maxval=None, dtype=tf.int64)
    shuffled = records.shuffle(settings.shuffle_buffer_size, seed=epoch_seed)
    return shuffled.map(lambda index, example: (e, index, example))

  def preprocess(e, index, example):
    key = tf.random.experimental.stateless_fold_in(
        tf.random.experimental.stateless_fold_in(augment_seed, e), index)
    inputs, label = transforms.train_transform(
        *decode(example[0], example[1]), key,
        scale=settings.scale, ratio_range=settings.ratio_range, crop_size=settings.crop_size,
        cat_max_ratio=settings.cat_max_ratio, flip_prob=settings.flip_prob,
        photometric=settings.photometric_distortion)
    return {"inputs": inputs, "label": label, "batch_mask": tf.constant(1.0)}

  ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch).skip(offset)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  return _deterministic(ds.batch(batch_size, drop_remainder=True).prefetch(2))


def original_canvases(assigned: tf.data.Dataset, num_buckets: int, divisor: int) -> np.ndarray:
  """(num_buckets, 2) int32: per eval bucket, the largest original (h, w) of its images rounded up to
  ``divisor`` (at least ``divisor``): the padded shape of the batches' ``orig_label``. Reads only the JPEG/PNG
  headers of ``assigned`` = ``(bucket, image bytes, label bytes)`` records."""
  canvases = np.full((num_buckets, 2), divisor, np.int64)
  shapes = assigned.map(lambda bucket, image, _: (bucket, datasets.encoded_image_shape(image)),
                        num_parallel_calls=tf.data.AUTOTUNE)
  for bucket, shape in tfds.as_numpy(shapes):
    canvases[bucket] = np.maximum(canvases[bucket], -(-shape // divisor) * divisor)
  return canvases.astype(np.int32)


def eval_dataset(builder: tfds.core.DatasetBuilder, settings: _Settings, *, batch_size: int,
                 process_index: int, process_count: int) -> tf.data.Dataset:
  """One pass over the validation split in bucketed batches of this process's ``batch_size``."""
  buckets = tf.constant(settings.eval_buckets, tf.int32)
  global_batch = batch_size * process_count
  records = builder.as_dataset(split="validation", shuffle_files=False, decoders=_SKIP_IMAGES,
                               read_config=_READ_CONFIG)
  decode = datasets.decoder(settings.name, builder)

  def assign_bucket(example):
    shape = datasets.encoded_image_shape(example["image"])
    height, width = transforms.align_resize_size(shape[0], shape[1], settings.eval_scale,
                                                 settings.size_divisor)
    fits = (height <= buckets[:, 0]) & (width <= buckets[:, 1])
    area = tf.where(fits, buckets[:, 0] * buckets[:, 1], tf.int32.max)
    return tf.argmin(area, output_type=tf.int64), example["image"], example["segmentation"]

  canvases = tf.constant(original_canvases(records.map(assign_bucket), len(settings.eval_buckets),
                                            settings.size_divisor), tf.int32)

  def preprocess(bucket):
    bucket_shape, canvas = buckets[bucket], canvases[bucket]

    def fn(_, image, segmentation):
      image, raw_label = decode(image, segmentation)
      inputs, label = transforms.eval_transform(
          image, raw_label, scale=settings.eval_scale, size_divisor=settings.size_divisor)
      image_size = tf.shape(label)
      inputs, label = transforms.pad_to(inputs, label, tf.unstack(bucket_shape))
      # The annotation at its original size, for mmseg's scoring (label codes: 0 = ignore, also the padding).
      orig_label = raw_label[:canvas[0], :canvas[1], 0]
      orig_size = tf.shape(orig_label)
      orig_label = tf.pad(orig_label, [[0, canvas[0] - orig_size[0]], [0, canvas[1] - orig_size[1]]])
      return {"inputs": inputs, "label": label, "batch_mask": tf.constant(1.0), "image_size": image_size,
              "orig_label": orig_label, "orig_size": orig_size}
    return fn

  def filler(bucket):
    bucket_shape = buckets[bucket]
    return {"inputs": tf.zeros(tf.concat([bucket_shape, [3]], 0), tf.float32),
            "label": tf.fill(bucket_shape, transforms.IGNORE_LABEL),
            "batch_mask": tf.constant(0.0), "image_size": tf.zeros([2], tf.int32),
            "orig_label": tf.zeros(canvases[bucket], tf.uint8), "orig_size": tf.zeros([2], tf.int32)}

  def batch_window(bucket, window):
    # ``window`` is up to one global batch of this bucket, identical on every process.
    mine = window.skip(process_index * batch_size).take(batch_size)
    mine = mine.map(preprocess(bucket), num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    fillers = tf.data.Dataset.from_tensors(filler(bucket)).repeat(batch_size)
    return mine.concatenate(fillers).take(batch_size).batch(batch_size)

  ds = records.map(assign_bucket).group_by_window(
      key_func=lambda bucket, *_: bucket, reduce_func=batch_window, window_size=global_batch)
  return _deterministic(ds.prefetch(2))


def get_dataset(config: ml_collections.ConfigDict, *, process_index: Optional[int] = None,
                process_count: Optional[int] = None) -> Dataset:
  """The ``Dataset(train_iter_fn, eval_iter_fn, meta_data)`` of ``config.dataset_name`` as ``config`` says.

  Args:
    config: the job config: ``dataset_name`` (a key of ``datasets.DATASETS``; default ``ade20k``), ``seed``
      (default 0), ``batch_size`` and ``eval_batch_size`` (global), and ``dataset`` (see
      ``default_dataset_config``).
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``); batch sizes are divided by it.

  Returns:
    ``train_iter_fn(start_step=0)`` (an infinite iterator of this process's training batches from
    ``start_step``), ``eval_iter_fn()`` (one pass over the validation split) and ``meta_data``
    (``num_classes``, ``class_names``, ``num_train_examples``, ``num_eval_examples``, ``input_shape`` of a
    training batch, ``eval_buckets``).

  Raises:
    FileNotFoundError: the dataset is not prepared (the message gives the command that prepares it).
    ValueError: an invalid configuration (or ``num_classes`` differs from the dataset's).
  """
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is not in [0, process_count={process_count})")
  settings = _settings(config)
  seed = int(config.get("rng_seed", 0))
  train_batch = _local_batch_size(config, "batch_size", process_count)
  eval_batch = _local_batch_size(config, "eval_batch_size", process_count)
  builder = load_builder(settings.data_dir, settings.name)
  class_names = datasets.class_names(settings.name, builder)
  if settings.num_classes is not None and settings.num_classes != len(class_names):
    raise ValueError(f"config.dataset.num_classes={settings.num_classes} but the {settings.name} dataset in "
                     f"{builder.data_dir} has {len(class_names)} classes; set it to {len(class_names)} or "
                     "None")

  def train_iter_fn(start_step: int = 0) -> Iterator[Batch]:
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    return iter(tfds.as_numpy(train_dataset(
        builder, settings, seed=seed, start_step=int(start_step), batch_size=train_batch,
        process_index=process_index, process_count=process_count)))

  eval_ds = []  # built on first use: a training-only job never traces the eval pipeline

  def eval_iter_fn() -> Iterator[Batch]:
    if not eval_ds:
      eval_ds.append(eval_dataset(builder, settings, batch_size=eval_batch, process_index=process_index,
                                  process_count=process_count))
    return iter(tfds.as_numpy(eval_ds[0]))

  meta_data = {
      "num_classes": len(class_names),
      "class_names": class_names,
      "num_train_examples": builder.info.splits["train"].num_examples,
      "num_eval_examples": builder.info.splits["validation"].num_examples,
      "input_shape": (-1, *settings.crop_size, 3),
      "eval_buckets": settings.eval_buckets,
  }
  return Dataset(train_iter_fn, eval_iter_fn, meta_data)
