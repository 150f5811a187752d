"""Group attention with the dynamic position bias (DPB) of CrossFormer."""

from typing import Any, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from backbones.crossformer.grouping import relative_offsets
from backbones.crossformer.layers import LayerNorm

Dtype = Any


class DynamicPosBias(nn.Module):
  """MLP from raw relative offsets ``(dh, dw)`` to one bias per head (official ``residual=False``).

  ``pos_proj -> [LN, ReLU, Linear] x 3``; evaluated on the ``(2Gh-1)(2Gw-1)`` offsets of whatever group
  shape occurs and gathered to ``(heads, N, N)``, so any group shape works with the same weights.
  """
  num_heads: int
  pos_dim: int

  @nn.compact
  def __call__(self, group_hw: Tuple[int, int]) -> jnp.ndarray:
    table, index = relative_offsets(group_hw)
    # In the parameters' precision (float32, or float64 under x64): the MLP is tiny.
    pos = nn.Dense(self.pos_dim, name="pos_proj")(jnp.asarray(table))
    for i, width in ((1, self.pos_dim), (2, self.pos_dim), (3, self.num_heads)):
      pos = LayerNorm(name=f"pos{i}_norm")(pos)
      pos = nn.Dense(width, name=f"pos{i}_linear")(nn.relu(pos))
    n = index.shape[0]
    bias = pos[index.reshape(-1)].reshape(n, n, self.num_heads)
    return bias.transpose(2, 0, 1)


class GroupAttention(nn.Module):
  """Multi-head self-attention inside groups, plus DPB and the key-padding bias.

  Input ``(B, nG, N, C)`` grouped tokens; output the same shape after the output projection.
  """
  num_heads: int
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  attn_drop: float = 0.0
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, group_hw: Tuple[int, int],
               key_bias: Optional[np.ndarray] = None, train: bool = False) -> jnp.ndarray:
    b, ng, n, c = x.shape
    head_dim = c // self.num_heads
    scale = self.qk_scale if self.qk_scale is not None else head_dim ** -0.5
    qkv = nn.Dense(3 * c, use_bias=self.qkv_bias, dtype=self.dtype, name="qkv")(x)
    qkv = qkv.reshape(b, ng, n, 3, self.num_heads, head_dim)
    q, k, v = qkv[..., 0, :, :], qkv[..., 1, :, :], qkv[..., 2, :, :]
    # Softmax in at least float32, also when computing in bfloat16.
    softmax_dtype = jnp.promote_types(self.dtype, jnp.float32)
    scores = jnp.einsum("bgqhd,bgkhd->bghqk", q * scale, k).astype(softmax_dtype)
    scores = scores + DynamicPosBias(self.num_heads, c // 16, name="pos")(group_hw)
    if key_bias is not None:
      scores = scores + jnp.asarray(key_bias)[None, :, None, None, :]
    weights = nn.softmax(scores, axis=-1).astype(self.dtype)
    weights = nn.Dropout(self.attn_drop, deterministic=not train)(weights)
    out = jnp.einsum("bghqk,bgkhd->bgqhd", weights, v).reshape(b, ng, n, c)
    return nn.Dense(c, dtype=self.dtype, name="proj")(out)
