"""Axis-aligned box utilities (Scenic's ``box_utils`` naming, mmdet 2.x numerics).

Boxes are ``[..., 4]`` arrays. ``xyxy`` is ``[x0, y0, x1, y1]`` in absolute pixels, the format used everywhere
in detection here; ``cxcywh`` is ``[cx, cy, w, h]``. As in mmdet 2.x (and unlike mmdet 1.x), widths are
``x1 - x0`` without a ``+ 1``. Every function takes ``np_backbone`` (``jnp`` or ``np``) like Scenic's.
"""

from typing import Any, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

Array = Union[jnp.ndarray, np.ndarray]
PyModule = Any

# mmdet's ``bbox_overlaps`` clamps the union (and the enclosing area) from below by this value.
IOU_EPS = 1e-6


def box_cxcywh_to_xyxy(x: Array, np_backbone: PyModule = jnp) -> Array:
  """Converts ``[cx, cy, w, h]`` boxes to ``[x0, y0, x1, y1]``."""
  cx, cy, w, h = (x[..., i] for i in range(4))
  return np_backbone.stack([cx - 0.5 * w, cy - 0.5 * h, cx + 0.5 * w, cy + 0.5 * h], axis=-1)


def box_xyxy_to_cxcywh(x: Array, np_backbone: PyModule = jnp) -> Array:
  """Converts ``[x0, y0, x1, y1]`` boxes to ``[cx, cy, w, h]``."""
  x0, y0, x1, y1 = (x[..., i] for i in range(4))
  return np_backbone.stack([(x0 + x1) * 0.5, (y0 + y1) * 0.5, x1 - x0, y1 - y0], axis=-1)


def box_area(boxes: Array) -> Array:
  """Areas ``(x1 - x0) * (y1 - y0)`` of ``[..., 4]`` xyxy boxes (no clamping, as mmdet)."""
  return (boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1])


def box_iou(boxes1: Array, boxes2: Array, np_backbone: PyModule = jnp, all_pairs: bool = True,
            eps: float = IOU_EPS) -> Tuple[Array, Array]:
  """Intersection over union of xyxy boxes, as mmdet's ``bbox_overlaps(mode="iou")``.

  Args:
    boxes1: ``[..., N, 4]`` boxes.
    boxes2: ``[..., M, 4]`` boxes (``M == N`` when ``all_pairs`` is False).
    np_backbone: ``jnp`` or ``np``.
    all_pairs: pairwise ``[..., N, M]`` IoUs if True, else element-wise ``[..., N]`` IoUs of aligned pairs.
    eps: lower bound of the union (mmdet clamps the union to ``eps``; Scenic adds it).

  Returns:
    ``(iou, union)``, both ``[..., N, M]`` (or ``[..., N]``).
  """
  if boxes1.shape[-1] != 4 or boxes2.shape[-1] != 4:
    raise ValueError(f"boxes must end in 4 coordinates, got shapes {boxes1.shape} and {boxes2.shape}")
  area1 = box_area(boxes1)
  area2 = box_area(boxes2)
  if np_backbone is jnp:  # see below: keep mmdet's float32 rounding (no fused multiply-add)
    area1, area2 = jax.lax.optimization_barrier((area1, area2))
  if all_pairs:
    lt = np_backbone.maximum(boxes1[..., :, None, :2], boxes2[..., None, :, :2])
    rb = np_backbone.minimum(boxes1[..., :, None, 2:], boxes2[..., None, :, 2:])
    area_sum = area1[..., :, None] + area2[..., None, :]
  else:
    if boxes1.shape != boxes2.shape:
      raise ValueError(f"aligned IoU needs equal shapes, got {boxes1.shape} and {boxes2.shape}")
    lt = np_backbone.maximum(boxes1[..., :2], boxes2[..., :2])
    rb = np_backbone.minimum(boxes1[..., 2:], boxes2[..., 2:])
    area_sum = area1 + area2
  wh = np_backbone.clip(rb - lt, 0.0, None)
  intersection = wh[..., 0] * wh[..., 1]
  if np_backbone is jnp:
    # mmdet's float32 operation order exactly: no product may be fused into the following add/subtract (an
    # FMA rounds differently, which decides exact IoU ties, e.g. the low-quality matches of the assigner).
    area_sum, intersection = jax.lax.optimization_barrier((area_sum, intersection))
  union = np_backbone.maximum(area_sum - intersection, eps)
  return intersection / union, union


def clip_boxes(boxes: Array, image_size: Array, np_backbone: PyModule = jnp) -> Array:
  """Clips xyxy boxes to ``[0, w] x [0, h]`` (mmdet 2.x, no ``- 1``).

  Args:
    boxes: ``[..., N, 4]`` boxes.
    image_size: ``(h, w)`` of shape ``[..., 2]``, broadcast against the leading dimensions of ``boxes``.
    np_backbone: ``jnp`` or ``np``.
  """
  h = image_size[..., 0, None].astype(boxes.dtype)
  w = image_size[..., 1, None].astype(boxes.dtype)
  zero = np_backbone.zeros((), boxes.dtype)
  x0 = np_backbone.clip(boxes[..., 0], zero, w)
  y0 = np_backbone.clip(boxes[..., 1], zero, h)
  x1 = np_backbone.clip(boxes[..., 2], zero, w)
  y1 = np_backbone.clip(boxes[..., 3], zero, h)
  return np_backbone.stack([x0, y0, x1, y1], axis=-1)
