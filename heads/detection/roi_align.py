"""RoIAlign with mmcv semantics (``aligned=True``, adaptive ``sampling_ratio=0``, average) and mmdet's
``SingleRoIExtractor`` level mapping, in JAX with static shapes.

mmcv's kernel, per RoI ``(x1, y1, x2, y2)`` on a map of stride ``s``: ``start = coord / s - 0.5``,
``size = end - start`` (no minimum), ``bin = size / out``, ``g = ceil(size / out)`` samples per bin and axis at
``(start + p * bin) + ((i + 0.5) * bin) / g``, each sample bilinear with mmcv's border rules (0 beyond one pixel
outside the map, clamped to the edge within it), the bin the mean of its ``g_h * g_w`` samples (0 for a
zero-size RoI). Bilinear weights and the border rules factor over the two axes, so a bin is
``sum_{y, x} wy[y] * wx[x] * F[y, x]`` with per-axis weights.

``roi_align`` (feature maps) takes at most ``max_samples`` samples per bin and axis: exact whenever
``ceil(size / out) <= max_samples`` (every RoI of a usual aspect ratio at its mapped level); such a RoI's
samples lie in a window of ``out * samples + 3`` map pixels per axis, which is gathered once and reduced
with per-axis weight matrices. RoIs are sorted by the samples they need and processed in chunks, each with the
smallest window (1, 2, 4 or ``max_samples`` samples) its RoIs fit. A larger RoI is averaged over
``max_samples`` evenly spaced samples per bin instead (gathered sample by sample).
``roi_align_dense`` (single-channel maps such as instance bitmaps) builds the full per-axis weight matrices
and is exact for any RoI size.
"""

from typing import Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

# mmdet's SingleRoIExtractor: RoIs of scale sqrt(w * h) < 2 * finest_scale go to the first level, etc.
FINEST_SCALE = 56.0


def roi_levels(boxes: jnp.ndarray, num_levels: int = 4, finest_scale: float = FINEST_SCALE) -> jnp.ndarray:
  """Level of every ``(..., 4)`` xyxy RoI: ``floor(log2(sqrt(w * h) / finest_scale + 1e-6))`` in ``[0, L)``."""
  scale = jnp.sqrt((boxes[..., 2] - boxes[..., 0]) * (boxes[..., 3] - boxes[..., 1]))
  levels = jnp.floor(jnp.log2(scale / jnp.float32(finest_scale) + jnp.float32(1e-6)))
  return jnp.clip(levels, 0, num_levels - 1).astype(jnp.int32)


def _axis_weights(start: jnp.ndarray, size: jnp.ndarray, length: jnp.ndarray, out: int, max_samples: int
                  ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
  """Per-axis sample neighbours and weights.

  Args:
    start, size: ``(R,)`` float32 RoI start and size in map pixels.
    length: ``(R,)`` int32 map length along the axis.
    out: output bins along the axis.
    max_samples: static bound on the samples per bin.

  Returns:
    ``index (R, out, S, 2)`` int32 neighbours, ``weight (R, out, S, 2)`` float32 (0 for masked samples and
    samples beyond the border), ``grid (R,)`` int32 samples per bin actually used.
  """
  bin_size = size / jnp.float32(out)
  grid = jnp.ceil(size / jnp.float32(out)).astype(jnp.int32)
  grid = jnp.clip(grid, 0, max_samples)
  grid_f = jnp.maximum(grid, 1).astype(jnp.float32)[:, None, None]
  p = jnp.arange(out, dtype=jnp.float32)[None, :, None]
  i = jnp.arange(max_samples, dtype=jnp.float32)[None, None, :]
  b = bin_size[:, None, None]
  pos = (start[:, None, None] + p * b) + ((i + jnp.float32(0.5)) * b) / grid_f
  n = length[:, None, None]
  n_f = n.astype(jnp.float32)
  inside = (pos >= -1.0) & (pos <= n_f) & (jnp.arange(max_samples)[None, None, :] < grid[:, None, None])
  pos = jnp.maximum(pos, 0.0)
  low = pos.astype(jnp.int32)
  at_edge = low >= n - 1
  low = jnp.where(at_edge, n - 1, low)
  high = jnp.where(at_edge, n - 1, low + 1)
  pos = jnp.where(at_edge, low.astype(jnp.float32), pos)
  frac = pos - low.astype(jnp.float32)
  weight = jnp.stack([1.0 - frac, frac], axis=-1) * inside[..., None].astype(jnp.float32)
  return jnp.stack([low, high], axis=-1), weight, grid


def roi_align(features: Sequence[jnp.ndarray], boxes: jnp.ndarray, batch_index: jnp.ndarray,
              levels: jnp.ndarray, strides: Sequence[int], output_size: int, max_samples: int = 4,
              chunk_size: int = 64) -> jnp.ndarray:
  """mmcv ``RoIAlign(output_size, spatial_scale=1/stride, sampling_ratio=0, aligned=True)`` over levels.

  Args:
    features: per level an NHWC ``(B, H_l, W_l, C)`` map (the same ``C`` everywhere).
    boxes: ``(R, 4)`` xyxy RoIs in input pixels.
    batch_index: ``(R,)`` int image of each RoI.
    levels: ``(R,)`` int level of each RoI (``roi_levels``).
    strides: the stride of every level.
    output_size: bins per side.
    max_samples: static bound on the adaptive samples per bin and axis (see the module docstring).
    chunk_size: RoIs processed together (bounds the memory of the gathers).

  Returns:
    ``(R, output_size, output_size, C)`` features in the dtype of ``features``.
  """
  if len(features) != len(strides):
    raise ValueError(f"got {len(features)} feature levels for {len(strides)} strides")
  if boxes.ndim != 2 or boxes.shape[-1] != 4:
    raise ValueError(f"boxes must be (R, 4), got {boxes.shape}")
  dtype = features[0].dtype
  channels = features[0].shape[-1]
  # One flat (sum_l B * H_l * W_l, C) table; a RoI addresses its level by an offset and the level's size.
  table = jnp.concatenate([f.reshape(-1, channels) for f in features], axis=0).astype(jnp.float32)
  sizes = np.array([f.shape[1:3] for f in features], np.int32)
  bases = np.cumsum([0] + [int(np.prod(f.shape[:3])) for f in features])[:-1].astype(np.int32)
  scales = np.array([1.0 / s for s in strides], np.float32)

  levels = levels.astype(jnp.int32)
  height = jnp.asarray(sizes[:, 0])[levels]
  width = jnp.asarray(sizes[:, 1])[levels]
  base = jnp.asarray(bases)[levels] + batch_index.astype(jnp.int32) * height * width
  scale = jnp.asarray(scales)[levels]
  boxes = boxes.astype(jnp.float32)
  start_x = boxes[:, 0] * scale - jnp.float32(0.5)
  start_y = boxes[:, 1] * scale - jnp.float32(0.5)
  size_x = (boxes[:, 2] * scale - jnp.float32(0.5)) - start_x
  size_y = (boxes[:, 3] * scale - jnp.float32(0.5)) - start_y

  def window_weights(idx, weight, start, length, k_win):
    """Per-axis weights on a window of ``k_win`` map pixels from the first sample's low neighbour."""
    first = jnp.minimum(jnp.floor(jnp.maximum(start, 0.0)).astype(jnp.int32), length - 1)
    offset = idx - first[:, None, None, None]
    onehot = offset[..., None] == jnp.arange(k_win)
    dense = (weight[..., None] * onehot).sum(axis=(2, 3))  # (r, out, k_win)
    rows = jnp.minimum(first[:, None] + jnp.arange(k_win)[None, :], length[:, None] - 1)
    return dense, rows

  def windowed(samples, sx, sy, wx_, hy_, w_, h_, base_):
    # Exact when every RoI of the chunk needs <= samples per bin: its samples' neighbours lie in a window of
    # out * samples + 3 pixels per axis.
    k_win = output_size * samples + 3
    iy, wy, gy = _axis_weights(sy, hy_, h_, output_size, samples)
    ix, wx, gx = _axis_weights(sx, wx_, w_, output_size, samples)
    dy, rows = window_weights(iy, wy, sy, h_, k_win)
    dx, cols = window_weights(ix, wx, sx, w_, k_win)
    flat = base_[:, None, None] + rows[:, :, None] * w_[:, None, None] + cols[:, None, :]
    values = table[flat]  # (r, k_win, k_win, C)
    pooled = jnp.einsum("rpy,ryxc->rpxc", dy, values, precision=jax.lax.Precision.HIGHEST)
    pooled = jnp.einsum("rqx,rpxc->rpqc", dx, pooled, precision=jax.lax.Precision.HIGHEST)
    count = jnp.maximum(gy * gx, 1).astype(jnp.float32)
    return pooled / count[:, None, None, None]

  def sampled(sx, sy, wx_, hy_, w_, h_, base_):
    iy, wy, gy = _axis_weights(sy, hy_, h_, output_size, max_samples)
    ix, wx, gx = _axis_weights(sx, wx_, w_, output_size, max_samples)
    r = sx.shape[0]
    flat = base_[:, None, None] + iy.reshape(r, -1)[:, :, None] * w_[:, None, None] + ix.reshape(r, -1)[:, None, :]
    values = table[flat]  # (r, out * S * 2, out * S * 2, C)
    pooled = jnp.einsum("ry,rx,ryxc->ryxc", wy.reshape(r, -1), wx.reshape(r, -1), values)
    k = max_samples * 2
    pooled = pooled.reshape(r, output_size, k, output_size, k, channels).sum(axis=(2, 4))
    count = jnp.maximum(gy * gx, 1).astype(jnp.float32)
    return pooled / count[:, None, None, None]

  # Window tiers: a chunk takes the smallest window its largest RoI fits; RoIs are sorted by the samples they
  # need so that chunks are homogeneous. RoIs needing more than max_samples take the per-sample gather path.
  tiers = sorted({t for t in (1, 2, 4, max_samples) if t <= max_samples})
  need = jnp.maximum(jnp.ceil(size_x / jnp.float32(output_size)), jnp.ceil(size_y / jnp.float32(output_size)))
  branches = [lambda a, t=t: windowed(t, *a) for t in tiers] + [lambda a: sampled(*a)]

  def one_chunk(args):
    chunk_need, rest = args[0], args[1:]
    tier = jnp.searchsorted(jnp.asarray(tiers, jnp.float32), jnp.max(chunk_need), side="left")
    return jax.lax.switch(tier, branches, rest)

  num = boxes.shape[0]
  chunk = max(1, min(chunk_size, num))
  pad = (-num) % chunk
  order = jnp.argsort(need)
  args = (need, start_x, start_y, size_x, size_y, width, height, base)
  args = tuple(jnp.pad(a[order], (0, pad)) for a in args)
  args = tuple(a.reshape(-1, chunk) for a in args)
  out = jax.lax.map(one_chunk, args)
  out = out.reshape(-1, output_size, output_size, channels)[:num]
  out = jnp.zeros_like(out).at[order].set(out)
  return out.astype(dtype)


def _dense_axis_weights(start: jnp.ndarray, size: jnp.ndarray, length: int, out: int) -> jnp.ndarray:
  """``(out, length)`` summed bilinear weights of all adaptive samples of each bin (exact, any RoI size)."""
  bin_size = size / jnp.float32(out)
  grid = jnp.ceil(size / jnp.float32(out))
  grid_f = jnp.maximum(grid, 1.0)
  # A RoI inside the map (size <= length) has at most ceil(length / out) samples per bin.
  max_samples = -(-length // out) + 1
  i = jnp.arange(max_samples, dtype=jnp.float32)
  p = jnp.arange(out, dtype=jnp.float32)[:, None]
  pos = (start + p * bin_size) + ((i[None, :] + jnp.float32(0.5)) * bin_size) / grid_f  # (out, S)
  used = (jnp.arange(max_samples)[None, :] < grid) & (pos >= -1.0) & (pos <= jnp.float32(length))
  pos = jnp.maximum(pos, 0.0)
  low = pos.astype(jnp.int32)
  at_edge = low >= length - 1
  low = jnp.where(at_edge, length - 1, low)
  pos = jnp.where(at_edge, low.astype(jnp.float32), pos)
  frac = pos - low.astype(jnp.float32)
  q = jnp.arange(length)
  w = (jnp.where(q[None, None, :] == low[..., None], 1.0 - frac[..., None], 0.0)
       + jnp.where(q[None, None, :] == jnp.minimum(low + 1, length - 1)[..., None],
                   jnp.where(at_edge, 0.0, frac)[..., None], 0.0))
  return (w * used[..., None]).sum(axis=1)


def roi_align_dense(image: jnp.ndarray, box: jnp.ndarray, output_size: int,
                    spatial_scale: float = 1.0) -> jnp.ndarray:
  """RoIAlign (aligned, adaptive sampling) of one ``(H, W)`` map over one xyxy ``box``; ``(out, out)`` float32.

  Exact for any RoI inside the map (per-axis weight matrices; clip the box to the map first, as mmdet's
  ``crop_and_resize`` does); used for mask targets.
  """
  height, width = image.shape
  box = box.astype(jnp.float32) * jnp.float32(spatial_scale) - jnp.float32(0.5)
  start_x, start_y, end_x, end_y = box[0], box[1], box[2], box[3]
  size_x, size_y = end_x - start_x, end_y - start_y
  wy = _dense_axis_weights(start_y, size_y, height, output_size)
  wx = _dense_axis_weights(start_x, size_x, width, output_size)
  count = jnp.maximum(jnp.ceil(size_y / output_size) * jnp.ceil(size_x / output_size), 1.0)
  out = jnp.einsum("ph,hw,qw->pq", wy, image.astype(jnp.float32), wx, precision=jax.lax.Precision.HIGHEST)
  return out / count
