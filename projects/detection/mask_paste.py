"""Host-side (numpy) pasting of Mask R-CNN's per-detection mask probabilities into image masks.

Same semantics as ``heads.detection.mask_ops.paste_masks`` (mmdet ``_do_paste_mask``: every pixel samples its
box's ``S x S`` probability map bilinearly at the pixel centre, ``grid_sample`` with ``align_corners=False``
and zero padding, then ``>= threshold``), but in numpy and per detection over the box's window only, so that
the evaluator can paste at each image's own *original* size (COCO has hundreds of distinct sizes: a jitted
paste would compile once per size). A pixel whose centre lies outside the box samples at most half of the
border value, so it never reaches a threshold >= 0.5 and the window loses nothing.
"""

import math
from typing import Tuple

import numpy as np


def _axis_weights(lo: float, hi: float, start: int, stop: int, size: int) -> np.ndarray:
  """``(stop - start, size)`` bilinear weights of pixels ``start..stop-1`` along one axis (zero padding)."""
  centres = np.arange(start, stop, dtype=np.float64) + 0.5
  extent = hi - lo
  if extent <= 0:
    return np.zeros((stop - start, size))
  src = (centres - lo) / extent * size - 0.5  # grid_sample's source coordinate, align_corners=False
  low = np.floor(src).astype(np.int64)
  frac = src - low
  weights = np.zeros((stop - start, size + 2))  # columns -1 and size absorb the out-of-map neighbours
  rows = np.arange(stop - start)
  weights[rows, np.clip(low, -1, size) + 1] += 1.0 - frac
  weights[rows, np.clip(low + 1, -1, size) + 1] += frac
  return weights[:, 1:-1]


def paste_masks_numpy(mask_probs: np.ndarray, boxes: np.ndarray, image_shape: Tuple[int, int],
                      threshold: float = 0.5) -> np.ndarray:
  """Pastes ``(K, S, S)`` mask probabilities with xyxy ``boxes`` (K, 4) into ``(K, H, W)`` uint8 masks.

  Args:
    mask_probs: per-detection probabilities (the sigmoid of the detection label's mask logits).
    boxes: boxes in the pixels of the output image.
    image_shape: ``(H, W)`` of the output (e.g. the original image size).
    threshold: mmdet's ``mask_thr_binary`` (0.5); must be >= 0.5 (see the module docstring).
  """
  if threshold < 0.5:
    raise ValueError(f"paste_masks_numpy pastes inside the boxes only, exact for thresholds >= 0.5; got "
                     f"{threshold}")
  height, width = int(image_shape[0]), int(image_shape[1])
  mask_probs = np.asarray(mask_probs, np.float64)
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  if mask_probs.ndim != 3 or len(mask_probs) != len(boxes):
    raise ValueError(f"expected (K, S, S) probabilities for K boxes, got {mask_probs.shape} and {boxes.shape}")
  size = mask_probs.shape[-1]
  masks = np.zeros((len(boxes), height, width), np.uint8)
  for k, (x0, y0, x1, y1) in enumerate(boxes):
    c0, c1 = max(int(math.floor(x0)) - 1, 0), min(int(math.ceil(x1)) + 1, width)
    r0, r1 = max(int(math.floor(y0)) - 1, 0), min(int(math.ceil(y1)) + 1, height)
    if c1 <= c0 or r1 <= r0:
      continue
    window = _axis_weights(y0, y1, r0, r1, size) @ mask_probs[k] @ _axis_weights(x0, x1, c0, c1, size).T
    masks[k, r0:r1, c0:c1] = window >= threshold
  return masks

