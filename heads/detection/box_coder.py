"""mmdet 2.x ``DeltaXYWHBBoxCoder``: box regression targets ``(dx, dy, dw, dh)`` relative to anchors."""

import dataclasses
import math
from typing import Optional, Tuple

import jax.numpy as jnp

from heads.detection import box_utils

# mmdet's default ``wh_ratio_clip``: predicted log-scale changes are clamped to |log(16 / 1000)|.
WH_RATIO_CLIP = 16 / 1000


@dataclasses.dataclass(frozen=True)
class DeltaXYWHBBoxCoder:
  """Encodes xyxy boxes as normalised deltas to their anchors and decodes them back (mmdet 2.x numerics).

  ``encode``: ``dx = (gx - px) / pw``, ``dy = (gy - py) / ph``, ``dw = log(gw / pw)``, ``dh = log(gh / ph)``,
  then ``(delta - means) / stds``. ``decode`` inverts it, clamping ``dw, dh`` to ``|log(wh_ratio_clip)|``
  and, with ``clip_border``, clipping the boxes to the image.

  Attributes:
    target_means: means subtracted from the deltas (RetinaNet: zeros).
    target_stds: stds the deltas are divided by (RetinaNet: ones).
    clip_border: clip decoded boxes to ``[0, w] x [0, h]`` when an image size is given.
  """
  target_means: Tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0)
  target_stds: Tuple[float, float, float, float] = (1.0, 1.0, 1.0, 1.0)
  clip_border: bool = True

  def __post_init__(self):
    if len(self.target_means) != 4 or len(self.target_stds) != 4:
      raise ValueError(f"target_means and target_stds need 4 values, got {self.target_means} and "
                       f"{self.target_stds}")
    if min(self.target_stds) <= 0:
      raise ValueError(f"target_stds must be positive, got {self.target_stds}")

  def encode(self, anchors: jnp.ndarray, gt_boxes: jnp.ndarray) -> jnp.ndarray:
    """Deltas ``[..., 4]`` that turn ``anchors`` into ``gt_boxes`` (both ``[..., 4]`` xyxy, positive sizes)."""
    p = box_utils.box_xyxy_to_cxcywh(anchors)
    g = box_utils.box_xyxy_to_cxcywh(gt_boxes)
    deltas = jnp.stack([(g[..., 0] - p[..., 0]) / p[..., 2], (g[..., 1] - p[..., 1]) / p[..., 3],
                        jnp.log(g[..., 2] / p[..., 2]), jnp.log(g[..., 3] / p[..., 3])], axis=-1)
    means = jnp.asarray(self.target_means, deltas.dtype)
    stds = jnp.asarray(self.target_stds, deltas.dtype)
    return (deltas - means) / stds

  def decode(self, anchors: jnp.ndarray, deltas: jnp.ndarray, max_shape: Optional[jnp.ndarray] = None,
             wh_ratio_clip: float = WH_RATIO_CLIP) -> jnp.ndarray:
    """Applies ``deltas [..., N, 4]`` to ``anchors [..., N, 4]``; returns xyxy boxes ``[..., N, 4]``.

    Args:
      anchors: xyxy anchors, broadcastable against ``deltas``.
      deltas: encoded deltas (as produced by the regression head).
      max_shape: optional ``(..., 2)`` image ``(h, w)`` to clip to (ignored unless ``clip_border``).
      wh_ratio_clip: the largest allowed ``exp(|dw|)``-ratio is ``1 / wh_ratio_clip``.
    """
    means = jnp.asarray(self.target_means, deltas.dtype)
    stds = jnp.asarray(self.target_stds, deltas.dtype)
    deltas = deltas * stds + means
    max_ratio = abs(math.log(wh_ratio_clip))
    dw = jnp.clip(deltas[..., 2], -max_ratio, max_ratio)
    dh = jnp.clip(deltas[..., 3], -max_ratio, max_ratio)
    p = box_utils.box_xyxy_to_cxcywh(anchors.astype(deltas.dtype))
    cx = p[..., 0] + p[..., 2] * deltas[..., 0]
    cy = p[..., 1] + p[..., 3] * deltas[..., 1]
    w = p[..., 2] * jnp.exp(dw)
    h = p[..., 3] * jnp.exp(dh)
    boxes = jnp.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)
    if self.clip_border and max_shape is not None:
      boxes = box_utils.clip_boxes(boxes, jnp.asarray(max_shape))
    return boxes
