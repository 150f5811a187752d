"""Index-level planning of detection batches: mmdet's keep-ratio rescale, shape buckets, batch schedules.

Everything here is numpy on per-example image sizes, so the example order, the flips and the padded shape of
every batch are known before any image is decoded:

* ``rescale_sizes`` is mmcv's ``rescale_size`` (``Resize(img_scale=(1333, 800), keep_ratio=True)``);
* ``make_buckets`` gives a few padded shapes (multiples of ``size_divisor``) grouped by aspect ratio; every
  resized image fits the smallest bucket that contains it, so XLA compiles one program per bucket;
* ``TrainSchedule`` is mmdet's ``GroupSampler`` with buckets as groups: per epoch, each bucket's examples are
  shuffled and padded (by re-drawing from the bucket) to a multiple of the global batch size, cut into
  batches, and the batches are shuffled. Steps per epoch are fixed, so the batch at step ``s`` is a pure
  function of ``(seed, s)``;
* ``eval_batches`` covers every example once, bucket by bucket, completing the last batch of a bucket with
  filler entries (``valid = False``).
"""

import math
from typing import List, Sequence, Tuple

import numpy as np

Bucket = Tuple[int, int]  # padded (height, width)


def rescale_sizes(heights: np.ndarray, widths: np.ndarray, image_scale: Sequence[int]
                  ) -> Tuple[np.ndarray, np.ndarray]:
  """mmcv ``rescale_size``: the largest keep-ratio size with long side <= max(scale), short <= min(scale).

  Returns ``(new_heights, new_widths)`` as int64 arrays (``int(x * factor + 0.5)``, as mmcv).
  """
  heights = np.asarray(heights, np.float64)
  widths = np.asarray(widths, np.float64)
  long_edge, short_edge = max(image_scale), min(image_scale)
  factor = np.minimum(long_edge / np.maximum(heights, widths), short_edge / np.minimum(heights, widths))
  return ((heights * factor + 0.5).astype(np.int64), (widths * factor + 0.5).astype(np.int64))


def _ceil_to(value: float, divisor: int) -> int:
  return int(math.ceil(value / divisor) * divisor)


def make_buckets(image_scale: Sequence[int], size_divisor: int, aspect_ratios: Sequence[float]
                 ) -> Tuple[Bucket, ...]:
  """Padded bucket shapes, sorted by area.

  For each aspect ratio ``r`` (long/short, >= 1) there is a landscape bucket ``(S, L_r)`` and a portrait one
  ``(L_r, S)``, where ``S`` is the short edge of ``image_scale`` and ``L_r = S * r`` (capped at the long
  edge), both rounded up to ``size_divisor``. The widest ratio, ``max/min`` of ``image_scale``, is always
  included, so every keep-ratio-resized image fits some bucket. ``r = 1`` gives the square bucket.
  """
  if size_divisor <= 0:
    raise ValueError(f"size_divisor must be positive, got {size_divisor}")
  if any(r < 1 for r in aspect_ratios):
    raise ValueError(f"bucket aspect ratios are long/short and must be >= 1, got {tuple(aspect_ratios)}")
  long_edge, short_edge = max(image_scale), min(image_scale)
  max_ratio = long_edge / short_edge
  short = _ceil_to(short_edge, size_divisor)
  buckets = set()
  for ratio in set(min(r, max_ratio) for r in aspect_ratios) | {max_ratio}:
    long = _ceil_to(int(short_edge * ratio + 0.5), size_divisor)
    buckets.update({(short, long), (long, short)})
  return tuple(sorted(buckets, key=lambda b: (b[0] * b[1], b)))


def assign_buckets(heights: np.ndarray, widths: np.ndarray, buckets: Sequence[Bucket]) -> np.ndarray:
  """Index of the smallest-area bucket that contains each ``(height, width)`` (buckets sorted by area)."""
  shapes = np.asarray(buckets, np.int64)
  fits = (np.asarray(heights)[:, None] <= shapes[None, :, 0]) & (np.asarray(widths)[:, None]
                                                                  <= shapes[None, :, 1])
  missing = np.flatnonzero(~fits.any(axis=1))
  if len(missing):
    raise ValueError(f"an image of resized size {heights[missing[0]]}x{widths[missing[0]]} fits no bucket "
                     f"of {tuple(buckets)}")
  return np.argmax(fits, axis=1)


class TrainSchedule:
  """mmdet ``GroupSampler`` over buckets, indexed by global step (see the module docstring).

  Attributes:
    steps_per_epoch: number of global batches in one epoch (every example at least once).
  """

  def __init__(self, example_indices: np.ndarray, bucket_ids: np.ndarray, global_batch_size: int,
               seed: int, flip_prob: float):
    """Builds the schedule.

    Args:
      example_indices: data-source indices of the training examples (after filtering).
      bucket_ids: the bucket of each of those examples.
      global_batch_size: examples per step over all processes.
      seed: the run's seed; with the step it determines everything.
      flip_prob: probability of a horizontal flip per example.
    """
    if len(example_indices) == 0:
      raise ValueError("no training examples left after filtering (images without annotations or smaller "
                       "than min_image_size are skipped)")
    if global_batch_size <= 0:
      raise ValueError(f"batch size must be positive, got {global_batch_size}")
    self._indices = np.asarray(example_indices, np.int64)
    self._groups = [np.flatnonzero(bucket_ids == b) for b in np.unique(bucket_ids)]
    self._batch_size = global_batch_size
    self._seed = seed
    self._flip_prob = flip_prob
    self.steps_per_epoch = sum(-(-len(g) // global_batch_size) for g in self._groups)
    self._cached_epoch = (-1, None)

  def _epoch_batches(self, epoch: int) -> np.ndarray:
    cached_epoch, cached = self._cached_epoch  # one read: iterators may run in other threads
    if cached_epoch == epoch:
      return cached
    rng = np.random.default_rng((self._seed, 0, epoch))
    batches = []
    for group in self._groups:
      order = rng.permutation(group)
      extra = -len(order) % self._batch_size
      order = np.concatenate([order, rng.choice(order, extra)])
      batches.append(order.reshape(-1, self._batch_size))
    batches = np.concatenate(batches)
    batches = batches[rng.permutation(len(batches))]
    self._cached_epoch = (epoch, batches)
    return batches

  def batch(self, step: int) -> Tuple[np.ndarray, np.ndarray]:
    """Returns ``(data-source indices, flip flags)`` of the global batch at ``step``."""
    if step < 0:
      raise ValueError(f"step must be >= 0, got {step}")
    epoch, position = divmod(step, self.steps_per_epoch)
    rows = self._epoch_batches(epoch)[position]
    flips = np.random.default_rng((self._seed, 1, step)).random(self._batch_size) < self._flip_prob
    return self._indices[rows], flips


def eval_batches(bucket_ids: np.ndarray, global_batch_size: int) -> List[Tuple[np.ndarray, np.ndarray]]:
  """One pass in data-source order, bucket by bucket: ``[(indices, valid)]`` of ``global_batch_size`` each.

  The last batch of each bucket is completed with filler entries (the bucket's first example, ``valid``
  False).
  """
  if global_batch_size <= 0:
    raise ValueError(f"batch size must be positive, got {global_batch_size}")
  batches = []
  for bucket in np.unique(bucket_ids):
    members = np.flatnonzero(bucket_ids == bucket)
    extra = -len(members) % global_batch_size
    indices = np.concatenate([members, np.full(extra, members[0])])
    valid = np.arange(len(indices)) < len(members)
    batches.extend(zip(indices.reshape(-1, global_batch_size), valid.reshape(-1, global_batch_size)))
  return batches


def process_share(global_batch_size: int, process_index: int, process_count: int) -> slice:
  """The rows of a global batch that belong to ``process_index`` (contiguous, equal shares)."""
  if global_batch_size % process_count:
    raise ValueError(f"global batch size {global_batch_size} does not split over {process_count} processes")
  share = global_batch_size // process_count
  return slice(process_index * share, (process_index + 1) * share)
