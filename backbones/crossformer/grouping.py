"""How a CrossFormer block splits a feature map into attention groups (SDA and LDA), decided per call.

Everything here is static Python on shapes, evaluated at trace time: the official PyTorch block mutates
itself when a map is small (``lsda_flag``/``group_size``), which makes its outputs depend on call
history; here the decision is recomputed from the actual map size on every call.
"""

import dataclasses
from typing import Optional, Tuple

import jax.numpy as jnp
import numpy as np

LDA_MODES = ("v1", "main")
# The official code adds this finite value to the scores of padded keys (not -inf).
MASK_VALUE = -1e6


@dataclasses.dataclass(frozen=True)
class GroupPlan:
  """Static description of one block's grouping for a given map size.

  A padded map of ``padded_hw`` is split into ``regions`` of ``group_hw * interval`` tokens per side;
  inside a region, token ``(a * interval + i, b * interval + j)`` goes to group ``(i, j)`` at slot
  ``(a, b)``. SDA is ``interval == 1``; v1 LDA is one region per side; main LDA has G x G groups.
  """
  long_distance: bool
  group_hw: Tuple[int, int]
  interval: int
  regions: Tuple[int, int]
  height: int
  width: int

  @property
  def padded_hw(self) -> Tuple[int, int]:
    return tuple(r * g * self.interval for r, g in zip(self.regions, self.group_hw))

  @property
  def needs_mask(self) -> bool:
    return self.padded_hw != (self.height, self.width)

  @property
  def group_tokens(self) -> int:
    return self.group_hw[0] * self.group_hw[1]

  @property
  def num_groups(self) -> int:
    return self.regions[0] * self.regions[1] * self.interval ** 2


def _ceil_to(n: int, m: int) -> int:
  return -(-n // m) * m


def plan_groups(height: int, width: int, group_size: int, interval: int, long_distance: bool,
                lda_mode: str = "v1") -> GroupPlan:
  """The grouping the official block uses for a ``height x width`` map.

  Args:
    height, width: the stage's map size for this call.
    group_size: G, the SDA group side (and main-mode LDA group side).
    interval: I, the LDA sampling interval.
    long_distance: whether the block is an LDA block (odd block index in a stage).
    lda_mode: ``"v1"`` (paper / released checkpoints: fixed interval, group of ``Hp/I x Wp/I``) or
      ``"main"`` (CrossFormer++ code: fixed G x G groups in regions of ``G*I``).
  """
  if lda_mode not in LDA_MODES:
    raise ValueError(f"lda_mode must be one of {LDA_MODES}, got {lda_mode!r}")
  if min(height, width) <= group_size:
    # Small-map fallback: every block becomes SDA over (almost) the whole map.
    long_distance = False
    # v1 uses min(H, W) (so W may be split in several groups); main one square group of max(H, W).
    group_size = min(height, width) if lda_mode == "v1" else max(height, width)
  if not long_distance:
    hp, wp = _ceil_to(height, group_size), _ceil_to(width, group_size)
    return GroupPlan(False, (group_size, group_size), 1, (hp // group_size, wp // group_size),
                     height, width)
  if lda_mode == "v1":
    hp, wp = _ceil_to(height, interval), _ceil_to(width, interval)
    return GroupPlan(True, (hp // interval, wp // interval), interval, (1, 1), height, width)
  span = group_size * interval
  hp, wp = _ceil_to(height, span), _ceil_to(width, span)
  return GroupPlan(True, (group_size, group_size), interval, (hp // span, wp // span), height, width)


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
  padded = ~((np.arange(hp)[:, None] < plan.height) & (np.arange(wp)[None, :] < plan.width))
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
