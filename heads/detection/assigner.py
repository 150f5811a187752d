"""mmdet 2.x ``MaxIoUAssigner`` in JAX, on padded ground truth and static shapes."""

import dataclasses
from typing import NamedTuple, Optional

import jax.numpy as jnp

from heads.detection import box_utils


class AssignResult(NamedTuple):
  """What ``MaxIoUAssigner.assign`` returns for one image (mmdet's ``AssignResult``).

  Attributes:
    gt_inds: ``(N,)`` int32, mmdet's ``assigned_gt_inds``: ``-1`` ignore, ``0`` negative, ``k + 1`` positive
      for ground-truth box ``k``.
    max_overlaps: ``(N,)`` float IoU of each anchor with its best ground truth (``-1`` without any).
    labels: ``(N,)`` int32 class of the assigned ground truth for positives, ``-1`` elsewhere.
  """
  gt_inds: jnp.ndarray
  max_overlaps: jnp.ndarray
  labels: jnp.ndarray


@dataclasses.dataclass(frozen=True)
class MaxIoUAssigner:
  """Assigns each anchor to a ground-truth box by IoU (mmdet's ``MaxIoUAssigner``, RetinaNet defaults).

  1. Every anchor starts as ignored (``-1``).
  2. Anchors whose best IoU is ``< neg_iou_thr`` become negative (``0``); all anchors when there is no
     ground truth.
  3. Anchors whose best IoU is ``>= pos_iou_thr`` become positive for that ground truth.
  4. Low-quality matches: for every ground truth, in index order, whose best IoU is ``>= min_pos_iou``,
     the anchors achieving that best IoU (all of them with ``gt_max_assign_all``, else the first) become
     positive for it, overriding earlier assignments (so later ground truths win ties, as mmdet's loop).

  ``ignore_iof_thr`` is not supported: crowd boxes are dropped from targets upstream (RetinaNet's -1).

  Attributes:
    pos_iou_thr: IoU from which an anchor is positive.
    neg_iou_thr: IoU below which an anchor is negative.
    min_pos_iou: the smallest IoU a low-quality match may have.
    gt_max_assign_all: assign all anchors tied at a ground truth's best IoU, not only the first.
    match_low_quality: enable step 4.
  """
  pos_iou_thr: float = 0.5
  neg_iou_thr: float = 0.4
  min_pos_iou: float = 0.0
  gt_max_assign_all: bool = True
  match_low_quality: bool = True

  def __post_init__(self):
    if self.neg_iou_thr > self.pos_iou_thr:
      raise ValueError(f"neg_iou_thr {self.neg_iou_thr} must not exceed pos_iou_thr {self.pos_iou_thr}")

  def assign(self, anchors: jnp.ndarray, gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray,
             anchor_mask: Optional[jnp.ndarray] = None) -> AssignResult:
    """Assigns the anchors of one image.

    Args:
      anchors: ``(N, 4)`` xyxy anchors.
      gt_boxes: ``(M, 4)`` xyxy ground truth, padded.
      gt_labels: ``(M,)`` int classes, ``-1`` for padding rows (ignored entirely).
      anchor_mask: optional ``(N,)`` bool, the anchors taking part (mmdet's ``inside_flags``); the others
        never serve as a ground truth's best (low-quality) match. Their assignment is meaningless and must be
        given zero weight by the caller.
    """
    if anchors.ndim != 2 or gt_boxes.ndim != 2 or gt_labels.shape != gt_boxes.shape[:1]:
      raise ValueError(f"expected anchors (N, 4), gt_boxes (M, 4), gt_labels (M,); got {anchors.shape}, "
                       f"{gt_boxes.shape}, {gt_labels.shape}")
    gt_valid = gt_labels >= 0
    iou, _ = box_utils.box_iou(gt_boxes.astype(jnp.float32), anchors.astype(jnp.float32))  # (M, N)
    overlaps = jnp.where(gt_valid[:, None], iou, -1.0)
    if anchor_mask is not None:
      overlaps = jnp.where(anchor_mask[None, :], overlaps, -1.0)
    num_gts = gt_boxes.shape[0]

    if num_gts == 0:
      max_overlaps = jnp.full(anchors.shape[:1], -1.0, jnp.float32)
      argmax = jnp.zeros(anchors.shape[:1], jnp.int32)
    else:
      max_overlaps = overlaps.max(axis=0)
      argmax = overlaps.argmax(axis=0).astype(jnp.int32)
    # No valid ground truth (max -1) means every anchor is negative, as mmdet's num_gts == 0 case.
    gt_inds = jnp.where(max_overlaps < self.neg_iou_thr, 0, -1)
    gt_inds = jnp.where(max_overlaps >= self.pos_iou_thr, argmax + 1, gt_inds)

    if self.match_low_quality and num_gts > 0:
      gt_max = overlaps.max(axis=1)  # (M,)
      eligible = gt_valid & (gt_max >= self.min_pos_iou)
      if self.gt_max_assign_all:
        hits = (overlaps == gt_max[:, None]) & eligible[:, None]
      else:
        first = overlaps.argmax(axis=1)
        hits = (jnp.arange(anchors.shape[0])[None, :] == first[:, None]) & eligible[:, None]
      if anchor_mask is not None:
        hits &= anchor_mask[None, :]
      # The last ground truth in index order that hits an anchor wins, as in mmdet's sequential loop.
      last = num_gts - 1 - jnp.argmax(hits[::-1], axis=0)
      gt_inds = jnp.where(hits.any(axis=0), last + 1, gt_inds)

    gt_inds = gt_inds.astype(jnp.int32)
    labels = jnp.where(gt_inds > 0, gt_labels[jnp.maximum(gt_inds - 1, 0)], -1).astype(jnp.int32)
    return AssignResult(gt_inds=gt_inds, max_overlaps=max_overlaps, labels=labels)
