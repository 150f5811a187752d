"""UPerNet decode head (mmseg ``UPerHead`` with its ``PPM``) and the auxiliary ``FCNHead``."""

from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from heads import valid_region
from heads.layers import ConvModule, Dtype, Features, adaptive_avg_pool, feature_list, resize_bilinear
from heads.segmentation.base import classify, select_levels, select_sizes


class UPerHead(nn.Module):
  """mmseg ``UPerHead`` (Xiao et al., Unified Perceptual Parsing).

  A pyramid pooling module (adaptive average pools of the coarsest level at ``pool_scales``, 1x1
  ``ConvModule`` each, bilinear upsampling back, concat with the input, 3x3 ``bottleneck``) forms the top of an
  FPN: 1x1 laterals on the other levels, bilinear top-down sums, 3x3 ``fpn_convs``; all levels are then
  upsampled to the finest one, concatenated, fused by the 3x3 ``fpn_bottleneck`` and classified.

  Attributes:
    num_classes: classifier outputs.
    channels: width of every internal map (512 in the UPerNet recipes).
    pool_scales: PPM output sizes.
    in_index: levels of the input to use (all when ``None``).
    dropout: ``Dropout2d`` rate before the classifier.
    norm: norm of the ``ConvModule``s (mmseg recipes: SyncBN, i.e. ``"batch"``).
    norm_axis_name: cross-device axis for SyncBN under ``pmap``/``shard_map``.
    dtype: compute dtype.
  """
  num_classes: int
  channels: int = 512
  pool_scales: Sequence[int] = (1, 2, 3, 6)
  in_index: Optional[Tuple[int, ...]] = None
  dropout: float = 0.1
  norm: str = "batch"
  norm_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  def _conv(self, kernel_size: int, name: str) -> ConvModule:
    return ConvModule(self.channels, kernel_size, norm=self.norm, norm_axis_name=self.norm_axis_name,
                      dtype=self.dtype, name=name)

  @nn.compact
  def __call__(self, inputs: Features, train: bool = False,
               valid_sizes: Optional[Sequence[jnp.ndarray]] = None) -> jnp.ndarray:
    """Returns logits (B, H0, W0, num_classes) at the finest selected level's resolution.

    ``valid_sizes``: canvas inference, one (B, 2) valid size per input level (``heads.valid_region``): zeros
    before every 3x3 conv, PPM bins and every resize computed from the valid sizes, so each example's logits
    in its valid region of the finest level are those of its region alone."""
    levels = select_levels(inputs, self.in_index)
    sizes = select_sizes(valid_sizes, len(feature_list(inputs)), self.in_index) or (None,) * len(levels)
    zero = valid_region.zero_outside

    def resize(x, i, j):  # level i's map to level j's size
      if sizes[i] is None:
        return resize_bilinear(x, levels[j].shape[1:3])
      return valid_region.resize_bilinear_valid(x, sizes[i], sizes[j], levels[j].shape[1:3])

    top, top_valid = levels[-1], sizes[-1]
    psp_outs = [top]
    for j, scale in enumerate(self.pool_scales):
      if top_valid is None:
        pooled = self._conv(1, f"psp_modules_{j}")(adaptive_avg_pool(top, scale), train)
        psp_outs.append(resize_bilinear(pooled, top.shape[1:3]))
      else:
        pooled = valid_region.adaptive_avg_pool_valid(top, top_valid, scale)
        pooled = self._conv(1, f"psp_modules_{j}")(pooled, train)
        pooled_valid = jnp.full_like(top_valid, scale)
        psp_outs.append(valid_region.resize_bilinear_valid(pooled, pooled_valid, top_valid, top.shape[1:3]))
    laterals = [self._conv(1, f"lateral_convs_{i}")(x, train) for i, x in enumerate(levels[:-1])]
    laterals.append(self._conv(3, "bottleneck")(zero(jnp.concatenate(psp_outs, axis=-1), top_valid), train))

    last = len(levels) - 1
    for i in range(last, 0, -1):
      laterals[i - 1] = laterals[i - 1] + resize(laterals[i], i, i - 1)
    outs = [self._conv(3, f"fpn_convs_{i}")(zero(x, sizes[i]), train) for i, x in enumerate(laterals[:-1])]
    outs.append(laterals[-1])
    outs = [outs[0]] + [resize(x, i + 1, 0) for i, x in enumerate(outs[1:])]
    output = self._conv(3, "fpn_bottleneck")(zero(jnp.concatenate(outs, axis=-1), sizes[0]), train)
    return classify(output, self.num_classes, self.dropout, train, self.dtype)


class FCNHead(nn.Module):
  """mmseg ``FCNHead`` as used for the auxiliary loss: ``num_convs`` convs on one level, then the classifier.

  Attributes:
    num_classes: classifier outputs.
    channels: width of the convs (256 for the UPerNet auxiliary head).
    in_index: the level to use (2 = stride 16, ``stage_3``).
    num_convs: number of ``ConvModule``s (0 requires ``channels`` equal to the input channels).
    kernel_size: conv kernel size.
    dilation: conv dilation.
    concat_input: concatenate the input with the conv output and fuse with one more conv (``conv_cat``).
    dropout: ``Dropout2d`` rate before the classifier.
    norm: norm of the ``ConvModule``s.
    norm_axis_name: cross-device axis for SyncBN under ``pmap``/``shard_map``.
    dtype: compute dtype.
  """
  num_classes: int
  channels: int = 256
  in_index: int = 2
  num_convs: int = 1
  kernel_size: int = 3
  dilation: int = 1
  concat_input: bool = False
  dropout: float = 0.1
  norm: str = "batch"
  norm_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: Features, train: bool = False,
               valid_sizes: Optional[Sequence[jnp.ndarray]] = None) -> jnp.ndarray:
    """Returns logits (B, h, w, num_classes) at the resolution of level ``in_index``; ``valid_sizes`` (one
    (B, 2) per input level): canvas inference, zeros outside each example's valid region before every conv."""
    (x,) = select_levels(inputs, (self.in_index,))
    (valid,) = select_sizes(valid_sizes, len(feature_list(inputs)), (self.in_index,)) or (None,)
    zero = valid_region.zero_outside
    if self.num_convs == 0 and x.shape[-1] != self.channels:
      raise ValueError(f"num_convs=0 needs channels ({self.channels}) == input channels ({x.shape[-1]})")
    output = x
    for k in range(self.num_convs):
      output = ConvModule(self.channels, self.kernel_size, dilation=self.dilation, norm=self.norm,
                          norm_axis_name=self.norm_axis_name, dtype=self.dtype,
                          name=f"convs_{k}")(zero(output, valid), train)
    if self.concat_input:
      output = ConvModule(self.channels, self.kernel_size, padding=self.kernel_size // 2, norm=self.norm,
                          norm_axis_name=self.norm_axis_name, dtype=self.dtype,
                          name="conv_cat")(zero(jnp.concatenate([x, output], axis=-1), valid), train)
    return classify(output, self.num_classes, self.dropout, train, self.dtype)
