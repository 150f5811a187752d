"""Classification input pipeline and ``get_dataset`` (``imagenet2012`` and ``image_folder`` alike).

Training is deterministic and resumable as the segmentation pipeline's: process ``p`` of ``P`` reads its
contiguous slice of the train split, each epoch is shuffled with a seed derived from ``(seed, epoch)``, every
example is augmented with stateless ops keyed by ``(seed, epoch, index)`` (``transforms.TrainAugment``; the
Keras RandAugment layer excepted, see ``transforms``) and every batch is mixed (Mixup/CutMix) with a key of
``(seed, step)``; ``train_iter_fn(s)`` starts at step ``s`` (it re-reads, without decoding, the records of
the current epoch before it). The epochs follow each other without a gap (a batch may hold the end of one
and the start of the next; timm drops each epoch's last partial batch).

Evaluation is one pass in the official protocol (``transforms.eval_image``): every process reads an even
share of the validation split; its last batches are completed with fillers (``batch_mask`` 0) so that every
process runs the same number of steps.

Batches are numpy dicts: ``inputs`` float32 (B, S, S, 3) normalised, ``batch_mask`` float32 (B,), ``label``
int32 (B,), or float32 (B, K) soft targets when training with Mixup/CutMix.
"""

import math
from typing import Any, Iterator, Optional

import jax
import ml_collections
import tensorflow as tf
import tensorflow_datasets as tfds

from projects.classification.data import datasets
from projects.classification.data import eval_transform
from projects.classification.data import transforms
from projects.common.dataset import Batch, Dataset

_SKIP = {"image": tfds.decode.SkipDecoding()}
_READ_CONFIG = tfds.ReadConfig(try_autocache=False)
_SHUFFLE_STREAM, _AUGMENT_STREAM, _MIX_STREAM = 0, 1, 2
_MAX_EPOCHS = 2 ** 40


def default_dataset_config() -> ml_collections.ConfigDict:
  """``config.dataset`` of the official recipe (keys missing from a config are taken from here).

  ``data_dir`` (tfds data dir), ``manual_dir`` / ``val_fraction`` (``image_folder``: your folder and, without
  train/ and val/ folders, the share of each class held out), ``crop_size``, ``crop_pct`` (eval resize =
  ``int(crop_size / crop_pct)``), ``flip_prob``, ``rand_augment`` (timm spec or None), ``color_jitter`` (only
  used without RandAugment, as timm), ``erase_prob``, ``mixup_alpha``, ``cutmix_alpha``, ``mix_prob``,
  ``switch_prob``, ``shuffle_buffer_size``.
  """
  return ml_collections.ConfigDict(dict(
      data_dir=None, manual_dir=None, val_fraction=0.0, crop_size=224, crop_pct=transforms.DEFAULT_CROP_PCT,
      flip_prob=0.5, rand_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4, erase_prob=0.25, mixup_alpha=0.8,
      cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5, shuffle_buffer_size=10_000))


def settings(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.dataset`` over the defaults, validated."""
  defaults = default_dataset_config()
  given = config.get("dataset") or ml_collections.ConfigDict()
  unknown = sorted(set(given.keys()) - set(defaults.keys()))
  if unknown:
    raise ValueError(f"unknown config.dataset keys {unknown}; known: {sorted(defaults.keys())}")
  cfg = ml_collections.ConfigDict({**defaults.to_dict(), **given.to_dict()})
  for key in ("flip_prob", "erase_prob", "mix_prob", "switch_prob"):
    if not 0.0 <= float(cfg[key]) <= 1.0:
      raise ValueError(f"config.dataset.{key} must be in [0, 1], got {cfg[key]}")
  if int(cfg.crop_size) < 8 or not 0 < float(cfg.crop_pct) <= 1:
    raise ValueError(f"config.dataset.crop_size must be >= 8 and crop_pct in (0, 1], got {cfg.crop_size}, "
                     f"{cfg.crop_pct}")
  return cfg


def mixing(cfg: ml_collections.ConfigDict) -> bool:
  """Whether training batches are mixed (soft labels)."""
  return float(cfg.mix_prob) > 0 and (float(cfg.mixup_alpha) > 0 or float(cfg.cutmix_alpha) > 0)


def _local_batch_size(config: ml_collections.ConfigDict, key: str, process_count: int) -> int:
  size = config.get(key) or config.get("batch_size")
  if not size or int(size) % process_count:
    raise ValueError(f"config.{key}={size} must be a positive global batch size divisible by {process_count} "
                     "processes")
  return int(size) // process_count


def _deterministic(ds: tf.data.Dataset) -> tf.data.Dataset:
  options = tf.data.Options()
  options.deterministic = True
  return ds.with_options(options)


def _fold(key: tf.Tensor, value: Any) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(key, tf.cast(value, tf.int64))


def train_dataset(builder: tfds.core.DatasetBuilder, cfg: ml_collections.ConfigDict, num_classes: int, *,
                  seed: int, start_step: int, batch_size: int, process_index: int,
                  process_count: int) -> tf.data.Dataset:
  """This process's training batches from ``start_step`` on (infinite; module docstring)."""
  total = builder.info.splits["train"].num_examples
  low, high = total * process_index // process_count, total * (process_index + 1) // process_count
  if high == low:
    raise ValueError(f"process {process_index} of {process_count} gets no training example (the train split "
                     f"has {total})")
  records = builder.as_dataset(split=f"train[{low}:{high}]", shuffle_files=False, decoders=_SKIP,
                               read_config=_READ_CONFIG)
  records = records.map(lambda ex: (ex["image"], ex["label"])).enumerate(start=low)
  start_epoch, offset = divmod(start_step * batch_size, high - low)
  base = tf.constant([seed, 0], tf.int64)
  shuffle_key, augment_key, mix_key = (_fold(base, s) for s in (_SHUFFLE_STREAM, _AUGMENT_STREAM, _MIX_STREAM))
  augment = transforms.TrainAugment(cfg.crop_size, cfg.flip_prob, cfg.rand_augment, cfg.color_jitter,
                                    cfg.erase_prob, seed=seed)
  augment.build()  # Keras layers (and their seed variables) are created eagerly, outside tf.data's tracing

  def epoch(e):
    epoch_seed = tf.random.stateless_uniform([], _fold(shuffle_key, e), minval=None, maxval=None, dtype=tf.int64)
    shuffled = records.shuffle(int(cfg.shuffle_buffer_size), seed=epoch_seed)
    return shuffled.map(lambda index, example: (e, index, example))

  def preprocess(e, index, example):
    data, label = example
    return augment(transforms.decode(data), _fold(_fold(augment_key, e), index)), tf.cast(label, tf.int32)

  ds = tf.data.Dataset.range(start_epoch, _MAX_EPOCHS).flat_map(epoch).skip(offset)
  ds = ds.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.batch(batch_size, drop_remainder=True)

  def finish(step, batch):
    inputs, labels = batch
    if mixing(cfg):
      inputs, labels = transforms.mix_batch(inputs, labels, _fold(mix_key, step), num_classes,
                                            float(cfg.mixup_alpha), float(cfg.cutmix_alpha), float(cfg.switch_prob),
                                            float(cfg.mix_prob))
    return {"inputs": inputs, "label": labels, "batch_mask": tf.ones([batch_size], tf.float32)}

  return _deterministic(ds.enumerate(start=start_step).map(finish, num_parallel_calls=tf.data.AUTOTUNE,
                                                           deterministic=True).prefetch(2))


def eval_dataset(builder: tfds.core.DatasetBuilder, cfg: ml_collections.ConfigDict, *, batch_size: int,
                 process_index: int, process_count: int) -> tf.data.Dataset:
  """One pass over this process's share of the validation split in the official protocol, padded."""
  total = builder.info.splits["validation"].num_examples
  num_batches = math.ceil(math.ceil(total / process_count) / batch_size)
  split = tfds.even_splits("validation", n=process_count)[process_index] if process_count > 1 else "validation"
  records = builder.as_dataset(split=split, shuffle_files=False, decoders=_SKIP, read_config=_READ_CONFIG)
  size = int(cfg.crop_size)
  resize = eval_transform.resize_size_for_crop(size, float(cfg.crop_pct))

  def preprocess(example):
    return {"inputs": transforms.eval_image(example["image"], size, resize),
            "label": tf.cast(example["label"], tf.int32), "batch_mask": tf.constant(1.0)}

  filler = {"inputs": tf.zeros([size, size, 3]), "label": tf.constant(0, tf.int32), "batch_mask": tf.constant(0.0)}
  ds = records.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
  ds = ds.concatenate(tf.data.Dataset.from_tensors(filler).repeat()).take(num_batches * batch_size)
  return _deterministic(ds.batch(batch_size).prefetch(2))


def get_dataset(config: ml_collections.ConfigDict, *, process_index: Optional[int] = None,
                process_count: Optional[int] = None) -> Dataset:
  """``Dataset(train_iter_fn, eval_iter_fn, meta_data)`` of ``config.dataset_name`` (``imagenet2012`` or
  ``image_folder``). ``meta_data``: ``num_classes``, ``class_names``, ``num_train_examples``,
  ``num_eval_examples``, ``steps_per_epoch``, ``input_shape``."""
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  cfg = settings(config)
  seed = int(config.get("rng_seed", 0))
  train_batch = _local_batch_size(config, "batch_size", process_count)
  eval_batch = _local_batch_size(config, "eval_batch_size", process_count)
  builder = datasets.load_builder(config)
  names = datasets.class_names(builder)

  def train_iter_fn(start_step: int = 0) -> Iterator[Batch]:
    if start_step < 0:
      raise ValueError(f"start_step must be >= 0, got {start_step}")
    return iter(tfds.as_numpy(train_dataset(builder, cfg, len(names), seed=seed, start_step=int(start_step),
                                            batch_size=train_batch, process_index=process_index,
                                            process_count=process_count)))

  def eval_iter_fn() -> Iterator[Batch]:
    return iter(tfds.as_numpy(eval_dataset(builder, cfg, batch_size=eval_batch, process_index=process_index,
                                           process_count=process_count)))

  num_train = builder.info.splits["train"].num_examples
  meta_data = {"num_classes": len(names), "class_names": list(names), "num_train_examples": num_train,
               "num_eval_examples": builder.info.splits["validation"].num_examples,
               "steps_per_epoch": max(1, num_train // int(config.batch_size)),
               "input_shape": (-1, int(cfg.crop_size), int(cfg.crop_size), 3)}
  return Dataset(train_iter_fn, eval_iter_fn, meta_data)
