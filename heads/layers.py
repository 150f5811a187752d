"""Building blocks shared by the dense-prediction heads (NHWC, Flax linen).

``ConvModule`` follows mmcv's ``ConvModule`` (conv -> norm -> ReLU, conv bias only without a norm, Kaiming
fan-out init); ``make_norm`` is the norm factory every head uses; the resize helpers reproduce PyTorch's
``F.interpolate`` semantics that mmdet/mmseg rely on.
"""

from typing import Any, Callable, Mapping, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from heads.conv import Conv2d

Dtype = Any
Features = Union[Mapping[str, jnp.ndarray], Sequence[jnp.ndarray]]

NORMS = ("batch", "group", "none")
GROUP_NORM_GROUPS = 32
NORM_EPS = 1e-5
# PyTorch BatchNorm updates running stats with momentum 0.1; Flax's momentum is the decay, 1 - 0.1.
BATCH_NORM_MOMENTUM = 0.9

# mmcv ``kaiming_init(conv, mode="fan_out", nonlinearity="relu", distribution="normal")``.
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# mmcv ``xavier_init(conv, distribution="uniform")``, mmdet's FPN conv init.
xavier_uniform = nn.initializers.xavier_uniform()


def make_norm(norm: str, train: bool, *, axis_name: Optional[str] = None, dtype: Optional[Dtype] = None,
              name: Optional[str] = None) -> Optional[nn.Module]:
  """Returns the normalisation layer called ``norm`` (``None`` for ``"none"``).

  Args:
    norm: ``"batch"`` (``nn.BatchNorm``, PyTorch momentum 0.1, eps 1e-5), ``"group"`` (32 groups, eps 1e-5)
      or ``"none"``.
    train: batch statistics (and a ``batch_stats`` update) in training, running averages otherwise.
    axis_name: for ``"batch"``, the mapped axis over which statistics are averaged (SyncBN) under
      ``pmap``/``shard_map``. Leave ``None`` under ``jax.jit`` with sharded global arrays: the batch statistics
      are then already global.
    dtype: compute dtype; statistics and parameters stay float32.
    name: the sub-module name.
  """
  if norm == "batch":
    return nn.BatchNorm(use_running_average=not train, momentum=BATCH_NORM_MOMENTUM, epsilon=NORM_EPS,
                        axis_name=axis_name, dtype=dtype, name=name)
  if norm == "group":
    return nn.GroupNorm(num_groups=GROUP_NORM_GROUPS, epsilon=NORM_EPS, dtype=dtype, name=name)
  if norm == "none":
    return None
  raise ValueError(f"unknown norm {norm!r}; expected one of {NORMS}")


class ConvModule(nn.Module):
  """Conv2d + optional norm + optional ReLU, as mmcv's ``ConvModule`` with ``bias="auto"``.

  Attributes:
    features: output channels.
    kernel_size: square kernel size.
    strides: square stride.
    padding: symmetric zero padding in pixels (PyTorch ``padding``); ``None`` means ``dilation * (k // 2)``.
    dilation: kernel dilation.
    norm: ``"batch"``, ``"group"`` or ``"none"`` (see ``make_norm``). The conv has a bias only with ``"none"``.
    activation: apply ReLU after the norm.
    norm_axis_name: cross-device axis for SyncBN under ``pmap``/``shard_map``.
    kernel_init: conv weight initialiser (Kaiming normal, fan-out, as mmcv).
    dtype: compute dtype (parameters are float32).
    conv_impl: convolution formulation (``heads.conv.CONV_IMPLS``); None picks per backend.
  """
  features: int
  kernel_size: int = 1
  strides: int = 1
  padding: Optional[int] = None
  dilation: int = 1
  norm: str = "batch"
  activation: bool = True
  norm_axis_name: Optional[str] = None
  kernel_init: Callable[..., jnp.ndarray] = kaiming_fan_out
  dtype: Dtype = jnp.float32
  conv_impl: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    """Applies the module to an NHWC map."""
    pad = self.dilation * (self.kernel_size // 2) if self.padding is None else self.padding
    norm = make_norm(self.norm, train, axis_name=self.norm_axis_name, dtype=self.dtype, name="norm")
    x = Conv2d(self.features, (self.kernel_size, self.kernel_size), strides=(self.strides, self.strides),
               padding=((pad, pad), (pad, pad)), kernel_dilation=(self.dilation, self.dilation),
               use_bias=norm is None, kernel_init=self.kernel_init, dtype=self.dtype, impl=self.conv_impl,
               name="conv")(x)
    if norm is not None:
      x = norm(x)
    if self.activation:
      x = nn.relu(x)
    return x


def feature_list(inputs: Features) -> Tuple[jnp.ndarray, ...]:
  """Orders multi-level features fine to coarse: a ``{"stage_1": ..}`` dict by stage number, or a sequence."""
  if isinstance(inputs, Mapping):
    def stage_number(key: str) -> int:
      prefix, _, number = key.rpartition("_")
      if prefix != "stage" or not number.isdigit():
        raise ValueError(f"feature dict keys must be 'stage_<n>', got {key!r}")
      return int(number)
    return tuple(inputs[k] for k in sorted(inputs, key=stage_number))
  if isinstance(inputs, (list, tuple)):
    return tuple(inputs)
  raise ValueError(f"expected a dict of stage features or a list/tuple of maps, got {type(inputs).__name__}")


def resize_bilinear(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """Bilinear resize of an NHWC map to ``size`` = (h, w), PyTorch ``align_corners=False`` semantics.

  Half-pixel centres without anti-aliasing, so downscaling samples like ``F.interpolate`` (and cv2).
  """
  size = (int(size[0]), int(size[1]))
  if tuple(x.shape[1:3]) == size:
    return x
  return jax.image.resize(x, (x.shape[0], *size, x.shape[3]), method="bilinear", antialias=False)


def resize_nearest(x: jnp.ndarray, size: Tuple[int, int]) -> jnp.ndarray:
  """Nearest resize of an NHWC map to ``size``, PyTorch ``F.interpolate(mode="nearest", size=...)`` semantics.

  Source index ``floor(i * in / out)`` (PyTorch's legacy nearest), which differs from ``jax.image.resize``'s
  half-pixel nearest whenever the ratio is not an integer.
  """
  for axis, out in ((1, int(size[0])), (2, int(size[1]))):
    n = x.shape[axis]
    if n != out:
      scale = np.float32(n) / np.float32(out)  # float32, as PyTorch's kernel
      index = np.minimum(np.floor(np.arange(out, dtype=np.float32) * scale).astype(np.int32), n - 1)
      x = jnp.take(x, jnp.asarray(index), axis=axis)
  return x


def adaptive_pool_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) averaging matrix of PyTorch's ``AdaptiveAvgPool`` along one axis.

  Bin i covers ``[floor(i * in / out), ceil((i + 1) * in / out))``; bins may overlap and need not divide evenly.
  """
  matrix = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -((-(i + 1) * in_size) // out_size)
    matrix[i, start:end] = 1.0 / (end - start)
  return matrix


def adaptive_avg_pool(x: jnp.ndarray, output_size: Union[int, Tuple[int, int]]) -> jnp.ndarray:
  """``nn.AdaptiveAvgPool2d(output_size)`` on an NHWC map (any input size); computed in float32."""
  out_h, out_w = (output_size, output_size) if isinstance(output_size, int) else output_size
  ph = jnp.asarray(adaptive_pool_matrix(x.shape[1], out_h))
  pw = jnp.asarray(adaptive_pool_matrix(x.shape[2], out_w))
  pooled = jnp.einsum("ih,bhwc,jw->bijc", ph, x.astype(jnp.float32), pw,
                      precision=jax.lax.Precision.HIGHEST)
  return pooled.astype(x.dtype)
