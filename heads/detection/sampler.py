"""mmdet's ``RandomSampler`` with static shapes: a fixed number of samples, at most a fraction positive."""

import dataclasses
from typing import NamedTuple

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class SamplerConfig:
  """``RandomSampler(num, pos_fraction)`` (``neg_pos_ub=-1``).

  Attributes:
    num: samples per image (RPN 256, RCNN 512).
    pos_fraction: the largest positive fraction (RPN 0.5, RCNN 0.25).
  """
  num: int = 256
  pos_fraction: float = 0.5

  def __post_init__(self):
    if self.num < 1 or not 0.0 < self.pos_fraction <= 1.0:
      raise ValueError(f"need num >= 1 and 0 < pos_fraction <= 1, got {self.num} and {self.pos_fraction}")

  @property
  def max_pos(self) -> int:
    """Positive slots: ``int(num * pos_fraction)`` as mmdet."""
    return int(self.num * self.pos_fraction)


class SampleResult(NamedTuple):
  """Sampled candidates of one image, positives first then negatives, each in ascending candidate order.

  Attributes:
    indices: ``(num,)`` int32 candidate indices (0 in unused slots).
    is_pos: ``(num,)`` bool, a positive sample.
    valid: ``(num,)`` bool, a used slot (fewer than ``num`` when the negatives run out).
    pos_mask, neg_mask: ``(N,)`` bool, the sampled positives / negatives over the candidates.
  """
  indices: jnp.ndarray
  is_pos: jnp.ndarray
  valid: jnp.ndarray
  pos_mask: jnp.ndarray
  neg_mask: jnp.ndarray


def _choose(key: jax.Array, mask: jnp.ndarray, count: jnp.ndarray, slots: int) -> jnp.ndarray:
  """A uniformly random subset of ``min(count, sum(mask))`` candidates of ``mask``, as a boolean mask."""
  priority = jnp.where(mask, jax.random.uniform(key, mask.shape), -1.0)
  k = min(slots, mask.shape[0])
  _, top = jax.lax.top_k(priority, k)
  take = (jnp.arange(k) < count) & mask[top]
  return jnp.zeros(mask.shape, bool).at[top].set(take)


def _ascending(mask: jnp.ndarray, slots: int) -> jnp.ndarray:
  """The first ``slots`` indices where ``mask`` is True, ascending (padded with the candidate count)."""
  n = mask.shape[0]
  keys = jnp.where(mask, jnp.arange(n), n)
  k = min(slots, n)
  out = -jax.lax.top_k(-keys, k)[0]
  return jnp.pad(out, (0, slots - k), constant_values=n)


def random_sample(key: jax.Array, pos: jnp.ndarray, neg: jnp.ndarray, cfg: SamplerConfig) -> SampleResult:
  """Samples ``cfg.num`` candidates: all positives up to ``max_pos`` (a random subset beyond), the rest negatives.

  Args:
    key: PRNG key.
    pos, neg: ``(N,)`` bool candidate masks (disjoint).
    cfg: the sampler settings.
  """
  pos_key, neg_key = jax.random.split(key)
  pos_mask = _choose(pos_key, pos, jnp.int32(cfg.max_pos), cfg.max_pos)
  num_pos = pos_mask.sum()
  neg_mask = _choose(neg_key, neg, cfg.num - num_pos, cfg.num)
  num_neg = neg_mask.sum()
  n = pos.shape[0]
  pos_idx = _ascending(pos_mask, cfg.num)
  neg_idx = _ascending(neg_mask, cfg.num)
  slot = jnp.arange(cfg.num)
  is_pos = slot < num_pos
  indices = jnp.where(is_pos, pos_idx, neg_idx[jnp.clip(slot - num_pos, 0, cfg.num - 1)])
  valid = slot < num_pos + num_neg
  indices = jnp.where(valid & (indices < n), indices, 0).astype(jnp.int32)
  return SampleResult(indices=indices, is_pos=is_pos & valid, valid=valid, pos_mask=pos_mask, neg_mask=neg_mask)
