"""COCO detection input pipeline (mmdet 2.x recipe) behind the shared ``get_dataset`` interface.

Train: ``Resize(img_scale=(1333, 800), keep_ratio=True)``, ``RandomFlip(0.5)``, ``Normalize``, ``Pad`` to a
multiple of 32 -- into one of a few aspect-ratio buckets so that XLA compiles one program per bucket, each
image keeping its own size (``label.image_size`` is its valid region). Batches are formed within a bucket
(mmdet's ``GroupSampler``), images without annotations are skipped (``filter_empty_gt``), crowd and degenerate
boxes are dropped from the targets, which are padded to ``max_boxes`` with label -1. The batch at step ``s``
depends only on ``(config.rng_seed, s)``, so ``train_iter_fn(s)`` resumes exactly; each process reads its
contiguous share of every global batch.

Eval: the same without flip, every image once, bucket by bucket, the last batch of each bucket completed with
filler examples (``batch_mask`` 0, ``image/id`` -1, no targets).

Config (``config.dataset``; defaults in ``default_dataset_config()``), plus ``config.rng_seed``,
``config.batch_size`` (global) and ``config.eval_batch_size`` (global, defaults to ``batch_size``):

* ``builder``: ``"coco_tree"`` (an extracted COCO-format tree) or ``"coco/2017"`` (the stock tfds builder);
* ``builder_config``: for ``coco_tree``, a config name (``"2017"``) or ``{name, splits}`` for a custom set;
* ``data_dir``, ``manual_dir``: tfds folders; ``annotation_file``: instances JSON of the eval split
  (optional);
* ``train_split``, ``eval_split``; ``image_scale`` (long, short) = (1333, 800); ``size_divisor`` = 32;
* ``bucket_aspect_ratios`` (long/short ratios of the landscape/portrait bucket pairs; 1.0 = square);
* ``max_boxes`` = 100; ``flip_prob`` = 0.5; ``min_image_size`` = 32 (mmdet's train filter);
* ``with_masks`` = False: also ``label["masks"]`` (B, M, H, W) uint8 instance bitmaps in the network-input
  frame (resized, flipped and padded with the image; set by the job for Mask R-CNN). Needs ``coco_tree`` >= 1.1.0
  (the stock ``coco/2017`` has no masks) and a segmentation on every annotation. Host memory: M * H * W bytes
  per image (100 x 800 x 1344: 108 MB), so mask jobs keep ``max_boxes`` and ``prefetch`` modest;
* ``num_parallel_calls`` (-1 = autotune) and ``prefetch`` (batches).
"""

from typing import Iterator, NamedTuple, Optional, Sequence, Tuple

import jax
import ml_collections
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from projects.common.dataset import Batch, Dataset
from projects.detection.data import coco_source
from projects.detection.data import schedule
from projects.detection.data import transforms




_DEFAULTS = {
    "builder": coco_source.TREE_BUILDER,
    "builder_config": "2017",
    "data_dir": None,
    "manual_dir": None,
    "annotation_file": None,
    "train_split": "train",
    "eval_split": "validation",
    "image_scale": (1333, 800),
    "size_divisor": 32,
    "bucket_aspect_ratios": (1.0, 1.34),
    "max_boxes": 100,
    "flip_prob": 0.5,
    "min_image_size": 32,
    "with_masks": False,
    "num_parallel_calls": -1,
    "prefetch": 2,
}


def default_dataset_config() -> ml_collections.ConfigDict:
  """``config.dataset`` for COCO 2017 with the official CrossFormer/mmdet recipe."""
  return ml_collections.ConfigDict(_DEFAULTS)


def _dataset_options(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """``config.dataset`` completed with the defaults; unknown keys are an error (they are usually typos)."""
  user = config.get("dataset") or {}
  user = user.to_dict() if isinstance(user, ml_collections.ConfigDict) else dict(user)
  unknown = sorted(set(user) - set(_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown config.dataset keys {unknown}; known: {sorted(_DEFAULTS)}")
  return ml_collections.ConfigDict({**_DEFAULTS, **user})


def _check_masks(builder, splits: Sequence[str]) -> None:
  """Raises unless every annotation of ``splits`` has a segmentation stored."""
  missing = builder.info.metadata.get("annotations_without_segmentation") or {}
  for split in splits:
    count = missing.get(split.split("[", 1)[0], 0)
    if count:
      files = builder.info.metadata.get("annotation_files", {})
      raise ValueError(f"config.dataset.with_masks: {count} annotations of split {split!r} "
                       f"({files.get(split.split('[', 1)[0], '?')}) have no 'segmentation'; a mask job needs "
                       "one on every annotation")


class _Split(NamedTuple):
  """A split ready for planning: its random-access records and per-example sizes/buckets."""
  source: Sequence[bytes]
  index: coco_source.SplitIndex
  resized: np.ndarray  # (N, 2) int32 (h, w) after the keep-ratio resize
  bucket_ids: np.ndarray  # (N,)


def _open_split(builder, split: str, buckets, image_scale) -> _Split:
  source = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  index = coco_source.split_index(builder, split, len(source))
  new_h, new_w = schedule.rescale_sizes(index.heights, index.widths, image_scale)
  return _Split(source, index, np.stack([new_h, new_w], -1).astype(np.int32),
                schedule.assign_buckets(new_h, new_w, buckets))


def _make_tf_dataset(builder, split: _Split, plan: Iterator[Tuple[np.ndarray, np.ndarray, np.ndarray]],
                     buckets: np.ndarray, local_batch_size: int, dataset_config) -> Iterator[Batch]:
  """Reads the planned ``(indices, flips, valid)`` local batches and transforms their examples in tf.data."""

  def records():
    for indices, flips, valid in plan:
      bucket = buckets[split.bucket_ids[indices[0]]]
      for record, index, flip, is_valid in zip(split.source.__getitems__(indices.tolist()), indices, flips,
                                               valid):
        yield record, flip, split.resized[index], bucket, is_valid

  signature = (tf.TensorSpec((), tf.string), tf.TensorSpec((), tf.bool), tf.TensorSpec((2,), tf.int32),
               tf.TensorSpec((2,), tf.int32), tf.TensorSpec((), tf.bool))
  features = builder.info.features
  max_boxes = int(dataset_config.max_boxes)
  with_masks = bool(dataset_config.with_masks)

  def parse(record, flip, resized_size, bucket_size, valid):
    return transforms.transform_example(features.deserialize_example(record), flip=flip,
                                        resized_size=resized_size, bucket_size=bucket_size, valid=valid,
                                        max_boxes=max_boxes, with_masks=with_masks)

  ds = tf.data.Dataset.from_generator(records, output_signature=signature)
  ds = ds.map(parse, num_parallel_calls=int(dataset_config.num_parallel_calls), deterministic=True)
  ds = ds.batch(local_batch_size, drop_remainder=True).prefetch(int(dataset_config.prefetch))
  return ds.as_numpy_iterator()


def get_dataset(config: ml_collections.ConfigDict, *, process_index: Optional[int] = None,
                process_count: Optional[int] = None) -> Dataset:
  """The COCO detection ``Dataset`` described by ``config`` (see the module docstring).

  Args:
    config: the job config (``dataset``, ``seed``, ``batch_size``, ``eval_batch_size``).
    process_index: this process (default ``jax.process_index()``).
    process_count: number of processes (default ``jax.process_count()``).

  Raises:
    coco_source.DatasetNotPreparedError: the dataset is not prepared; the message has the command to run.
    ValueError: an invalid option, or a batch size that does not split over the processes.
  """
  dataset_config = _dataset_options(config)
  process_index = jax.process_index() if process_index is None else process_index
  process_count = jax.process_count() if process_count is None else process_count
  batch_size = int(config.batch_size)
  eval_batch_size = int(config.get("eval_batch_size") or batch_size)
  train_share = schedule.process_share(batch_size, process_index, process_count)
  eval_share = schedule.process_share(eval_batch_size, process_index, process_count)
  seed = int(config.get("rng_seed", 0))
  image_scale = tuple(int(v) for v in dataset_config.image_scale)

  builder = coco_source.make_builder(dataset_config)
  coco_source.check_prepared(builder, dataset_config)
  if dataset_config.with_masks:
    _check_masks(builder, (dataset_config.train_split, dataset_config.eval_split))
  bucket_shapes = schedule.make_buckets(image_scale, int(dataset_config.size_divisor),
                                        tuple(dataset_config.bucket_aspect_ratios))
  buckets = np.asarray(bucket_shapes, np.int32)
  train = _open_split(builder, dataset_config.train_split, bucket_shapes, image_scale)
  evaluation = _open_split(builder, dataset_config.eval_split, bucket_shapes, image_scale)

  keep = ((train.index.num_objects > 0)
          & (np.minimum(train.index.heights, train.index.widths) >= int(dataset_config.min_image_size)))
  train_plan = schedule.TrainSchedule(np.flatnonzero(keep), train.bucket_ids[keep], batch_size, seed,
                                      float(dataset_config.flip_prob))
  eval_plan = schedule.eval_batches(evaluation.bucket_ids, eval_batch_size)

  def train_iter_fn(start_step: int = 0) -> Iterator[Batch]:
    """Batches of steps ``start_step, start_step + 1, ...`` (this process's share), forever."""
    def plan():
      step = start_step
      while True:
        indices, flips = train_plan.batch(step)
        yield indices[train_share], flips[train_share], np.ones(len(flips), bool)[train_share]
        step += 1
    return _make_tf_dataset(builder, train, plan(), buckets, train_share.stop - train_share.start,
                            dataset_config)

  def eval_iter_fn() -> Iterator[Batch]:
    """One pass over the eval split (this process's share of every global batch)."""
    plan = ((indices[eval_share], np.zeros(len(indices), bool)[eval_share], valid[eval_share])
            for indices, valid in eval_plan)
    return _make_tf_dataset(builder, evaluation, plan, buckets, eval_share.stop - eval_share.start,
                            dataset_config)

  meta_data = coco_source.dataset_meta_data(builder, dataset_config, dataset_config.eval_split)
  meta_data.update({
      "buckets": bucket_shapes,
      "input_shape": (1, *bucket_shapes[0], 3),  # the smallest bucket, for model initialisation
      "max_boxes": int(dataset_config.max_boxes),
      "num_train_examples": int(keep.sum()),
      "steps_per_epoch": train_plan.steps_per_epoch,
      "num_eval_examples": len(evaluation.source),
      "num_eval_batches": len(eval_plan),
  })
  return Dataset(train_iter_fn, eval_iter_fn, meta_data)
