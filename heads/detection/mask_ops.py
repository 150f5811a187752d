"""Instance-mask operations of Mask R-CNN: mask targets (mmdet ``mask_target``) and pasting predicted masks
into the image (mmdet ``_do_paste_mask``), in JAX with static shapes."""

import jax
import jax.numpy as jnp

from heads.detection.roi_align import roi_align_dense


def mask_targets(gt_masks: jnp.ndarray, rois: jnp.ndarray, gt_index: jnp.ndarray, mask_size: int = 28,
                 chunk_size: int = 32) -> jnp.ndarray:
  """Binary targets of positive RoIs: RoIAlign of the assigned gt bitmap over the RoI, then ``>= 0.5``.

  Args:
    gt_masks: ``(M, H, W)`` bitmaps of one image (any numeric dtype, 0/1).
    rois: ``(R, 4)`` xyxy RoIs (clipped to the bitmap here, as mmdet).
    gt_index: ``(R,)`` int index of each RoI's gt.
    mask_size: output side (28).
    chunk_size: RoIs processed together.

  Returns:
    ``(R, mask_size, mask_size)`` float32 targets in {0, 1}.
  """
  _, height, width = gt_masks.shape
  limit = jnp.asarray([width, height, width, height], jnp.float32)
  rois = jnp.clip(rois.astype(jnp.float32), 0.0, limit)

  def one(args):
    box, index = args
    soft = roi_align_dense(gt_masks[index].astype(jnp.float32), box, mask_size)
    return (soft >= 0.5).astype(jnp.float32)

  return jax.lax.map(one, (rois, gt_index.astype(jnp.int32)), batch_size=min(chunk_size, max(rois.shape[0], 1)))


def _paste_axis(lo: jnp.ndarray, hi: jnp.ndarray, length: int, size: int) -> jnp.ndarray:
  """``(length, size)`` bilinear weights of ``grid_sample`` (align_corners False, zeros) along one axis."""
  centres = jnp.arange(length, dtype=jnp.float32) + jnp.float32(0.5)
  g = (centres - lo) / (hi - lo) * jnp.float32(2.0) - jnp.float32(1.0)
  g = jnp.where(jnp.isinf(g), 0.0, g)
  src = ((g + 1.0) * jnp.float32(size) - 1.0) / 2.0
  low = jnp.floor(src)
  frac = src - low
  low = low.astype(jnp.int32)
  q = jnp.arange(size)
  return (jnp.where(q[None, :] == low[:, None], (1.0 - frac)[:, None], 0.0)
          + jnp.where(q[None, :] == (low + 1)[:, None], frac[:, None], 0.0))


def paste_mask_probs(mask_probs: jnp.ndarray, boxes: jnp.ndarray, image_shape) -> jnp.ndarray:
  """``(K, H, W)`` float32 samples of ``(K, S, S)`` probability maps pasted at their xyxy ``boxes``.

  Pixel ``(i, j)`` samples the box's map bilinearly at its centre (``F.grid_sample``, align_corners False, zero
  padding), as mmdet's ``_do_paste_mask``; ``image_shape`` is the static ``(H, W)`` of the output.
  """
  height, width = int(image_shape[0]), int(image_shape[1])
  size = mask_probs.shape[-1]
  boxes = boxes.astype(jnp.float32)

  def one(args):
    prob, box = args
    wy = _paste_axis(box[1], box[3], height, size)
    wx = _paste_axis(box[0], box[2], width, size)
    return jnp.einsum("hp,pq,wq->hw", wy, prob.astype(jnp.float32), wx, precision=jax.lax.Precision.HIGHEST)

  return jax.lax.map(one, (mask_probs, boxes), batch_size=min(8, max(boxes.shape[0], 1)))


def paste_masks(mask_probs: jnp.ndarray, boxes: jnp.ndarray, image_shape, image_size=None,
                threshold: float = 0.5) -> jnp.ndarray:
  """Pastes ``(K, S, S)`` mask probabilities into ``(K, H, W)`` uint8 image masks (``paste_mask_probs``, then
  ``>= threshold``, mmdet's ``mask_thr_binary``); pixels outside the optional ``(2,)`` ``image_size`` are 0."""
  height, width = int(image_shape[0]), int(image_shape[1])
  masks = paste_mask_probs(mask_probs, boxes, image_shape) >= threshold
  if image_size is not None:
    rows = jnp.arange(height)[:, None] < image_size[0]
    cols = jnp.arange(width)[None, :] < image_size[1]
    masks = masks & (rows & cols)[None]
  return masks.astype(jnp.uint8)
