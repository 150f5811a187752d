"""Class-aware greedy non-maximum suppression with a fixed output size (mmcv ``batched_nms`` semantics)."""

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp

from heads.detection import box_utils


class NmsResult(NamedTuple):
  """Indices of the kept candidates, best first, padded to a fixed size.

  Attributes:
    indices: ``(..., max_outputs)`` int32 indices into the candidates (0 in padded slots).
    valid: ``(..., max_outputs)`` bool, False for padded slots.
  """
  indices: jnp.ndarray
  valid: jnp.ndarray


# mmcv ``batched_nms``: below this many candidates classes are separated by coordinate offsets (one NMS over
# shifted boxes), from it on by running NMS class by class on the original boxes.
SPLIT_THR = 10000


def batched_nms(boxes: jnp.ndarray, scores: jnp.ndarray, labels: jnp.ndarray, iou_threshold: float,
                max_outputs: int, candidate_mask: Optional[jnp.ndarray] = None,
                split_thr: int = SPLIT_THR) -> NmsResult:
  """Greedy per-class NMS of one image, keeping at most ``max_outputs`` boxes.

  Equivalent to mmcv's ``batched_nms`` followed by ``[:max_outputs]``: candidates are visited in descending
  score order; one is kept unless a kept candidate of the same label overlaps it with IoU ``> iou_threshold``.
  Each of the ``max_outputs`` steps picks the best live candidate and suppresses its same-label neighbours, so
  the cost is ``O(max_outputs * K)`` and never builds a ``K x K`` matrix. Use ``jax.vmap`` for a batch.

  As mmcv, with fewer than ``split_thr`` candidates the IoUs are computed (float32) on boxes shifted by
  ``label * (max coordinate + 1)``, which rounds them as mmcv does; otherwise on the original boxes.

  Args:
    boxes: ``(K, 4)`` xyxy candidates.
    scores: ``(K,)`` scores.
    labels: ``(K,)`` int classes; boxes of different classes never suppress each other.
    iou_threshold: IoU above which a lower-scored box of the same class is suppressed.
    max_outputs: the fixed number of output slots.
    candidate_mask: optional ``(K,)`` bool; False candidates are never kept.
  """
  if boxes.ndim != 2 or scores.shape != boxes.shape[:1] or labels.shape != scores.shape:
    raise ValueError(f"expected boxes (K, 4), scores (K,), labels (K,); got {boxes.shape}, {scores.shape}, "
                     f"{labels.shape}")
  num = scores.shape[0]
  live = scores.astype(jnp.float32)
  alive = jnp.ones((num,), bool) if candidate_mask is None else candidate_mask.astype(bool)
  boxes = boxes.astype(jnp.float32)
  positions = jnp.arange(num)
  if num > 0:
    count = alive.sum()
    max_coordinate = jnp.max(jnp.where(alive[:, None], boxes, -jnp.inf))
    offsets = labels.astype(jnp.float32) * (max_coordinate + jnp.float32(1.0))
    boxes = boxes + jnp.where((count > 0) & (count < split_thr), offsets, 0.0)[:, None]

  def step(i, state):
    alive, indices, valid = state
    best = jnp.argmax(jnp.where(alive, live, -jnp.inf))
    found = alive[best]
    iou, _ = box_utils.box_iou(boxes[best][None], boxes)
    suppressed = ((iou[0] > iou_threshold) & (labels == labels[best])) | (positions == best)
    alive = alive & ~(suppressed & found)
    return alive, indices.at[i].set(jnp.where(found, best, 0)), valid.at[i].set(found)

  init = (alive, jnp.zeros((max_outputs,), jnp.int32), jnp.zeros((max_outputs,), bool))
  if num == 0:
    return NmsResult(indices=init[1], valid=init[2])
  _, indices, valid = jax.lax.fori_loop(0, max_outputs, step, init)
  return NmsResult(indices=indices, valid=valid)
