"""Anchor generation with mmdet 2.x ``AnchorGenerator`` semantics (static shapes, JAX).

For a level with stride ``s`` the base anchors are centred at ``center_offset * s`` (0 in mmdet 2.x, so the
anchor of feature cell ``(i, j)`` is centred at pixel ``(j * s, i * s)``), with sizes
``s * octave_base_scale * 2 ** (k / scales_per_octave)`` and aspect ratios ``h / w = ratio``. Anchors are
ordered location-major (row, then column) then ratio, then scale, matching a head output
``(B, H, W, A * C)`` reshaped to ``(B, H * W * A, C)``.
"""

import dataclasses
from typing import List, Optional, Sequence, Tuple

import jax.numpy as jnp
import numpy as np

FeatmapSize = Tuple[int, int]


@dataclasses.dataclass(frozen=True)
class AnchorGenerator:
  """mmdet's ``AnchorGenerator`` (square strides, ``scale_major=True``, ``base_sizes`` = strides).

  The defaults are RetinaNet's: 9 anchors per location on P3-P7.

  Attributes:
    strides: stride of each level, in input pixels.
    ratios: aspect ratios ``h / w``.
    octave_base_scale: anchor size of the first octave scale, in units of the stride.
    scales_per_octave: number of scales ``2 ** (k / scales_per_octave)`` per level.
    center_offset: anchor centre offset in units of the stride (mmdet 2.x: 0).
  """
  strides: Tuple[int, ...] = (8, 16, 32, 64, 128)
  ratios: Tuple[float, ...] = (0.5, 1.0, 2.0)
  octave_base_scale: float = 4.0
  scales_per_octave: int = 3
  center_offset: float = 0.0

  def __post_init__(self):
    if not self.strides or min(self.strides) <= 0:
      raise ValueError(f"strides must be positive, got {self.strides}")
    if not self.ratios or min(self.ratios) <= 0:
      raise ValueError(f"ratios must be positive, got {self.ratios}")
    if self.scales_per_octave < 1 or self.octave_base_scale <= 0:
      raise ValueError(f"need scales_per_octave >= 1 and octave_base_scale > 0, got "
                       f"{self.scales_per_octave} and {self.octave_base_scale}")
    if not 0.0 <= self.center_offset < 1.0:
      raise ValueError(f"center_offset must be in [0, 1), got {self.center_offset}")

  @property
  def num_levels(self) -> int:
    """Number of pyramid levels."""
    return len(self.strides)

  @property
  def num_base_anchors(self) -> int:
    """Anchors per feature-map location (the same on every level)."""
    return len(self.ratios) * self.scales_per_octave

  @property
  def scales(self) -> np.ndarray:
    """Anchor scales ``octave_base_scale * 2 ** (k / scales_per_octave)`` (float32, as mmdet)."""
    octave = np.array([2 ** (k / self.scales_per_octave) for k in range(self.scales_per_octave)], np.float32)
    return octave * np.float32(self.octave_base_scale)

  def base_anchors(self, level: int) -> np.ndarray:
    """The ``(A, 4)`` xyxy anchors of location ``(0, 0)`` on ``level`` (ratio-major, then scale)."""
    stride = np.float32(self.strides[level])
    h_ratios = np.sqrt(np.asarray(self.ratios, np.float32))
    w_ratios = np.float32(1.0) / h_ratios
    ws = (stride * w_ratios[:, None] * self.scales[None, :]).reshape(-1)
    hs = (stride * h_ratios[:, None] * self.scales[None, :]).reshape(-1)
    center = np.float32(self.center_offset) * stride
    return np.stack([center - 0.5 * ws, center - 0.5 * hs, center + 0.5 * ws, center + 0.5 * hs], axis=-1)

  def grid_anchors(self, featmap_sizes: Sequence[FeatmapSize]) -> List[jnp.ndarray]:
    """Anchors of every level: ``(H_l * W_l * A, 4)`` xyxy float32 arrays for the given static sizes."""
    self._check_sizes(featmap_sizes)
    anchors = []
    for level, (h, w) in enumerate(featmap_sizes):
      stride = self.strides[level]
      shift_x = jnp.arange(w, dtype=jnp.float32) * stride
      shift_y = jnp.arange(h, dtype=jnp.float32) * stride
      xx = jnp.broadcast_to(shift_x[None, :], (h, w)).reshape(-1)
      yy = jnp.broadcast_to(shift_y[:, None], (h, w)).reshape(-1)
      shifts = jnp.stack([xx, yy, xx, yy], axis=-1)
      anchors.append((jnp.asarray(self.base_anchors(level))[None] + shifts[:, None]).reshape(-1, 4))
    return anchors

  def valid_flags(self, featmap_sizes: Sequence[FeatmapSize], pad_shape: jnp.ndarray) -> List[jnp.ndarray]:
    """mmdet's ``valid_flags``: anchors whose location lies inside the (per-image) padded image.

    Args:
      featmap_sizes: static ``(H_l, W_l)`` of every level.
      pad_shape: ``(..., 2)`` int ``(h, w)`` of the image region before batch padding (mmdet's
        ``pad_shape``); locations ``>= ceil(pad / stride)`` are batch padding.

    Returns:
      Per level, a boolean ``(..., H_l * W_l * A)`` mask.
    """
    self._check_sizes(featmap_sizes)
    pad_shape = jnp.asarray(pad_shape, jnp.int32)
    flags = []
    for level, (h, w) in enumerate(featmap_sizes):
      stride = self.strides[level]
      valid_h = (pad_shape[..., 0, None] + stride - 1) // stride
      valid_w = (pad_shape[..., 1, None] + stride - 1) // stride
      rows = jnp.arange(h) < valid_h
      cols = jnp.arange(w) < valid_w
      valid = rows[..., :, None] & cols[..., None, :]
      valid = jnp.broadcast_to(valid[..., None], (*valid.shape, self.num_base_anchors))
      flags.append(valid.reshape(*valid.shape[:-3], h * w * self.num_base_anchors))
    return flags

  def _check_sizes(self, featmap_sizes: Sequence[FeatmapSize]) -> None:
    if len(featmap_sizes) != self.num_levels:
      raise ValueError(f"got {len(featmap_sizes)} feature maps for {self.num_levels} anchor levels "
                       f"(strides {self.strides})")


def anchor_inside_flags(anchors: jnp.ndarray, valid_flags: jnp.ndarray, image_size: jnp.ndarray,
                        allowed_border: float = -1) -> jnp.ndarray:
  """mmdet's ``anchor_inside_flags``: the anchors used for training.

  With ``allowed_border < 0`` (RetinaNet) every valid anchor is used; otherwise an anchor must also lie
  within ``allowed_border`` pixels of the image ``image_size`` = ``(..., 2)`` ``(h, w)``.
  """
  if allowed_border < 0:
    return valid_flags
  h = image_size[..., 0, None].astype(anchors.dtype)
  w = image_size[..., 1, None].astype(anchors.dtype)
  return (valid_flags & (anchors[..., 0] >= -allowed_border) & (anchors[..., 1] >= -allowed_border)
          & (anchors[..., 2] < w + allowed_border) & (anchors[..., 3] < h + allowed_border))


def padded_image_shape(image_size: jnp.ndarray, size_divisor: Optional[int]) -> jnp.ndarray:
  """mmdet's per-image ``pad_shape``: ``image_size`` rounded up to ``size_divisor`` (unchanged if None)."""
  image_size = jnp.asarray(image_size, jnp.int32)
  if not size_divisor:
    return image_size
  return (image_size + size_divisor - 1) // size_divisor * size_divisor
