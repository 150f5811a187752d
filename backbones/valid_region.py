"""Valid regions inside padded canvases: every example of a batch holds an image of its own size (``image_size``
or ``valid_hw``, (B, 2) int (h, w), traced) at the top-left of a canvas shared by the batch.

Networks run on the canvas and re-impose zeros outside each example's region before every convolution, so
that the region's outputs equal those of the image alone, which convolutions see zero-padded.
"""

from typing import Optional, Tuple

import jax.numpy as jnp


def valid_mask(valid_hw: jnp.ndarray, hw: Tuple[int, int]) -> jnp.ndarray:
  """(B, H, W) bool: True inside each example's ``valid_hw`` region of an ``hw`` canvas."""
  valid_hw = jnp.asarray(valid_hw)
  rows = jnp.arange(hw[0])[None, :, None] < valid_hw[:, 0, None, None]
  cols = jnp.arange(hw[1])[None, None, :] < valid_hw[:, 1, None, None]
  return rows & cols


def zero_outside(x: jnp.ndarray, valid_hw: Optional[jnp.ndarray]) -> jnp.ndarray:
  """An NHWC map with zeros outside each example's valid region (``x`` itself when ``valid_hw`` is None)."""
  if valid_hw is None:
    return x
  return jnp.where(valid_mask(valid_hw, x.shape[1:3])[..., None], x, jnp.zeros((), x.dtype))


def scaled_sizes(valid_hw: jnp.ndarray, stride: int) -> jnp.ndarray:
  """Valid sizes of a map ``stride`` times coarser: ``floor(hw / stride)`` (the size of a stride-``stride``
  map of the image alone, for CrossFormer's embeddings and merges and backbones of the same rule)."""
  return jnp.asarray(valid_hw) // stride
