"""Group attention with the dynamic position bias (DPB) of CrossFormer.

Two costs of a naive implementation are avoided, without changing any number of the forward pass:

* The DPB table is expanded to the ``(heads, N, N)`` bias by slicing and reshaping
  (:func:`expand_relative`), not by a gather: the gradient of a gather is a scatter-add, which XLA runs
  serially on CPU; the gradient of slices and reshapes is pads and sums.
* No ``(N, N)`` matrix is kept for the backward pass (:func:`lean.attention` recomputes the probabilities),
  and long groups (v1 LDA keeps the interval fixed, so at 800x1344 every stage has 1050-token groups)
  are processed a chunk of groups at a time when the scores of one call would exceed ``chunk_bytes``,
  so only one chunk's scores are alive at a time, in both passes.
"""

from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backbones.crossformer import lean
from backbones.crossformer.grouping import relative_offsets
from backbones.crossformer.layers import LayerNorm

Dtype = Any
# Score bytes (float32 scores of one call, all groups and heads) above which the groups are chunked.
DEFAULT_CHUNK_BYTES = 32 * 2 ** 20


def _toeplitz_last(t: jnp.ndarray, n: int) -> jnp.ndarray:
  """``(..., 2n-1) -> (..., n, n)`` with ``out[..., i, j] = t[..., i - j + n - 1]``, by slicing only."""
  if n == 1:
    return t[..., None]
  length = 2 * n - 1
  flipped = t[..., ::-1]  # out[i, j] = flipped[n - 1 - i + j]
  tiled = jnp.tile(flipped, (1,) * (t.ndim - 1) + (n,))
  # Row i of a (n, 2n-2) view starting at n-1 begins at flipped[(n-1-i) mod (2n-1)]: no wrap for j < n.
  rows = tiled[..., n - 1:n - 1 + n * (length - 1)].reshape(t.shape[:-1] + (n, length - 1))
  return rows[..., :n]


def expand_relative(table: jnp.ndarray, group_hw: Tuple[int, int]) -> jnp.ndarray:
  """DPB values per offset ``((2Gh-1)(2Gw-1), heads)`` -> bias ``(heads, N, N)`` for every (query, key).

  Equal to ``table[relative_offsets(group_hw)[1]]`` transposed to heads first (see
  :func:`grouping.relative_offsets`), computed without a gather.
  """
  gh, gw = group_hw
  heads = table.shape[-1]
  pos = table.T.reshape(heads, 2 * gh - 1, 2 * gw - 1)
  pos = _toeplitz_last(pos, gw)                                   # (heads, 2gh-1, wq, wk)
  pos = _toeplitz_last(pos.transpose(0, 2, 3, 1), gh)             # (heads, wq, wk, hq, hk)
  return pos.transpose(0, 3, 1, 4, 2).reshape(heads, gh * gw, gh * gw)


class DynamicPosBias(nn.Module):
  """MLP from raw relative offsets ``(dh, dw)`` to one bias per head (official ``residual=False``).

  ``pos_proj -> [LN, ReLU, Linear] x 3``; evaluated on the ``(2Gh-1)(2Gw-1)`` offsets of whatever group
  shape occurs and expanded to ``(heads, N, N)``, so any group shape works with the same weights.
  """
  num_heads: int
  pos_dim: int

  @nn.compact
  def __call__(self, group_hw: Tuple[int, int]) -> jnp.ndarray:
    table, _ = relative_offsets(group_hw)
    # In the parameters' precision (float32, or float64 under x64): the MLP is tiny.
    pos = nn.Dense(self.pos_dim, name="pos_proj")(jnp.asarray(table))
    for i, width in ((1, self.pos_dim), (2, self.pos_dim), (3, self.num_heads)):
      pos = LayerNorm(name=f"pos{i}_norm")(pos)
      pos = nn.Dense(width, name=f"pos{i}_linear")(nn.relu(pos))
    return expand_relative(pos, group_hw)


def attend(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, bias: jnp.ndarray,
           key_bias: Optional[jnp.ndarray], softmax_dtype: Dtype,
           weights_fn: Optional[Callable[[jnp.ndarray], jnp.ndarray]] = None) -> jnp.ndarray:
  """The plain formula of :func:`lean.attention` (the reference its backward pass is tested against, and
  the path of attention dropout, which needs the weights).

  Softmax attention of ``(B, G, N, H, D)`` queries (already scaled), keys and values; ``bias``
  ``(H, N, N)`` is added to every group's scores, ``key_bias`` ``(G, N)`` or ``(B', G, Nq', N)`` (or None;
  :func:`lean.key_bias_4d`) to every query's scores of that group; the softmax runs in ``softmax_dtype``;
  ``weights_fn`` (e.g. dropout) is applied to the weights. Returns ``(B, G, N, H, D)``.
  """
  scores = jnp.einsum("bgqhd,bgkhd->bghqk", q, k).astype(softmax_dtype) + bias
  if key_bias is not None:
    scores = scores + lean.key_bias_4d(key_bias)[:, :, None, :, :]
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  if weights_fn is not None:
    weights = weights_fn(weights)
  return jnp.einsum("bghqk,bgkhd->bgqhd", weights, v)


def groups_per_chunk(batch: int, groups: int, heads: int, tokens: int, chunk_bytes: Optional[int]) -> int:
  """The most groups per chunk (a divisor of ``groups``) whose float32 scores fit in ``chunk_bytes``.

  Returns ``groups`` (no chunking) when all scores fit or ``chunk_bytes`` is None.
  """
  per_group = 4 * batch * heads * tokens * tokens
  if chunk_bytes is None or per_group * groups <= chunk_bytes:
    return groups
  fits = max(1, chunk_bytes // per_group)
  return max(c for c in range(1, groups + 1) if groups % c == 0 and c <= fits)


class GroupAttention(nn.Module):
  """Multi-head self-attention inside groups, plus DPB and the key-padding bias.

  Input ``(B, nG, N, C)`` grouped tokens; output the same shape after the output projection.
  ``chunk_bytes``: score bytes above which groups are processed in chunks (None: never).
  """
  num_heads: int
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  attn_drop: float = 0.0
  dtype: Dtype = jnp.float32
  chunk_bytes: Optional[int] = DEFAULT_CHUNK_BYTES

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
    bias = DynamicPosBias(self.num_heads, c // 16, name="pos")(group_hw)
    key_bias = None if key_bias is None else jnp.asarray(key_bias)
    if train and self.attn_drop > 0.0:  # dropout needs the weights: the plain path (official rate is 0)
      out = attend(q * scale, k, v, bias, key_bias, softmax_dtype,
                   weights_fn=nn.Dropout(self.attn_drop, deterministic=False))
    else:
      chunk = groups_per_chunk(b, ng, self.num_heads, n, self.chunk_bytes)
      out = lean.attention(q * scale, k, v, bias, key_bias, softmax_dtype, chunk)
    return nn.Dense(c, dtype=self.dtype, name="proj")(out.reshape(b, ng, n, c))
