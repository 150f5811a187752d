"""RetinaNet head (mmdet 2.x ``RetinaHead``), shared across pyramid levels."""

import math
from typing import Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp

from heads.conv import Conv2d
from heads.layers import ConvModule, Dtype

# mmdet's RetinaHead init: every conv ``normal(std=0.01)``, zero bias; the classifier bias from a prior.
head_normal_init = nn.initializers.normal(stddev=0.01)


def prior_prob_bias(prior_prob: float) -> float:
  """Classifier bias ``-log((1 - p) / p)`` that makes every initial sigmoid score equal ``p``."""
  if not 0.0 < prior_prob < 1.0:
    raise ValueError(f"prior_prob must be in (0, 1), got {prior_prob}")
  return -math.log((1.0 - prior_prob) / prior_prob)


class RetinaHead(nn.Module):
  """Two towers of ``stacked_convs`` 3x3 conv + ReLU, then a 3x3 classifier and a 3x3 box regressor.

  The same weights are applied to every level. For a level of size ``H x W`` the outputs are flattened to
  ``(B, H * W * A, num_classes)`` logits and ``(B, H * W * A, 4)`` deltas, location-major then anchor, the
  order of ``AnchorGenerator.grid_anchors`` (and of mmdet's ``permute(0, 2, 3, 1).reshape``).

  Attributes:
    num_classes: foreground classes (sigmoid classification, no background logit).
    num_anchors: anchors per location.
    feat_channels: channels of the tower convs.
    stacked_convs: convs per tower.
    prior_prob: initial foreground probability of the classifier.
    norm: norm of the tower convs (``"none"`` for RetinaNet; see ``heads.layers.make_norm``).
    norm_axis_name: cross-device axis for SyncBN under ``pmap``/``shard_map``.
    dtype: compute dtype (outputs keep it; losses cast to float32).
  """
  num_classes: int
  num_anchors: int = 9
  feat_channels: int = 256
  stacked_convs: int = 4
  prior_prob: float = 0.01
  norm: str = "none"
  norm_axis_name: Optional[str] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, features: Sequence[jnp.ndarray], train: bool = False
               ) -> Tuple[Tuple[jnp.ndarray, ...], Tuple[jnp.ndarray, ...]]:
    """Returns per-level ``(cls_logits, box_deltas)`` for NHWC ``features`` ordered fine to coarse."""
    if self.num_classes < 1 or self.num_anchors < 1:
      raise ValueError(f"need num_classes >= 1 and num_anchors >= 1, got {self.num_classes} and "
                       f"{self.num_anchors}")

    def tower(prefix: str):
      return [ConvModule(self.feat_channels, 3, norm=self.norm, norm_axis_name=self.norm_axis_name,
                         kernel_init=head_normal_init, dtype=self.dtype, name=f"{prefix}_{i}")
              for i in range(self.stacked_convs)]

    cls_convs, reg_convs = tower("cls_convs"), tower("reg_convs")
    retina_cls = Conv2d(self.num_anchors * self.num_classes, (3, 3), padding=((1, 1), (1, 1)),
                        kernel_init=head_normal_init,
                        bias_init=nn.initializers.constant(prior_prob_bias(self.prior_prob)),
                        dtype=self.dtype, name="retina_cls")
    retina_reg = Conv2d(self.num_anchors * 4, (3, 3), padding=((1, 1), (1, 1)), kernel_init=head_normal_init,
                        dtype=self.dtype, name="retina_reg")

    cls_outputs, reg_outputs = [], []
    for x in features:
      cls_feat, reg_feat = x, x
      for conv in cls_convs:
        cls_feat = conv(cls_feat, train)
      for conv in reg_convs:
        reg_feat = conv(reg_feat, train)
      b = x.shape[0]
      cls_outputs.append(retina_cls(cls_feat).reshape(b, -1, self.num_classes))
      reg_outputs.append(retina_reg(reg_feat).reshape(b, -1, 4))
    return tuple(cls_outputs), tuple(reg_outputs)
