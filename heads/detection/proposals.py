"""RPN proposal generation (mmdet ``RPNHead._get_bboxes_single``), per image with static shapes.

Per level: the ``nms_pre`` highest sigmoid scores, their boxes decoded and clipped to the image. Then over all
levels: mmdet 3.x drops boxes of zero width or height (``version="mmdet3"``; mmdet 2.x, the official
CrossFormer code, keeps them: ``version="mmdet2"``), NMS at ``iou_threshold`` separately within each level
(levels never suppress each other; mmcv's level coordinate offsets), and the ``max_per_img`` best survivors.
"""

import dataclasses
from typing import Dict, Sequence

import jax
import jax.numpy as jnp

from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.nms import batched_nms
from heads.detection.versions import DEFAULT_VERSION, MMDET3, check_version


@dataclasses.dataclass(frozen=True)
class ProposalConfig:
  """mmdet's ``test_cfg.rpn`` / ``train_cfg.rpn_proposal``.

  Attributes:
    nms_pre: anchors kept per level before NMS, by score (1000 at test time, 2000 in training).
    max_per_img: proposals per image (the fixed output size).
    iou_threshold: NMS IoU threshold (suppress above it).
    min_bbox_size: mmdet 3.x keeps boxes with ``w > min_bbox_size`` and ``h > min_bbox_size`` (so 0 drops
      zero-size boxes); mmdet 2.x filters only when ``min_bbox_size > 0``, keeping ``w, h >= min_bbox_size``.
    version: ``"mmdet2"`` (official, the default: no zero-size filter when ``min_bbox_size == 0``) or ``"mmdet3"``.
  """
  nms_pre: int = 1000
  max_per_img: int = 1000
  iou_threshold: float = 0.7
  min_bbox_size: float = 0.0
  version: str = DEFAULT_VERSION

  def __post_init__(self):
    check_version(self.version, "proposal version")
    if self.nms_pre < 1 or self.max_per_img < 1:
      raise ValueError(f"nms_pre and max_per_img must be >= 1, got {self.nms_pre} and {self.max_per_img}")


def image_proposals(logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
                    anchors: Sequence[jnp.ndarray], image_size: jnp.ndarray, coder: DeltaXYWHBBoxCoder,
                    cfg: ProposalConfig) -> Dict[str, jnp.ndarray]:
  """Proposals of one image.

  Args:
    logits: per level ``(N_l,)`` objectness logits.
    deltas: per level ``(N_l, 4)`` deltas.
    anchors: per level ``(N_l, 4)`` anchors.
    image_size: ``(2,)`` ``(h, w)`` the boxes are clipped to.
    coder: the RPN box coder.
    cfg: the proposal settings.

  Returns:
    ``boxes (K, 4)``, ``scores (K,)``, ``levels (K,)`` int32, ``anchor_index (K,)`` int32 (flat over levels),
    ``valid (K,)`` bool; best first, ``K = cfg.max_per_img`` (invalid slots hold zeros).
  """
  parts = {"boxes": [], "scores": [], "levels": [], "anchor_index": []}
  offset = 0
  for level, (l, d, a) in enumerate(zip(logits, deltas, anchors)):
    scores = jax.nn.sigmoid(l.astype(jnp.float32))
    k = min(cfg.nms_pre, scores.shape[0])
    top_scores, top = jax.lax.top_k(scores, k)
    parts["boxes"].append(coder.decode(a[top], d[top].astype(jnp.float32), max_shape=image_size))
    parts["scores"].append(top_scores)
    parts["levels"].append(jnp.full((k,), level, jnp.int32))
    parts["anchor_index"].append(top.astype(jnp.int32) + offset)
    offset += scores.shape[0]
  cand = {k: jnp.concatenate(v, axis=0) for k, v in parts.items()}
  boxes = cand["boxes"]
  w = boxes[:, 2] - boxes[:, 0]
  h = boxes[:, 3] - boxes[:, 1]
  if cfg.version == MMDET3:
    valid = (w > cfg.min_bbox_size) & (h > cfg.min_bbox_size)
  elif cfg.min_bbox_size > 0:
    valid = (w >= cfg.min_bbox_size) & (h >= cfg.min_bbox_size)
  else:
    valid = jnp.ones(w.shape, bool)
  keep = batched_nms(boxes, cand["scores"], cand["levels"], cfg.iou_threshold, cfg.max_per_img,
                     candidate_mask=valid)
  out = {k: v[keep.indices] for k, v in cand.items()}
  out = {k: jnp.where(keep.valid.reshape(-1, *([1] * (v.ndim - 1))), v, 0) for k, v in out.items()}
  out["valid"] = keep.valid
  return out


def batch_proposals(logits: Sequence[jnp.ndarray], deltas: Sequence[jnp.ndarray],
                    anchors: Sequence[jnp.ndarray], image_size: jnp.ndarray, coder: DeltaXYWHBBoxCoder,
                    cfg: ProposalConfig) -> Dict[str, jnp.ndarray]:
  """``image_proposals`` of a batch: per level ``(B, N_l)`` logits, ``(B, N_l, 4)`` deltas, ``(B, 2)`` sizes."""
  fn = lambda l, d, s: image_proposals(l, d, anchors, s, coder, cfg)
  return jax.vmap(fn)(tuple(logits), tuple(deltas), jnp.asarray(image_size))
