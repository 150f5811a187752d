"""Mask R-CNN RoI heads (mmdet ``Shared2FCBBoxHead`` and ``FCNMaskHead``), applied to pooled RoI features."""

from typing import Tuple

import flax.linen as nn
import jax.numpy as jnp

from heads.conv import Conv2d
from heads.layers import Dtype, kaiming_fan_out

# mmdet's init: shared fcs xavier-uniform (ConvFCBBoxHead), fc_cls normal(0.01), fc_reg normal(0.001).
xavier_uniform = nn.initializers.xavier_uniform()


class Shared2FCBBoxHead(nn.Module):
  """Two shared fully connected layers, then the classifier and class-specific box regressor.

  The ``(R, S, S, C)`` NHWC RoI features are flattened C-major (PyTorch's ``(C, S, S)`` flatten), so that
  converted official weights apply unchanged.

  Attributes:
    num_classes: foreground classes; the classifier has ``num_classes + 1`` outputs, background last.
    fc_out_channels: width of the shared fcs (1024).
    num_shared_fcs: shared fcs (2).
    dtype: compute dtype.
  """
  num_classes: int
  fc_out_channels: int = 1024
  num_shared_fcs: int = 2
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, roi_feats: jnp.ndarray, train: bool = False
               ) -> Tuple[jnp.ndarray, jnp.ndarray, jnp.ndarray]:
    """Returns ``(cls_logits (R, K + 1), deltas (R, 4 K), shared_fc_out (R, fc_out_channels))``."""
    del train
    x = jnp.transpose(roi_feats, (0, 3, 1, 2)).reshape(roi_feats.shape[0], -1)
    for i in range(self.num_shared_fcs):
      x = nn.relu(nn.Dense(self.fc_out_channels, kernel_init=xavier_uniform, dtype=self.dtype,
                           name=f"shared_fcs_{i}")(x))
    cls = nn.Dense(self.num_classes + 1, kernel_init=nn.initializers.normal(0.01), dtype=self.dtype,
                   name="fc_cls")(x)
    reg = nn.Dense(4 * self.num_classes, kernel_init=nn.initializers.normal(0.001), dtype=self.dtype,
                   name="fc_reg")(x)
    return cls, reg, x


class FCNMaskHead(nn.Module):
  """``num_convs`` 3x3 conv + ReLU, a 2x2 stride-2 transposed conv + ReLU, a 1x1 conv to per-class logits.

  Attributes:
    num_classes: foreground classes (one mask channel each).
    conv_out_channels: channels of the convs and the deconv (256).
    num_convs: 3x3 convs (4).
    dtype: compute dtype.
  """
  num_classes: int
  conv_out_channels: int = 256
  num_convs: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, roi_feats: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """``(R, S, S, C)`` -> ``(R, 2S, 2S, num_classes)`` mask logits."""
    del train
    x = roi_feats
    for i in range(self.num_convs):
      x = nn.relu(Conv2d(self.conv_out_channels, (3, 3), padding=((1, 1), (1, 1)),
                         kernel_init=kaiming_fan_out, dtype=self.dtype, name=f"convs_{i}")(x))
    x = nn.relu(nn.ConvTranspose(self.conv_out_channels, (2, 2), strides=(2, 2), padding="VALID",
                                 kernel_init=kaiming_fan_out, dtype=self.dtype, name="upsample")(x))
    return Conv2d(self.num_classes, (1, 1), kernel_init=kaiming_fan_out, dtype=self.dtype,
                  name="conv_logits")(x)
