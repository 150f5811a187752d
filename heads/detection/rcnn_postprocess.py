"""Mask R-CNN box-head post-processing (mmdet ``BBoxHead.predict_by_feat`` + ``multiclass_nms``), per image.

Softmax over ``num_classes + 1`` (background last), every class's deltas decoded against its RoI and clipped
to the image, (RoI, class) pairs with score ``> score_thr`` in (RoI, class) order, class-aware NMS (mmcv's
label coordinate offsets), the ``max_per_img`` best. No size filter. Identical in mmdet 2.8 and 3.3.
"""

import dataclasses
from typing import Dict

import jax
import jax.numpy as jnp

from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.nms import batched_nms


@dataclasses.dataclass(frozen=True)
class RCNNTestConfig:
  """mmdet's ``test_cfg.rcnn``.

  Attributes:
    score_thr: a (RoI, class) pair needs a score strictly above this.
    iou_threshold: class-aware NMS threshold.
    max_per_img: detections per image (the fixed output size).
    mask_thr_binary: pasted-mask threshold (``>=``).
  """
  score_thr: float = 0.05
  iou_threshold: float = 0.5
  max_per_img: int = 100
  mask_thr_binary: float = 0.5

  def __post_init__(self):
    if self.max_per_img < 1:
      raise ValueError(f"max_per_img must be >= 1, got {self.max_per_img}")


def rcnn_detections(cls_logits: jnp.ndarray, deltas: jnp.ndarray, rois: jnp.ndarray, roi_valid: jnp.ndarray,
                    image_size: jnp.ndarray, coder: DeltaXYWHBBoxCoder, cfg: RCNNTestConfig
                    ) -> Dict[str, jnp.ndarray]:
  """Detections of one image.

  Args:
    cls_logits: ``(R, K + 1)`` logits, background last.
    deltas: ``(R, 4 K)`` class-specific deltas.
    rois: ``(R, 4)`` xyxy RoIs.
    roi_valid: ``(R,)`` bool, False for padded RoIs.
    image_size: ``(2,)`` ``(h, w)`` to clip to.
    coder: the RoI head's box coder (stds 0.1, 0.1, 0.2, 0.2).
    cfg: the test settings.

  Returns:
    ``boxes (D, 4)``, ``scores (D,)``, ``labels (D,)`` int32 (-1 padding), ``roi_index (D,)`` int32,
    ``valid (D,)``; best first, ``D = cfg.max_per_img``.
  """
  num_rois, num_classes = deltas.shape[0], deltas.shape[1] // 4
  scores = jax.nn.softmax(cls_logits.astype(jnp.float32), axis=-1)[:, :num_classes]
  boxes = coder.decode(jnp.broadcast_to(rois[:, None, :], (num_rois, num_classes, 4)).astype(jnp.float32),
                       deltas.astype(jnp.float32).reshape(num_rois, num_classes, 4), max_shape=image_size)
  boxes = boxes.reshape(-1, 4)
  scores = scores.reshape(-1)
  labels = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), num_rois)
  candidates = (scores > cfg.score_thr) & jnp.repeat(roi_valid, num_classes)
  keep = batched_nms(boxes, scores, labels, cfg.iou_threshold, cfg.max_per_img, candidate_mask=candidates)
  v = keep.valid
  return {
      "boxes": jnp.where(v[:, None], boxes[keep.indices], 0.0),
      "scores": jnp.where(v, scores[keep.indices], 0.0),
      "labels": jnp.where(v, labels[keep.indices], -1),
      "roi_index": jnp.where(v, keep.indices // num_classes, 0).astype(jnp.int32),
      "valid": v,
  }
