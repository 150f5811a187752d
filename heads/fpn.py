"""Feature Pyramid Network neck with mmdet/mmseg ``FPN`` semantics (NHWC, Flax linen).

Used by Semantic FPN (``FPN(out_channels=256, num_outs=4)``) and by RetinaNet
(``FPN(out_channels=256, start_level=1, add_extra_convs="on_input", num_outs=5)``).
"""

from typing import Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax.numpy as jnp

from heads import valid_region
from heads.layers import ConvModule, Dtype, Features, feature_list, resize_nearest, xavier_uniform

EXTRA_CONV_SOURCES = ("on_input", "on_lateral", "on_output")


class FPN(nn.Module):
  """mmdet/mmseg ``FPN``: 1x1 laterals, nearest top-down path, 3x3 output convs, optional extra levels.

  Input channels are taken from the inputs. Extra levels (``num_outs`` beyond the used backbone levels) are
  stride-2 3x3 convs when ``add_extra_convs`` names a source, or ``max_pool2d(kernel 1, stride 2)`` of the last
  output when it is ``False``.

  Attributes:
    out_channels: channels of every output level.
    num_outs: number of output levels.
    start_level: index of the first input level used.
    add_extra_convs: ``False``, ``"on_input"`` (the last used input map), ``"on_lateral"`` (the last lateral)
      or ``"on_output"`` (the last FPN output); ``True`` means ``"on_input"`` as in mmdet.
    relu_before_extra_convs: ReLU before every extra conv after the first.
    norm: norm of the lateral and output convs (``"none"`` in the mmdet/mmseg recipes).
    no_norm_on_lateral: keep the laterals without norm even when ``norm`` is set.
    norm_axis_name: cross-device axis for SyncBN under ``pmap``/``shard_map``.
    dtype: compute dtype.
  """
  out_channels: int
  num_outs: int
  start_level: int = 0
  add_extra_convs: Union[bool, str] = False
  relu_before_extra_convs: bool = False
  norm: str = "none"
  no_norm_on_lateral: bool = False
  norm_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  def _conv(self, kernel_size: int, strides: int, norm: str, name: str) -> ConvModule:
    return ConvModule(self.out_channels, kernel_size, strides=strides, norm=norm, activation=False,
                      norm_axis_name=self.norm_axis_name, kernel_init=xavier_uniform, dtype=self.dtype,
                      name=name)

  def output_sizes(self, valid_sizes: Sequence[jnp.ndarray]) -> Tuple[jnp.ndarray, ...]:
    """Valid sizes of the ``num_outs`` outputs from those of the input levels (canvas inference): the used
    levels keep theirs; each extra level (stride-2 conv with padding 1, or ``[::2]``) has ``ceil(size / 2)``."""
    sizes = list(valid_sizes[self.start_level:])
    while len(sizes) < self.num_outs:
      sizes.append(-(-sizes[-1] // 2))
    return tuple(sizes)

  @nn.compact
  def __call__(self, inputs: Features, train: bool = False,
               valid_sizes: Optional[Sequence[jnp.ndarray]] = None) -> Tuple[jnp.ndarray, ...]:
    """Maps NHWC levels ordered fine to coarse (dict or sequence) to ``num_outs`` NHWC levels.

    ``valid_sizes``: canvas inference, one (B, 2) valid size per input level (``heads.valid_region``): zeros
    before every 3x3 conv and the top-down resizes from valid size to valid size, so each example's outputs
    in their valid regions (``output_sizes``) are those of its regions alone."""
    extra_source = "on_input" if self.add_extra_convs is True else self.add_extra_convs
    if extra_source is not False and extra_source not in EXTRA_CONV_SOURCES:
      raise ValueError(f"add_extra_convs must be False, True or one of {EXTRA_CONV_SOURCES}, "
                       f"got {self.add_extra_convs!r}")
    inputs = feature_list(inputs)
    if not 0 <= self.start_level < len(inputs):
      raise ValueError(f"start_level {self.start_level} out of range for {len(inputs)} input levels")
    used = inputs[self.start_level:]
    if self.num_outs < len(used):
      raise ValueError(f"num_outs ({self.num_outs}) must be >= the {len(used)} used input levels")

    sizes = (None,) * self.num_outs if valid_sizes is None else self.output_sizes(valid_sizes)
    zero = valid_region.zero_outside
    lateral_norm = "none" if self.no_norm_on_lateral else self.norm
    laterals = [self._conv(1, 1, lateral_norm, f"lateral_convs_{i}")(x, train) for i, x in enumerate(used)]
    for i in range(len(laterals) - 1, 0, -1):
      if sizes[i] is None:
        top_down = resize_nearest(laterals[i], laterals[i - 1].shape[1:3])
      else:
        top_down = valid_region.resize_nearest_valid(laterals[i], sizes[i], sizes[i - 1], laterals[i - 1].shape[1:3])
      laterals[i - 1] = laterals[i - 1] + top_down
    outs = [self._conv(3, 1, self.norm, f"fpn_convs_{i}")(zero(x, sizes[i]), train) for i, x in enumerate(laterals)]

    for i in range(len(used), self.num_outs):
      if extra_source is False:
        outs.append(outs[-1][:, ::2, ::2])  # max_pool2d(kernel_size=1, stride=2)
        continue
      if i == len(used):
        x = {"on_input": used[-1], "on_lateral": laterals[-1], "on_output": outs[-1]}[extra_source]
      else:
        x = nn.relu(outs[-1]) if self.relu_before_extra_convs else outs[-1]
      outs.append(self._conv(3, 2, self.norm, f"fpn_convs_{i}")(zero(x, sizes[i - 1]), train))
    return tuple(outs)
