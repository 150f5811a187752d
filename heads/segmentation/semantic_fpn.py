"""Semantic FPN decode head: mmseg ``FPNHead`` (Kirillov et al., Panoptic Feature Pyramid Networks)."""

import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from heads import valid_region
from heads.layers import ConvModule, Dtype, Features, feature_list, resize_bilinear
from heads.segmentation.base import classify, select_levels, select_sizes


class FPNHead(nn.Module):
  """mmseg ``FPNHead``: every level is brought to the finest stride and the results are summed.

  Level i passes through ``max(1, log2(stride_i / stride_0))`` 3x3 ``ConvModule``s, each followed by a 2x
  bilinear upsample (``align_corners=False``) unless the level already has the finest stride; the maps are then
  resized to the exact finest shape, summed, and classified (``Dropout2d`` + 1x1 conv). Usually applied to the
  outputs of ``heads.fpn.FPN(out_channels=256, num_outs=4)``.

  Attributes:
    num_classes: classifier outputs.
    feature_strides: stride of each selected level, finest first (mmseg: 4, 8, 16, 32).
    channels: width of the scale heads (128 in the Semantic FPN recipes).
    in_index: levels of the input to use (all when ``None``).
    dropout: ``Dropout2d`` rate before the classifier.
    norm: norm of the ``ConvModule``s (mmseg recipes: SyncBN, i.e. ``"batch"``).
    norm_axis_name: cross-device axis for SyncBN under ``pmap``/``shard_map``.
    dtype: compute dtype.
  """
  num_classes: int
  feature_strides: Sequence[int] = (4, 8, 16, 32)
  channels: int = 128
  in_index: Optional[Tuple[int, ...]] = None
  dropout: float = 0.1
  norm: str = "batch"
  norm_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Features, train: bool = False,
               valid_sizes: Optional[Sequence[jnp.ndarray]] = None) -> jnp.ndarray:
    """Returns logits (B, H0, W0, num_classes) at the finest selected level's resolution.

    ``valid_sizes``: canvas inference, one (B, 2) valid size per input level (``heads.valid_region``); each
    example's logits in its valid region of the finest level are then those of its region alone."""
    levels = select_levels(inputs, self.in_index)
    sizes = select_sizes(valid_sizes, len(feature_list(inputs)), self.in_index)
    strides = tuple(self.feature_strides)
    if len(strides) != len(levels):
      raise ValueError(f"{len(strides)} feature_strides for {len(levels)} input levels")
    if min(strides) != strides[0]:
      raise ValueError(f"feature_strides must start with the finest stride, got {strides}")
    output = None
    for i, (x, stride) in enumerate(zip(levels, strides)):
      num_convs = max(1, int(math.log2(stride) - math.log2(strides[0])))
      valid = None if sizes is None else sizes[i]
      for k in range(num_convs):
        x = ConvModule(self.channels, 3, norm=self.norm, norm_axis_name=self.norm_axis_name, dtype=self.dtype,
                       name=f"scale_heads_{i}_{k}")(valid_region.zero_outside(x, valid), train)
        if stride != strides[0]:
          out_hw = (2 * x.shape[1], 2 * x.shape[2])
          if valid is None:
            x = resize_bilinear(x, out_hw)
          else:
            x, valid = valid_region.resize_bilinear_valid(x, valid, 2 * valid, out_hw), 2 * valid
      if output is None:
        output, output_valid = x, valid
      elif valid is None:
        output = output + resize_bilinear(x, output.shape[1:3])
      else:
        output = output + valid_region.resize_bilinear_valid(x, valid, output_valid, output.shape[1:3])
    return classify(output, self.num_classes, self.dropout, train, self.dtype)
