"""RetinaNet inference post-processing with mmdet 2.x ``test_cfg`` semantics, in JAX with static shapes.

Per image and level (mmdet >= 2.18 ``BaseDenseHead._get_bboxes_single``): sigmoid scores of every
(anchor, class) pair, keep those ``> score_thr``, take the ``nms_pre`` best of them, decode their boxes and clip
them to the image. Then over all levels: divide by the resize scale (original-image coordinates), class-aware
NMS at ``iou_threshold`` and keep the ``max_per_img`` best. Outputs are padded to ``max_per_img``.
"""

import dataclasses
from typing import Dict, Sequence

import jax
import jax.numpy as jnp

from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.nms import batched_nms

# "mmdet2": mmdetection 2.8 (the official CrossFormer repository); "mmdet3": mmdetection >= 2.18 / 3.x.
VERSIONS = ("mmdet2", "mmdet3")


@dataclasses.dataclass(frozen=True)
class TestConfig:
  """mmdet's RetinaNet ``test_cfg``.

  Attributes:
    nms_pre: (anchor, class) candidates kept per level before NMS (``<= 0``: all above ``score_thr``).
    score_thr: a candidate needs a score strictly above this.
    iou_threshold: NMS IoU threshold (suppress at IoU strictly above it).
    max_per_img: detections per image (the fixed output size).
  """
  nms_pre: int = 1000
  score_thr: float = 0.05
  iou_threshold: float = 0.5
  max_per_img: int = 100
  min_bbox_size: float = 0.0
  version: str = "mmdet3"

  def __post_init__(self):
    if self.max_per_img < 1:
      raise ValueError(f"max_per_img must be >= 1, got {self.max_per_img}")
    if self.version not in VERSIONS:
      raise ValueError(f"test_cfg.version must be one of {VERSIONS}, got {self.version!r}")


def _level_candidates(logits: jnp.ndarray, deltas: jnp.ndarray, anchors: jnp.ndarray,
                      image_size: jnp.ndarray, coder: DeltaXYWHBBoxCoder, cfg: TestConfig):
  """The ``nms_pre`` best (anchor, class) pairs of one level of one image, decoded and clipped."""
  num_anchors, num_classes = logits.shape
  scores = jax.nn.sigmoid(logits.astype(jnp.float32)).reshape(-1)
  k = scores.shape[0] if cfg.nms_pre <= 0 else min(cfg.nms_pre, scores.shape[0])
  above = scores > cfg.score_thr
  top_scores, top = jax.lax.top_k(jnp.where(above, scores, -1.0), k)
  anchor_index = top // num_classes
  boxes = coder.decode(anchors[anchor_index], deltas[anchor_index].astype(jnp.float32), max_shape=image_size)
  return boxes, top_scores, (top % num_classes).astype(jnp.int32), top_scores > cfg.score_thr


def _image_detections(logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
                      anchors: Sequence[jnp.ndarray], image_size: jnp.ndarray, scale: jnp.ndarray,
                      coder: DeltaXYWHBBoxCoder, cfg: TestConfig) -> Dict[str, jnp.ndarray]:
  parts = [_level_candidates(l, d, a, image_size, coder, cfg) for l, d, a in zip(logits, deltas, anchors)]
  boxes, scores, labels, valid = (jnp.concatenate(x, axis=0) for x in zip(*parts))
  scale = scale.astype(jnp.float32)
  boxes = boxes / jnp.stack([scale[1], scale[0], scale[1], scale[0]])
  keep = batched_nms(boxes, scores, labels, cfg.iou_threshold, cfg.max_per_img, candidate_mask=valid)
  return {
      "boxes": jnp.where(keep.valid[:, None], boxes[keep.indices], 0.0),
      "scores": jnp.where(keep.valid, scores[keep.indices], 0.0),
      "labels": jnp.where(keep.valid, labels[keep.indices], -1),
      "valid": keep.valid,
  }


def retinanet_detections(cls_logits: Sequence[jnp.ndarray], box_deltas: Sequence[jnp.ndarray],
                         anchors: Sequence[jnp.ndarray], image_size: jnp.ndarray, scale: jnp.ndarray,
                         coder: DeltaXYWHBBoxCoder, cfg: TestConfig) -> Dict[str, jnp.ndarray]:
  """Padded detections of a batch in original-image coordinates.

  Args:
    cls_logits: per level ``(B, N_l, C)`` logits.
    box_deltas: per level ``(B, N_l, 4)`` deltas.
    anchors: per level ``(N_l, 4)`` xyxy anchors (shared by the batch).
    image_size: ``(B, 2)`` valid ``(h, w)`` of the network input; boxes are clipped to it.
    scale: ``(B, 2)`` resize factors ``(h, w)`` = resized / original; boxes are divided by them.
    coder: the box coder the head was trained with.
    cfg: the test configuration.

  Returns:
    ``boxes (B, K, 4)`` xyxy, ``scores (B, K)`` (0 when padded), ``labels (B, K)`` int32 contiguous classes
    (-1 when padded), ``valid (B, K)`` bool; best first, ``K = cfg.max_per_img``.
  """
  if not len(cls_logits) == len(box_deltas) == len(anchors):
    raise ValueError(f"got {len(cls_logits)} logit, {len(box_deltas)} delta and {len(anchors)} anchor levels")
  fn = lambda l, d, s, sc: _image_detections(l, d, anchors, s, sc, coder, cfg)
  return jax.vmap(fn)(tuple(cls_logits), tuple(box_deltas), jnp.asarray(image_size), jnp.asarray(scale))
