"""The resizes and pooling of the heads on padded canvases, seeing only each example's valid region.

Canvas inference (``SegmentationNet(..., image_size=...)``) runs a batch of images of different sizes inside one
shared canvas; each example's map is its top-left valid region (``valid``: (B, 2) int (h, w), traced). These
ops compute, per example, what the plain op (``heads.layers``) computes on the region alone: bilinear
(``align_corners=False``) and nearest (PyTorch legacy) resizes from the valid input size to the valid output
size, with per-example sampling indices and weights built from the traced sizes (gathers), and mmseg's
adaptive average pooling with bins computed from the valid size (per-example pooling matrices). Outside the
valid output region the results are unspecified (callers zero them before any convolution:
``backbones.valid_region.zero_outside``).
"""

from typing import Sequence, Tuple, Union

import jax
import jax.numpy as jnp

from backbones.valid_region import valid_mask, zero_outside

__all__ = ["level_sizes", "resize_bilinear_valid", "resize_nearest_valid", "adaptive_avg_pool_valid",
           "valid_mask", "zero_outside"]


def level_sizes(image_size: jnp.ndarray, canvas_hw: Tuple[int, int],
                levels: Sequence[jnp.ndarray]) -> Tuple[jnp.ndarray, ...]:
  """Valid (B, 2) sizes of feature maps at integer strides of a ``canvas_hw`` input: ``image_size // stride``.

  Raises ``ValueError`` when a map's canvas is not an integer fraction of the input canvas."""
  sizes = []
  for x in levels:
    strides = [canvas_hw[a] // x.shape[1 + a] for a in (0, 1)]
    if any(s * x.shape[1 + a] != canvas_hw[a] for a, s in enumerate(strides)) or strides[0] != strides[1]:
      raise ValueError(f"canvas inference: a {tuple(x.shape[1:3])} feature map is not an integer stride of the "
                       f"{tuple(canvas_hw)} input; use canvases that are multiples of the largest stride")
    sizes.append(jnp.asarray(image_size, jnp.int32) // strides[0])
  return tuple(sizes)


def _bilinear_taps(in_valid: jnp.ndarray, out_valid: jnp.ndarray, out_len: int):
  """(B, out_len) indices ``i0``, ``i1`` and weight ``w1`` of PyTorch's bilinear ``align_corners=False``
  sampling from ``in_valid`` to ``out_valid`` samples (float32, as PyTorch's kernel)."""
  scale = in_valid.astype(jnp.float32) / out_valid.astype(jnp.float32)  # (B,)
  dst = jnp.arange(out_len, dtype=jnp.float32)[None]
  src = jnp.maximum((dst + 0.5) * scale[:, None] - 0.5, 0.0)
  last = (in_valid - 1)[:, None]
  i0 = jnp.minimum(jnp.floor(src).astype(jnp.int32), last)
  i1 = jnp.minimum(i0 + 1, last)
  return i0, i1, src - i0.astype(jnp.float32)


def _take(x: jnp.ndarray, index: jnp.ndarray, axis: int) -> jnp.ndarray:
  """``x[b, index[b, i]]`` along ``axis`` (1 or 2) of an NHWC map."""
  shape = [index.shape[0], 1, 1, 1]
  shape[axis] = index.shape[1]
  return jnp.take_along_axis(x, index.reshape(shape), axis=axis)


def resize_bilinear_valid(x: jnp.ndarray, in_valid: jnp.ndarray, out_valid: jnp.ndarray,
                          out_hw: Tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize (``align_corners=False``) of each example's ``in_valid`` region of an NHWC canvas map
  to its ``out_valid`` region of an ``out_hw`` canvas (``heads.layers.resize_bilinear`` on the region alone).
  Computed in at least float32, returned in ``x``'s dtype."""
  dtype = x.dtype
  y = x.astype(jnp.promote_types(dtype, jnp.float32))
  for axis in (1, 2):
    i0, i1, w1 = _bilinear_taps(in_valid[:, axis - 1], out_valid[:, axis - 1], out_hw[axis - 1])
    shape = [w1.shape[0], 1, 1, 1]
    shape[axis] = w1.shape[1]
    w1 = w1.reshape(shape)
    y = _take(y, i0, axis) * (1.0 - w1) + _take(y, i1, axis) * w1
  return y.astype(dtype)


def resize_nearest_valid(x: jnp.ndarray, in_valid: jnp.ndarray, out_valid: jnp.ndarray,
                         out_hw: Tuple[int, int]) -> jnp.ndarray:
  """Nearest resize (PyTorch legacy: source ``floor(i * in / out)``, float32 scale) of each example's valid
  region to its ``out_valid`` region of an ``out_hw`` canvas (``heads.layers.resize_nearest`` on the region)."""
  for axis in (1, 2):
    n_in, n_out = in_valid[:, axis - 1], out_valid[:, axis - 1]
    scale = n_in.astype(jnp.float32) / n_out.astype(jnp.float32)
    src = jnp.floor(jnp.arange(out_hw[axis - 1], dtype=jnp.float32)[None] * scale[:, None]).astype(jnp.int32)
    x = _take(x, jnp.minimum(src, (n_in - 1)[:, None]), axis)
  return x


def _pool_matrix(in_valid: jnp.ndarray, in_len: int, out_size: int) -> jnp.ndarray:
  """(B, out_size, in_len) ``AdaptiveAvgPool`` matrices of each example's ``in_valid`` samples: bin i
  averages ``[floor(i * n / out), ceil((i + 1) * n / out))`` (``heads.layers.adaptive_pool_matrix``)."""
  n = in_valid[:, None]
  i = jnp.arange(out_size)[None]
  start = (i * n) // out_size
  end = -((-(i + 1) * n) // out_size)
  pos = jnp.arange(in_len)[None, None]
  inside = (pos >= start[..., None]) & (pos < end[..., None])
  return jnp.where(inside, 1.0 / (end - start)[..., None].astype(jnp.float32), 0.0)


def adaptive_avg_pool_valid(x: jnp.ndarray, valid: jnp.ndarray,
                            output_size: Union[int, Tuple[int, int]]) -> jnp.ndarray:
  """``nn.AdaptiveAvgPool2d(output_size)`` of each example's valid region of an NHWC canvas map (float32
  matrices at the highest precision, as ``heads.layers.adaptive_avg_pool``)."""
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  x = zero_outside(x, valid)  # 0 weights must not meet non-finite values
  ph = _pool_matrix(valid[:, 0], x.shape[1], out_h)
  pw = _pool_matrix(valid[:, 1], x.shape[2], out_w)
  pooled = jnp.einsum("bih,bhwc,bjw->bijc", ph, x.astype(jnp.float32), pw, precision=jax.lax.Precision.HIGHEST)
  return pooled.astype(x.dtype)
