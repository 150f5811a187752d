"""Building blocks of CrossFormer: cross-scale embeddings, the MLP and stochastic depth."""

import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from backbones.crossformer import lean
from backbones.valid_region import zero_outside

Dtype = Any


class LayerNorm(nn.Module):
  """``nn.LayerNorm`` over the last axis (same parameters, same numbers) with PyTorch's default eps 1e-5
  (Flax: 1e-6), run as :func:`lean.layer_norm`, which does not keep its output for the backward pass."""
  epsilon: float = 1e-5
  dtype: Optional[Dtype] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    features = (x.shape[-1],)
    scale = self.param("scale", nn.initializers.ones_init(), features)
    bias = self.param("bias", nn.initializers.zeros_init(), features)
    dtype = self.dtype or jnp.result_type(x, scale)
    return lean.layer_norm(x, scale, bias, self.epsilon, dtype)
# PyTorch nn.GELU() is the exact erf form (Flax defaults to the tanh approximation).
gelu = functools.partial(nn.gelu, approximate=False)


def split_channels(total: int, num_kernels: int) -> Sequence[int]:
  """Official channel split over kernels: ``total/2, total/4, ...`` with the last two equal."""
  dims = [total // 2 ** (i + 1) for i in range(num_kernels - 1)]
  return dims + [total // 2 ** (num_kernels - 1)]


class CrossScaleEmbedding(nn.Module):
  """Cross-scale embedding layer: parallel convs of several kernel sizes, one stride, channels concatenated.

  Used as the stage-1 patch embedding (kernels 4/8/16/32, stride 4) and as the patch merging between
  stages (kernels 2/4, stride 2). Padding is ``(k - stride) // 2`` on every side, as the official code.

  Attributes:
    out_dim: total output channels, split over kernels by :func:`split_channels`.
    kernel_sizes: one conv per kernel size, the smallest first.
    stride: the common stride.
    norm_first: LayerNorm on the input (patch merging) instead of on the output (patch embedding).
    use_norm: whether to apply the LayerNorm at all (official ``patch_norm``).
    conv_name: prefix of the conv sub-modules (official: ``projs`` in the embedding, ``reductions`` in
      the merging layers).
  """
  out_dim: int
  kernel_sizes: Sequence[int]
  stride: int
  norm_first: bool = False
  use_norm: bool = True
  conv_name: str = "projs"
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, valid_hw: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``valid_hw`` (B, 2): zeros are re-imposed outside each example's valid region (after the norm), as
    the convs' zero padding of the region alone (canvas inference)."""
    if self.norm_first and self.use_norm:
      x = LayerNorm(dtype=self.dtype, name="norm")(x)
    x = zero_outside(x, valid_hw)
    outs = []
    for i, (kernel, dim) in enumerate(zip(self.kernel_sizes,
                                          split_channels(self.out_dim, len(self.kernel_sizes)))):
      pad = (kernel - self.stride) // 2
      outs.append(nn.Conv(dim, (kernel, kernel), strides=(self.stride, self.stride),
                          padding=((pad, pad), (pad, pad)), dtype=self.dtype,
                          name=f"{self.conv_name}_{i}")(x))
    x = jnp.concatenate(outs, axis=-1)
    if not self.norm_first and self.use_norm:
      x = LayerNorm(dtype=self.dtype, name="norm")(x)
    return x


class DenseParams(nn.Module):
  """The parameters of an ``nn.Dense`` (``kernel`` ``(in, out)``, ``bias``; same initialisers), unapplied."""
  features: int

  @nn.compact
  def __call__(self, in_features: int):
    kernel = self.param("kernel", nn.linear.default_kernel_init, (in_features, self.features))
    return kernel, self.param("bias", nn.initializers.zeros_init(), (self.features,))


class Mlp(nn.Module):
  """fc1 -> exact GELU -> fc2 (dropout only in training, rate ``drop``).

  Without dropout it runs as :func:`lean.gelu_mlp`, which keeps only the input and the pre-activation
  for the backward pass; the parameters are those of two ``nn.Dense`` either way.
  """
  hidden_dim: int
  drop: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    out_dim = x.shape[-1]
    w1, b1 = DenseParams(self.hidden_dim, name="fc1")(x.shape[-1])
    w2, b2 = DenseParams(out_dim, name="fc2")(self.hidden_dim)
    x, w1, b1, w2, b2 = nn.dtypes.promote_dtype(x, w1, b1, w2, b2, dtype=self.dtype)
    if not (train and self.drop > 0.0):
      return lean.gelu_mlp(x, w1, b1, w2, b2)
    x = gelu(jnp.dot(x, w1) + b1)
    x = nn.Dropout(self.drop, deterministic=False)(x)
    return nn.Dropout(self.drop, deterministic=False)(jnp.dot(x, w2) + b2)


class DropPath(nn.Module):
  """Stochastic depth: drops the whole residual branch per sample with probability ``rate``."""
  rate: float

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False) -> jnp.ndarray:
    if not train or self.rate == 0.0:
      return x
    keep = 1.0 - self.rate
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    mask = jax.random.bernoulli(self.make_rng("dropout"), keep, shape)
    return jnp.where(mask, x / keep, jnp.zeros_like(x))
