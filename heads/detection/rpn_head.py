"""RPN head (mmdet ``RPNHead``): a shared 3x3 conv + ReLU, then 1x1 objectness and 1x1 box-delta convs."""

from typing import Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from heads.conv import Conv2d
from heads.layers import Dtype

# mmdet's RPNHead init: every conv normal(std=0.01), zero bias.
rpn_normal_init = nn.initializers.normal(stddev=0.01)


class RPNHead(nn.Module):
  """Objectness logits and DeltaXYWH deltas for ``num_anchors`` anchors per location, on every level.

  Outputs per level are flattened location-major then anchor (the order of ``AnchorGenerator.grid_anchors``):
  ``(B, H_l * W_l * A)`` sigmoid logits and ``(B, H_l * W_l * A, 4)`` deltas (mmdet's channel ``a * 4 + k``).

  Attributes:
    num_anchors: anchors per location (3 in Mask R-CNN).
    feat_channels: channels of the shared 3x3 conv.
    dtype: compute dtype.
  """
  num_anchors: int = 3
  feat_channels: int = 256
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], train: bool = False
               ) -> Tuple[Tuple[jnp.ndarray, ...], Tuple[jnp.ndarray, ...]]:
    """Returns per-level ``(objectness_logits, box_deltas)`` for NHWC ``features``."""
    del train  # no dropout or norm
    conv = Conv2d(self.feat_channels, (3, 3), padding=((1, 1), (1, 1)), kernel_init=rpn_normal_init,
                  dtype=self.dtype, name="rpn_conv")
    cls = Conv2d(self.num_anchors, (1, 1), kernel_init=rpn_normal_init, dtype=self.dtype, name="rpn_cls")
    reg = Conv2d(self.num_anchors * 4, (1, 1), kernel_init=rpn_normal_init, dtype=self.dtype, name="rpn_reg")
    logits, deltas = [], []
    for x in features:
      x = nn.relu(conv(x))
      b = x.shape[0]
      logits.append(cls(x).reshape(b, -1))
      deltas.append(reg(x).reshape(b, -1, 4))
    return tuple(logits), tuple(deltas)
