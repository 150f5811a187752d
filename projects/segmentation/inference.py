"""Test-time inference for semantic segmentation, mmseg ``EncoderDecoder`` semantics.

All functions wrap ``apply_fn(images) -> logits`` ((B, h, w, 3) -> (B, h, w, K), logits at the input size, as
``SegmentationNet`` returns them). ``whole_inference``, ``slide_inference`` and ``aug_inference`` are pure and
jittable (sizes are static); ``infer_valid_regions`` runs on the host and crops every example of a padded
eval batch to its valid ``image_size`` first, so the network never sees the bucket padding (mmseg tests one
unpadded image at a time). Sizes fed to the backbone are padded up to multiples of ``size_divisor`` (32 for
CrossFormer) and the logits cropped back.

Typical use: ``apply_fn = lambda x: net.apply(variables, x, train=False)["logits"]``, then
``infer_valid_regions(jax.jit(functools.partial(aug_inference, apply_fn, ratios=(0.5, 0.75, 1.0, 1.25, 1.5,
1.75), flip=True)), batch["inputs"], batch["image_size"])`` and an argmax over the last axis.
"""

from typing import Callable, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from heads.layers import resize_bilinear

ApplyFn = Callable[[jnp.ndarray], jnp.ndarray]
InferFn = Callable[[jnp.ndarray], jnp.ndarray]
INFERENCE_MODES = ("whole", "slide")


def _round_up(x: int, divisor: int) -> int:
  return -(-x // divisor) * divisor


def whole_inference(apply_fn: ApplyFn, images: jnp.ndarray, size_divisor: int = 32) -> jnp.ndarray:
  """mmseg ``whole`` mode: logits (B, H, W, K) float32 for the whole images (B, H, W, 3).

  The images are zero-padded at the bottom/right to multiples of ``size_divisor`` and the logits cropped back.
  """
  h, w = images.shape[1:3]
  ph, pw = _round_up(h, size_divisor) - h, _round_up(w, size_divisor) - w
  if ph or pw:
    images = jnp.pad(images, ((0, 0), (0, ph), (0, pw), (0, 0)))
  return apply_fn(images)[:, :h, :w].astype(jnp.float32)


def slide_windows(size: Tuple[int, int], crop_size: Tuple[int, int],
                  stride: Tuple[int, int]) -> Tuple[Tuple[int, int, int, int], ...]:
  """The ``(y1, y2, x1, x2)`` windows of mmseg's ``slide_inference`` (last row/column flush with the border).

  Every window has the size ``min(crop, image)`` per axis.
  """
  (h, w), (h_crop, w_crop), (h_stride, w_stride) = size, crop_size, stride
  if min(h_crop, w_crop, h_stride, w_stride) <= 0:
    raise ValueError(f"crop_size {crop_size} and stride {stride} must be positive")
  h_grids = max(h - h_crop + h_stride - 1, 0) // h_stride + 1
  w_grids = max(w - w_crop + w_stride - 1, 0) // w_stride + 1
  windows = []
  for h_idx in range(h_grids):
    for w_idx in range(w_grids):
      y2, x2 = min(h_idx * h_stride + h_crop, h), min(w_idx * w_stride + w_crop, w)
      windows.append((max(y2 - h_crop, 0), y2, max(x2 - w_crop, 0), x2))
  return tuple(windows)


def slide_inference(apply_fn: ApplyFn, images: jnp.ndarray, crop_size: Tuple[int, int] = (512, 512),
                    stride: Tuple[int, int] = (341, 341), size_divisor: int = 32) -> jnp.ndarray:
  """mmseg ``slide`` mode: overlapping windows, logits summed and divided by the per-pixel window count.

  Windows are evaluated one after another (``lax.map``), each as ``whole_inference`` (padded to
  ``size_divisor``), so memory stays that of one window batch. Returns (B, H, W, K) float32 logits.
  """
  h, w = images.shape[1:3]
  windows = slide_windows((h, w), crop_size, stride)
  crops = jnp.stack([images[:, y1:y2, x1:x2] for y1, y2, x1, x2 in windows])
  window_logits = jax.lax.map(lambda crop: whole_inference(apply_fn, crop, size_divisor), crops)
  logits = jnp.zeros(images.shape[:3] + window_logits.shape[-1:], jnp.float32)
  count = np.zeros((h, w), np.float32)
  for (y1, y2, x1, x2), crop_logits in zip(windows, window_logits):
    logits = logits.at[:, y1:y2, x1:x2].add(crop_logits)
    count[y1:y2, x1:x2] += 1
  return logits / jnp.asarray(count)[None, :, :, None]


def scaled_size(size: Tuple[int, int], ratio: float, size_divisor: int = 32) -> Tuple[int, int]:
  """The test size at ``ratio``: mmcv rounding ``int(x * ratio + 0.5)``, then mmseg ``AlignResize``
  (rounded up to a multiple of ``size_divisor``)."""
  return tuple(_round_up(max(int(s * ratio + 0.5), 1), size_divisor) for s in size)


def aug_inference(apply_fn: ApplyFn, images: jnp.ndarray, ratios: Sequence[float] = (1.0,), flip: bool = False,
                  mode: str = "whole", crop_size: Tuple[int, int] = (512, 512),
                  stride: Tuple[int, int] = (341, 341), size_divisor: int = 32) -> jnp.ndarray:
  """Multi-scale (+ horizontal flip) test, mmseg ``aug_test`` with ``MultiScaleFlipAug`` + ``AlignResize``.

  For every ratio the images are bilinearly resized to ``scaled_size`` (and, with ``flip``, also mirrored);
  each view's logits are resized back to (H, W), turned into softmax scores, un-flipped, and all views are
  averaged. Returns (B, H, W, K) float32 class probabilities; ``ratios=(1.0,)`` without flip is
  ``softmax(whole/slide logits)``.
  """
  if mode not in INFERENCE_MODES:
    raise ValueError(f"unknown inference mode {mode!r}; expected one of {INFERENCE_MODES}")
  if not ratios:
    raise ValueError("aug_inference needs at least one ratio")
  size = images.shape[1:3]

  def infer(x: jnp.ndarray) -> jnp.ndarray:
    if mode == "whole":
      return whole_inference(apply_fn, x, size_divisor)
    return slide_inference(apply_fn, x, crop_size, stride, size_divisor)

  probs, views = None, 0
  for ratio in ratios:
    scaled = resize_bilinear(images, scaled_size(size, ratio, size_divisor))
    for flipped in ((False, True) if flip else (False,)):
      view = scaled[:, :, ::-1] if flipped else scaled
      view_probs = jax.nn.softmax(resize_bilinear(infer(view), size), axis=-1)
      view_probs = view_probs[:, :, ::-1] if flipped else view_probs
      probs = view_probs if probs is None else probs + view_probs
      views += 1
  return probs / views


def infer_valid_regions(infer_fn: InferFn, images: np.ndarray, image_size: np.ndarray) -> np.ndarray:
  """Runs ``infer_fn`` on each example's valid region of a padded eval batch (host-side).

  Examples with the same valid ``image_size`` (h, w) are cropped to it and inferred together (``infer_fn`` is,
  e.g., a jitted ``functools.partial(aug_inference, apply_fn, ratios=..., flip=True)``, so it compiles once per
  distinct size). The (B, H, W, K) float32 result holds each example's output in its valid region and zeros in
  the padding.
  """
  images = np.asarray(images)
  image_size = np.asarray(image_size).astype(np.int64)
  if image_size.shape != (images.shape[0], 2):
    raise ValueError(f"image_size must be (B, 2) = {(images.shape[0], 2)}, got {image_size.shape}")
  if np.any(image_size < 1) or np.any(image_size > np.asarray(images.shape[1:3])):
    raise ValueError(f"image_size {image_size.tolist()} must lie within the padded size {images.shape[1:3]}")
  result: Optional[np.ndarray] = None
  for h, w in sorted({(int(h), int(w)) for h, w in image_size}):
    members = np.flatnonzero((image_size[:, 0] == h) & (image_size[:, 1] == w))
    outputs = np.asarray(infer_fn(jnp.asarray(images[members, :h, :w])), dtype=np.float32)
    if result is None:
      result = np.zeros(images.shape[:3] + outputs.shape[-1:], np.float32)
    result[members, :h, :w] = outputs
  return result
