"""RetinaNet inference post-processing with mmdet ``test_cfg`` semantics, in JAX with static shapes.

Two versions (``heads.detection.versions``), chosen by ``TestConfig.version`` (``config.model.test_cfg.version``):

* ``"mmdet2"`` (the default): mmdetection 2.8 ``AnchorHead.get_bboxes``, the official CrossFormer repository's.
  Per image and level, the ``nms_pre`` anchors with the best maximum class score (all anchors of a level with
  fewer); their boxes decoded and clipped to the image; then every (anchor, class) pair of all levels scoring
  ``> score_thr`` goes to NMS. No box-size filter (boxes clipped to zero size at the image edge can be kept).
* ``"mmdet3"``: mmdetection >= 2.18 / 3.x ``BaseDenseHead._predict_by_feat_single``. Per image and level, the
  (anchor, class) pairs scoring ``> score_thr``, the ``nms_pre`` best of them, decoded and clipped; then boxes
  of width or height ``<= min_bbox_size`` are dropped.

Both then divide the boxes by the resize scale (original-image coordinates), run class-aware NMS at
``iou_threshold`` (mmcv ``batched_nms``) and keep the ``max_per_img`` best. Outputs are padded to
``max_per_img``.
"""

import dataclasses
from typing import Dict, Sequence, Tuple

import jax
import jax.numpy as jnp

from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.nms import batched_nms
from heads.detection.versions import DEFAULT_VERSION, MMDET3, check_version


@dataclasses.dataclass(frozen=True)
class TestConfig:
  """mmdet's RetinaNet ``test_cfg``.

  Attributes:
    nms_pre: candidates kept per level before NMS (``<= 0``: all): anchors (mmdet2) or (anchor, class) pairs
      above ``score_thr`` (mmdet3).
    score_thr: a candidate needs a score strictly above this.
    iou_threshold: NMS IoU threshold (suppress at IoU strictly above it).
    max_per_img: detections per image (the fixed output size).
    min_bbox_size: mmdet3 only: boxes need width and height above this (``< 0``: no filter).
    version: ``"mmdet2"`` (official repository, mmdetection 2.8; the default) or ``"mmdet3"``.
  """
  nms_pre: int = 1000
  score_thr: float = 0.05
  iou_threshold: float = 0.5
  max_per_img: int = 100
  min_bbox_size: float = 0.0
  version: str = DEFAULT_VERSION

  def __post_init__(self):
    if self.max_per_img < 1:
      raise ValueError(f"max_per_img must be >= 1, got {self.max_per_img}")
    check_version(self.version, "test_cfg.version")


def level_candidates(logits: jnp.ndarray, cfg: TestConfig) -> Tuple[jnp.ndarray, ...]:
  """The (anchor, class) pairs of one level of one image that go on to NMS, as ``cfg.version`` selects them.

  Args:
    logits: ``(N, C)`` class logits of the level's anchors.
    cfg: the test configuration.

  Returns:
    ``(anchor_index, labels, scores, valid)``, each ``(K,)`` with a static ``K``; mmdet3 orders them by
    descending score, mmdet2 by anchor rank then class.
  """
  num_anchors, num_classes = logits.shape
  scores = jax.nn.sigmoid(logits.astype(jnp.float32))
  if cfg.version == MMDET3:
    flat = scores.reshape(-1)
    k = flat.shape[0] if cfg.nms_pre <= 0 else min(cfg.nms_pre, flat.shape[0])
    top_scores, top = jax.lax.top_k(jnp.where(flat > cfg.score_thr, flat, -1.0), k)
    return (top // num_classes).astype(jnp.int32), (top % num_classes).astype(jnp.int32), top_scores, \
        top_scores > cfg.score_thr
  if 0 < cfg.nms_pre < num_anchors:
    _, anchor_index = jax.lax.top_k(scores.max(axis=1), cfg.nms_pre)
  else:
    anchor_index = jnp.arange(num_anchors)
  pair_scores = scores[anchor_index].reshape(-1)
  labels = jnp.tile(jnp.arange(num_classes, dtype=jnp.int32), anchor_index.shape[0])
  return (jnp.repeat(anchor_index.astype(jnp.int32), num_classes), labels, pair_scores,
          pair_scores > cfg.score_thr)


def _image_detections(logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
                      anchors: Sequence[jnp.ndarray], image_size: jnp.ndarray, scale: jnp.ndarray,
                      coder: DeltaXYWHBBoxCoder, cfg: TestConfig) -> Dict[str, jnp.ndarray]:
  parts = []
  for level_logits, level_deltas, level_anchors in zip(logits, deltas, anchors):
    anchor_index, labels, scores, valid = level_candidates(level_logits, cfg)
    boxes = coder.decode(level_anchors[anchor_index], level_deltas[anchor_index].astype(jnp.float32),
                         max_shape=image_size)
    parts.append((boxes, scores, labels, valid))
  boxes, scores, labels, valid = (jnp.concatenate(x, axis=0) for x in zip(*parts))
  scale = scale.astype(jnp.float32)
  boxes = boxes / jnp.stack([scale[1], scale[0], scale[1], scale[0]])
  if cfg.version == MMDET3 and cfg.min_bbox_size >= 0:
    valid &= ((boxes[:, 2] - boxes[:, 0]) > cfg.min_bbox_size) & ((boxes[:, 3] - boxes[:, 1]) > cfg.min_bbox_size)
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
