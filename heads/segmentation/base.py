"""Pieces every mmseg-style decode head shares: input selection and the dropout + 1x1 classifier."""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from heads.conv import Conv2d
from heads.layers import Dtype, Features, feature_list

# mmseg ``BaseDecodeHead``: ``normal_init(conv_seg, mean=0, std=0.01)``.
classifier_init = nn.initializers.normal(stddev=0.01)


def select_levels(inputs: Features, in_index: Optional[Sequence[int]]) -> Tuple[jnp.ndarray, ...]:
  """mmseg ``input_transform="multiple_select"``: the levels ``in_index`` (all levels when ``None``)."""
  levels = feature_list(inputs)
  if in_index is None:
    return levels
  for i in in_index:
    if not -len(levels) <= i < len(levels):
      raise ValueError(f"in_index {tuple(in_index)} out of range for {len(levels)} feature levels")
  return tuple(levels[i] for i in in_index)


def select_sizes(valid_sizes: Optional[Sequence[jnp.ndarray]], num_levels: int,
                 in_index: Optional[Sequence[int]]) -> Optional[Tuple[jnp.ndarray, ...]]:
  """The valid sizes (canvas inference, ``heads.valid_region``) of the levels ``select_levels`` picks, or None."""
  if valid_sizes is None:
    return None
  if len(valid_sizes) != num_levels:
    raise ValueError(f"valid_sizes has {len(valid_sizes)} entries for {num_levels} feature levels")
  return tuple(valid_sizes) if in_index is None else tuple(valid_sizes[i] for i in in_index)


def classify(x: jnp.ndarray, num_classes: int, dropout: float, train: bool, dtype: Dtype) -> jnp.ndarray:
  """mmseg ``cls_seg``: ``Dropout2d`` (whole channels per example) then the 1x1 ``conv_seg`` classifier.

  Must be called inside a compact method: the classifier becomes the caller's ``conv_seg`` sub-module.
  """
  if dropout > 0:
    x = nn.Dropout(rate=dropout, broadcast_dims=(1, 2), deterministic=not train, name="dropout")(x)
  return Conv2d(num_classes, (1, 1), kernel_init=classifier_init, dtype=dtype, name="conv_seg")(x)
