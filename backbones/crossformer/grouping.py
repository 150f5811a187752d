"""How a CrossFormer block splits a feature map into attention groups (SDA and LDA), decided per call.

Everything here is static Python on shapes, evaluated at trace time: the official PyTorch block mutates
itself when a map is small (``lsda_flag``/``group_size``), which makes its outputs depend on call
history; here the decision is recomputed from the actual map size on every call.
"""

import dataclasses
import math
from typing import Optional, Sequence, Tuple, Union

import jax.numpy as jnp
import numpy as np

LDA_MODES = ("v1", "main")
# CrossFormer++ progressive group size (PGS) schedules of the official ``compute_group_size``.
GROUP_TYPES = ("constant", "linear", "linear_div", "alter", "7_14")
# Official padding placement (classifier ``pad_type``): 0 bottom/right, 1 centred.
PAD_TYPES = (0, 1)
# The official code adds this finite value to the scores of padded keys (not -inf).
MASK_VALUE = -1e6


@dataclasses.dataclass(frozen=True)
class GroupPlan:
  """Static description of one block's grouping for a given map size.

  A padded map of ``padded_hw`` is split into ``regions`` of ``group_hw * interval`` tokens per side;
  inside a region, token ``(a * interval + i, b * interval + j)`` goes to group ``(i, j)`` at slot
  ``(a, b)``. SDA is ``interval == 1``; v1 LDA is one region per side; main LDA has G x G groups.
  The map sits at ``(pad_top, pad_left)`` inside the padded map (0, 0 unless ``pad_type`` 1).
  """
  long_distance: bool
  group_hw: Tuple[int, int]
  interval: int
  regions: Tuple[int, int]
  height: int
  width: int
  pad_top: int = 0
  pad_left: int = 0

  @property
  def padded_hw(self) -> Tuple[int, int]:
    return tuple(r * g * self.interval for r, g in zip(self.regions, self.group_hw))

  @property
  def needs_mask(self) -> bool:
    return self.padded_hw != (self.height, self.width)

  @property
  def pad_widths(self) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    """``((top, bottom), (left, right))`` zero padding around the map."""
    hp, wp = self.padded_hw
    return ((self.pad_top, hp - self.height - self.pad_top),
            (self.pad_left, wp - self.width - self.pad_left))

  @property
  def group_tokens(self) -> int:
    return self.group_hw[0] * self.group_hw[1]

  @property
  def num_groups(self) -> int:
    return self.regions[0] * self.regions[1] * self.interval ** 2


def _ceil_to(n: int, m: int) -> int:
  return -(-n // m) * m


def plan_groups(height: int, width: int, group_size: int, interval: int, long_distance: bool,
                lda_mode: str = "v1", adaptive_interval: bool = False,
                pad_type: int = 0) -> GroupPlan:
  """The grouping the official block uses for a ``height x width`` map.

  Args:
    height, width: the stage's map size for this call.
    group_size: G, the SDA group side (and main-mode LDA group side).
    interval: I, the LDA sampling interval.
    long_distance: whether the block is an LDA block (odd block index in a stage).
    lda_mode: ``"v1"`` (paper / released checkpoints: fixed interval, group of ``Hp/I x Wp/I``) or
      ``"main"`` (CrossFormer++ code: fixed G x G groups in regions of ``G*I``).
    adaptive_interval: main only: ``I = ceil(max(H, W) / G)`` instead of ``interval``.
    pad_type: main only: 0 pads at the bottom/right, 1 splits the padding around the map (the
      official classifier's centred padding, top/left getting the smaller half).
  """
  if lda_mode not in LDA_MODES:
    raise ValueError(f"lda_mode must be one of {LDA_MODES}, got {lda_mode!r}")
  if pad_type not in PAD_TYPES:
    raise ValueError(f"pad_type must be one of {PAD_TYPES}, got {pad_type!r}")
  if lda_mode == "v1" and (adaptive_interval or pad_type):
    raise ValueError("adaptive_interval and pad_type exist only with lda_mode='main' (CrossFormer++ code)")
  if min(height, width) <= group_size:
    # Small-map fallback: every block becomes SDA over (almost) the whole map.
    long_distance = False
    # v1 uses min(H, W) (so W may be split in several groups); main one square group of max(H, W).
    group_size = min(height, width) if lda_mode == "v1" else max(height, width)
  if not long_distance:
    hp, wp = _ceil_to(height, group_size), _ceil_to(width, group_size)
    plan = GroupPlan(False, (group_size, group_size), 1, (hp // group_size, wp // group_size),
                     height, width)
  elif lda_mode == "v1":
    hp, wp = _ceil_to(height, interval), _ceil_to(width, interval)
    return GroupPlan(True, (hp // interval, wp // interval), interval, (1, 1), height, width)
  else:
    if adaptive_interval:
      interval = math.ceil(max(height, width) / group_size)
    span = group_size * interval
    hp, wp = _ceil_to(height, span), _ceil_to(width, span)
    plan = GroupPlan(True, (group_size, group_size), interval, (hp // span, wp // span), height, width)
  if pad_type == 1:
    hp, wp = plan.padded_hw
    plan = dataclasses.replace(plan, pad_top=(hp - height) // 2, pad_left=(wp - width) // 2)
  return plan


def group(x: jnp.ndarray, plan: GroupPlan) -> jnp.ndarray:
  """``(B, Hp, Wp, C)`` -> ``(B, num_groups, group_tokens, C)`` following ``plan``."""
  b, _, _, c = x.shape
  (rh, rw), (gh, gw), i = plan.regions, plan.group_hw, plan.interval
  x = x.reshape(b, rh, gh, i, rw, gw, i, c)
  x = x.transpose(0, 1, 4, 3, 6, 2, 5, 7)
  return x.reshape(b, plan.num_groups, plan.group_tokens, c)


def ungroup(x: jnp.ndarray, plan: GroupPlan) -> jnp.ndarray:
  """Inverse of :func:`group`: ``(B, num_groups, group_tokens, C)`` -> ``(B, Hp, Wp, C)``."""
  b, _, _, c = x.shape
  (rh, rw), (gh, gw), i = plan.regions, plan.group_hw, plan.interval
  x = x.reshape(b, rh, rw, i, i, gh, gw, c)
  x = x.transpose(0, 1, 5, 3, 2, 6, 4, 7)
  return x.reshape(b, rh * gh * i, rw * gw * i, c)


def key_padding_bias(plan: GroupPlan) -> Optional[np.ndarray]:
  """Additive ``(num_groups, group_tokens)`` bias: ``MASK_VALUE`` on padded keys, or None if no padding."""
  if not plan.needs_mask:
    return None
  hp, wp = plan.padded_hw
  rows, cols = np.arange(hp) - plan.pad_top, np.arange(wp) - plan.pad_left
  padded = ~(((rows >= 0) & (rows < plan.height))[:, None] & ((cols >= 0) & (cols < plan.width))[None, :])
  grouped = np.asarray(group(padded[None, :, :, None], plan))[0, :, :, 0]
  return np.where(grouped, MASK_VALUE, 0.0).astype(np.float32)


def relative_offsets(group_hw: Tuple[int, int]) -> Tuple[np.ndarray, np.ndarray]:
  """The DPB inputs and gather index for a ``Gh x Gw`` group.

  Returns the ``((2Gh-1)(2Gw-1), 2)`` table of raw integer offsets ``(dh, dw)`` (meshgrid 'ij' order,
  as float) and the ``(N, N)`` index into it for each (query, key) pair, ``N = Gh * Gw``.
  """
  gh, gw = group_hw
  dh, dw = np.meshgrid(np.arange(1 - gh, gh), np.arange(1 - gw, gw), indexing="ij")
  table = np.stack([dh.ravel(), dw.ravel()], axis=1).astype(np.float32)
  hh, ww = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
  hh, ww = hh.ravel(), ww.ravel()
  index = (hh[:, None] - hh[None, :] + gh - 1) * (2 * gw - 1) + (ww[:, None] - ww[None, :] + gw - 1)
  return table, index.astype(np.int32)


GroupSizes = Union[int, Sequence[int], Sequence[Sequence[int]]]


def progressive_group_sizes(group_sizes: Sequence[int], depths: Sequence[int], resolution: int,
                            group_type: str = "constant") -> Tuple[Tuple[int, ...], ...]:
  """Per-block group sizes of CrossFormer++ (PGS), exactly as the official ``compute_group_size``.

  Args:
    group_sizes: one G per stage (used by ``constant`` and ``7_14``; ignored by the others).
    depths: blocks per stage.
    resolution: ``R = img_size // patch_size[0]``, the stage-1 side of the constructor's *design*
      resolution (never the input's size): the non-constant types scale with it.
    group_type: one of :data:`GROUP_TYPES`.

  Returns:
    One tuple of block group sizes per stage (before the per-call small-map fallback).
  """
  if group_type not in GROUP_TYPES:
    raise ValueError(f"group_type must be one of {GROUP_TYPES}, got {group_type!r}")
  total = sum(depths)
  fraction = None
  if group_type in ("linear", "linear_div", "alter"):
    if resolution <= 4:
      raise ValueError(f"group_type {group_type!r} needs img_size // patch_size[0] > 4, got {resolution}")
    # float64 numpy arange, as the official code: block k gets fraction 4/R + k (1 - 4/R) / total.
    fraction = np.arange(4 / resolution, 1.0, (1 - 4 / resolution) / total)
  sizes, count = [], 0
  for stage, depth in enumerate(depths):
    current = resolution // 2 ** stage
    stage_sizes = []
    for block in range(depth):
      if group_type == "constant":
        size = group_sizes[stage]
      elif group_type == "7_14":
        size = group_sizes[stage] // 2 if stage == 2 and block < 4 else group_sizes[stage]
      else:
        gz = current * fraction[count]
        if group_type != "linear" and gz > current // 2:
          keep_full = gz > current * 3 / 4 if group_type == "linear_div" else count % 2 != 0
          gz = current if keep_full or stage != 2 else current // 2
        size = max(4, int(np.ceil(gz)))
      stage_sizes.append(int(size))
      count += 1
    sizes.append(tuple(stage_sizes))
  return tuple(sizes)


def block_group_sizes(group_sizes: GroupSizes, depths: Sequence[int], img_size: Union[int, Sequence[int]],
                      patch_size: int, group_type: str = "constant") -> Tuple[Tuple[int, ...], ...]:
  """Every block's G from a model's ``group_sizes`` (an int, one per stage, or one list per stage).

  Per-block lists are taken as given (``group_type`` must then be ``constant``); otherwise the PGS
  schedule ``group_type`` is applied at the design resolution ``img_size`` (only its first side
  counts, as in the official code).
  """
  depths = tuple(int(d) for d in depths)
  if isinstance(group_sizes, (int, np.integer)):
    group_sizes = (int(group_sizes),) * len(depths)
  group_sizes = tuple(group_sizes)
  if len(group_sizes) != len(depths):
    raise ValueError(f"group_sizes needs one value (or one list) per stage ({len(depths)}), "
                     f"got {group_sizes}")
  if any(isinstance(g, (list, tuple)) for g in group_sizes):
    lists = tuple(tuple(int(v) for v in g) for g in group_sizes)
    if group_type != "constant":
      raise ValueError(f"per-block group_sizes are taken as given: group_type must be 'constant', "
                       f"got {group_type!r}")
    if tuple(len(g) for g in lists) != depths:
      raise ValueError(f"per-block group_sizes {lists} do not match depths {depths}")
    return lists
  side = img_size[0] if isinstance(img_size, (list, tuple)) else img_size
  return progressive_group_sizes(tuple(int(g) for g in group_sizes), depths, int(side) // patch_size,
                                 group_type)


# --- Canvas inference: one padded canvas, each example's valid region masked (see CrossFormerBlock) ---

def canvas_plan_agrees(valid_h, valid_w, canvas_hw: Tuple[int, int], group_size: int, interval: int,
                       long_distance: bool, lda_mode: str = "v1", adaptive_interval: bool = False, xp=np):
  """Whether a ``valid_h x valid_w`` map (arrays, numpy or traced: ``xp``) makes the same grouping decision as
  its ``canvas_hw`` canvas: the same small-map fallback (``min(H, W) <= G``) and, with ``adaptive_interval``
  LDA, the same interval. Where they agree, the canvas's groups masked to the valid region equal the image's
  own groups (see :func:`valid_key_bias`, :func:`fallback_group_bias`)."""
  canvas_fallback = min(canvas_hw) <= group_size
  agrees = (xp.minimum(valid_h, valid_w) <= group_size) == canvas_fallback
  if adaptive_interval and long_distance and lda_mode == "main" and not canvas_fallback:
    canvas_interval = math.ceil(max(canvas_hw) / group_size)
    agrees = agrees & (-(-xp.maximum(valid_h, valid_w) // group_size) == canvas_interval)
  return agrees


def dense_plan(height: int, width: int) -> GroupPlan:
  """The whole ``height x width`` map as one group (the canvas form of v1's small-map fallback)."""
  return GroupPlan(False, (height, width), 1, (1, 1), height, width)


def valid_key_bias(plan: GroupPlan, valid_hw: jnp.ndarray) -> jnp.ndarray:
  """``(B, num_groups, 1, group_tokens)`` additive bias: ``MASK_VALUE`` on keys outside each example's valid
  ``(h, w)`` region of the (canvas) map (the canvas padding and the plan's own group padding).

  Groups are anchored at the top-left (``pad_type`` 0), so a valid token's group holds the same valid tokens
  at the same offsets in the canvas as in the image alone, plus slots outside it, which this bias masks:
  the official group-padding mask of the image alone, extended to the canvas.
  """
  if plan.pad_top or plan.pad_left:
    raise ValueError("canvas inference needs maps padded at the bottom/right (pad_type 0)")
  hp, wp = plan.padded_hw
  valid_hw = jnp.asarray(valid_hw)
  inside = ((jnp.arange(hp)[None, :, None] < valid_hw[:, 0, None, None])
            & (jnp.arange(wp)[None, None, :] < valid_hw[:, 1, None, None]))
  grouped = group(inside[..., None], plan)[..., 0]  # (B, G, N)
  return jnp.where(grouped, 0.0, MASK_VALUE).astype(jnp.float32)[:, :, None, :]


def fallback_group_bias(height: int, width: int, valid_hw: jnp.ndarray) -> jnp.ndarray:
  """``(B, 1, N, N)`` bias of v1's small-map fallback on a ``height x width`` canvas map taken as one group
  (:func:`dense_plan`): each example's own fallback groups are ``G' x G'`` squares from the top-left with
  ``G' = min(h, w)`` of its valid size (traced), so a (query, key) pair gets 0 when both lie in the same such
  square and the key is valid, ``MASK_VALUE`` otherwise. The DPB depends only on the (query, key) offset,
  so the canvas-wide DPB gives the pairs of one square the same bias as the image's own ``G' x G'`` group.
  """
  valid_hw = jnp.asarray(valid_hw)
  side = jnp.maximum(jnp.minimum(valid_hw[:, 0], valid_hw[:, 1]), 1)[:, None]  # (B, 1)
  rows = jnp.repeat(jnp.arange(height), width)[None]  # (1, N), row-major like group()
  cols = jnp.tile(jnp.arange(width), height)[None]
  key_ok = (rows < valid_hw[:, 0, None]) & (cols < valid_hw[:, 1, None])  # (B, N)
  cell_r, cell_c = rows // side, cols // side  # (B, N)
  same = (cell_r[:, :, None] == cell_r[:, None, :]) & (cell_c[:, :, None] == cell_c[:, None, :])
  return jnp.where(same & key_ok[:, None, :], 0.0, MASK_VALUE).astype(jnp.float32)[:, None]
