"""Hand-written backward passes that keep only what they need: group attention, the GELU MLP and
LayerNorm.

The forward values are those of the plain formulas (same operations, same order), so parity with the
official code is untouched; only what is saved for the backward pass, and how the backward pass is
computed, change:

* :func:`attention` saves ``q, k, v`` and one log-sum-exp per query (no ``(N, N)`` matrix, and not the
  output, which the projection after it keeps). The backward pass recomputes the probabilities; groups
  are processed ``chunk`` at a time in both passes, so long groups (v1 LDA: 1050 tokens at 800x1344)
  never hold every group's scores at once. Its matmuls run heads-first (see :func:`_heads_first`).
* :func:`gelu_mlp` (``fc2(gelu(fc1(x)))``) saves ``x`` and the pre-activation; the activation and its
  derivative are recomputed in the backward pass.
* :func:`layer_norm` saves its input and one mean and inverse deviation per token, not its output.

Each backward pass makes the residuals it recomputes from depend on the incoming cotangent (it adds
zero times one element of it), so XLA cannot hoist the recomputation into the forward pass, where its
results would stay alive as long as saved values. ``jax.lax.optimization_barrier`` does not do this on
CPU: XLA's CPU pipeline removes the barriers and its scheduler then hoists (which is also why plain
``jax.checkpoint`` saves no memory there).
"""

import functools
from typing import Any, Optional, Tuple

import jax
import jax.numpy as jnp
import numpy as np

Dtype = Any


def _after(cotangent: jnp.ndarray, *residuals: jnp.ndarray):
  """``residuals`` plus zero times one element of ``cotangent``: the same values, computable only after it.

  XLA does not fold ``x * 0`` for floats (NaN semantics), so the dependency survives optimisation; the
  add fuses into the first consumer.
  """
  zero = cotangent.reshape(-1)[0] * 0
  return tuple(r + zero.astype(r.dtype) for r in residuals)


def _chunks(x: jnp.ndarray, chunk: int) -> jnp.ndarray:
  """``(B, G, ...) -> (G/chunk, B, chunk, ...)``."""
  b, g = x.shape[:2]
  return jnp.moveaxis(x.reshape((b, g // chunk, chunk) + x.shape[2:]), 1, 0)


def _unchunk(x: jnp.ndarray) -> jnp.ndarray:
  """Inverse of :func:`_chunks`."""
  x = jnp.moveaxis(x, 0, 1)
  return x.reshape((x.shape[0], x.shape[1] * x.shape[2]) + x.shape[3:])


def _heads_first(x: jnp.ndarray) -> jnp.ndarray:
  """``(B, G, N, H, D) <-> (B, G, H, N, D)``: heads next to the other batch axes of the matmuls.

  With heads between tokens and channels, XLA:CPU lays some attention matmuls out transposed; at batch 4
  the probabilities-times-values product then took 6x longer than four batch-1 products.
  """
  return jnp.swapaxes(x, 2, 3)


def key_bias_4d(key_bias: Optional[jnp.ndarray]) -> Optional[jnp.ndarray]:
  """A key bias as ``(B', G, Nq', Nk)`` (``B'`` 1 or the batch, ``Nq'`` 1 or the queries): ``(G, N)`` (the same
  key padding for every example and query) gains the two unit axes; 4-D biases are returned as they are."""
  if key_bias is None or key_bias.ndim == 4:
    return key_bias
  if key_bias.ndim != 2:
    raise ValueError(f"key_bias must be (G, N) or (B, G, Nq, N), got shape {key_bias.shape}")
  return key_bias[None, :, None, :]


def _scores(q, k, bias, key_bias, softmax_dtype):
  """``(B, g, H, N, D)`` queries and keys -> ``(B, g, H, N, N)`` biased scores in ``softmax_dtype``;
  ``key_bias`` is 4-D (:func:`key_bias_4d`) or None."""
  s = jnp.einsum("bghqd,bghkd->bghqk", q, k).astype(softmax_dtype) + bias
  if key_bias is not None:
    s = s + key_bias[:, :, None, :, :]
  return s


def _forward_chunk(q, k, v, bias, key_bias, softmax_dtype):
  """One chunk's output ``(B, g, H, N, D)`` and log-sum-exp ``(B, g, H, N)``; softmax as jax.nn.softmax."""
  s = _scores(q, k, bias, key_bias, softmax_dtype)
  m = jax.lax.stop_gradient(jnp.max(s, axis=-1, keepdims=True))
  e = jnp.exp(s - m)
  total = jnp.sum(e, axis=-1, keepdims=True)
  out = jnp.einsum("bghqk,bghkd->bghqd", (e / total).astype(v.dtype), v)
  return out, (m + jnp.log(total))[..., 0]


def _map_chunks(fn, chunk: int, *xs):
  """``fn`` over chunks of ``chunk`` groups (``lax.map``); ``None`` inputs pass through as ``None``."""
  g = next(x for x in xs if x is not None).shape[1]
  if chunk >= g:
    return fn(*xs)
  split = [None if x is None else _chunks(x, chunk) for x in xs]
  return jax.tree.map(_unchunk, jax.lax.map(lambda s: fn(*s), split))


@functools.partial(jax.custom_vjp, nondiff_argnums=(5, 6))
def attention(q: jnp.ndarray, k: jnp.ndarray, v: jnp.ndarray, bias: jnp.ndarray,
              key_bias: Optional[jnp.ndarray], softmax_dtype: Dtype, chunk: int) -> jnp.ndarray:
  """Softmax attention of ``(B, G, N, H, D)`` queries (already scaled), keys and values.

  ``bias`` ``(H, N, N)`` is added to every group's scores and ``key_bias`` (or None; it gets no gradient)
  to every query's scores of its group: ``(G, N)`` (the same for every example and query) or
  ``(B', G, Nq', N)`` with ``B'`` 1 or B and ``Nq'`` 1 or N (per-example valid regions, group masks); the
  softmax runs in ``softmax_dtype``. Groups are processed ``chunk`` at a time (``chunk`` must divide ``G``).
  Returns ``(B, G, N, H, D)``.
  """
  return _attention_fwd(q, k, v, bias, key_bias, softmax_dtype, chunk)[0]


def _attention_fwd(q, k, v, bias, key_bias, softmax_dtype, chunk):
  if q.shape[1] % chunk:
    raise ValueError(f"chunk {chunk} must divide the number of groups {q.shape[1]}")
  q, k, v = (_heads_first(t) for t in (q, k, v))
  kb = key_bias_4d(key_bias)  # (B', G, Nq', N): chunked along G with the others
  fn = lambda q, k, v, kb: _forward_chunk(q, k, v, bias, kb, softmax_dtype)
  out, lse = _map_chunks(fn, chunk, q, k, v, kb)
  return _heads_first(out), (q, k, v, bias, key_bias, lse)


def _attention_bwd(softmax_dtype, chunk, residuals, d_out):
  q, k, v, bias, key_bias, lse = residuals  # heads first
  q, k, bias, lse = _after(d_out, q, k, bias, lse)
  d_out = _heads_first(d_out)

  def chunk_grads(q, k, v, kb, lse, d_out):
    s = _scores(q, k, bias, kb, softmax_dtype)
    p = jnp.exp(s - lse[..., None])
    dv = jnp.einsum("bghqk,bghqd->bghkd", p.astype(v.dtype), d_out)
    dp = jnp.einsum("bghqd,bghkd->bghqk", d_out, v).astype(softmax_dtype)
    ds = p * (dp - jnp.sum(p * dp, axis=-1, keepdims=True))
    # Sum over batch and groups as a product with ones: XLA's CPU reduction over leading axes of a
    # fused producer is several times slower (15 ms vs 1 ms for 32 groups of 256 tokens, 3 heads).
    flat = ds.reshape(-1, bias.size)
    d_bias = jnp.dot(jnp.ones((flat.shape[0],), flat.dtype), flat).reshape(bias.shape).astype(bias.dtype)
    ds = ds.astype(q.dtype)
    dq = jnp.einsum("bghqk,bghkd->bghqd", ds, k)
    dk = jnp.einsum("bghqk,bghqd->bghkd", ds, q)
    return dq, dk, dv, d_bias

  kb = key_bias_4d(key_bias)
  args = (q, k, v, kb, lse, d_out)
  if chunk >= q.shape[1]:
    dq, dk, dv, d_bias = chunk_grads(*args)
  else:
    def step(acc, xs):
      dq, dk, dv, d_bias = chunk_grads(*xs)
      return acc + d_bias, (dq, dk, dv)
    split = [None if x is None else _chunks(x, chunk) for x in args]
    d_bias, grads = jax.lax.scan(step, jnp.zeros_like(bias), split)
    dq, dk, dv = (_unchunk(g) for g in grads)
  d_key_bias = None if key_bias is None else jnp.zeros_like(key_bias)
  return _heads_first(dq), _heads_first(dk), _heads_first(dv), d_bias, d_key_bias


attention.defvjp(_attention_fwd, _attention_bwd)


def _gelu_and_grad(h: jnp.ndarray) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Exact GELU ``h * Phi(h)`` and its derivative ``Phi(h) + h * phi(h)``."""
  sqrt_half = np.sqrt(0.5).astype(h.dtype)
  cdf = 0.5 * jax.lax.erfc(-h * sqrt_half)
  pdf = jnp.exp(-0.5 * h * h) * np.asarray(1.0 / np.sqrt(2.0 * np.pi), h.dtype)
  return h * cdf, cdf + h * pdf


def _dense(x, w, b):
  return jax.lax.dot_general(x, w, (((x.ndim - 1,), (0,)), ((), ()))) + b


@jax.custom_vjp
def gelu_mlp(x: jnp.ndarray, w1: jnp.ndarray, b1: jnp.ndarray, w2: jnp.ndarray,
             b2: jnp.ndarray) -> jnp.ndarray:
  """``fc2(gelu(fc1(x)))`` with the exact GELU, on ``(..., C)`` tokens; saves ``x`` and ``fc1(x)``."""
  return _gelu_mlp_fwd(x, w1, b1, w2, b2)[0]


def _gelu_mlp_fwd(x, w1, b1, w2, b2):
  h = _dense(x, w1, b1)
  return _dense(jax.nn.gelu(h, approximate=False), w2, b2), (x, h, w1, w2)


def _gelu_mlp_bwd(residuals, d_y):
  x, h, w1, w2 = residuals
  h, = _after(d_y, h)
  a, da_dh = _gelu_and_grad(h)
  batch_axes = tuple(range(x.ndim - 1))
  flat = lambda t: t.reshape(-1, t.shape[-1])
  d_w2 = jnp.dot(flat(a).T, flat(d_y)).astype(w2.dtype)
  d_b2 = jnp.sum(d_y, axis=batch_axes)
  d_h = jnp.dot(d_y, w2.T) * da_dh
  d_w1 = jnp.dot(flat(x).T, flat(d_h)).astype(w1.dtype)
  d_b1 = jnp.sum(d_h, axis=batch_axes)
  return jnp.dot(d_h, w1.T).astype(x.dtype), d_w1, d_b1, d_w2, d_b2


gelu_mlp.defvjp(_gelu_mlp_fwd, _gelu_mlp_bwd)


def _ln_stats(x: jnp.ndarray, eps: float):
  """Flax's LayerNorm statistics: mean and ``rsqrt(max(0, E[x^2] - E[x]^2) + eps)``, in >= float32."""
  xf = x.astype(jnp.promote_types(x.dtype, jnp.float32))
  mean = jnp.mean(xf, axis=-1, keepdims=True)
  var = jnp.maximum(0.0, jnp.mean(xf * xf, axis=-1, keepdims=True) - mean * mean)
  return mean, jax.lax.rsqrt(var + eps)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def layer_norm(x: jnp.ndarray, scale: jnp.ndarray, bias: jnp.ndarray, eps: float,
               dtype: Dtype) -> jnp.ndarray:
  """LayerNorm over the last axis, computed exactly as ``flax.linen.LayerNorm``, output in ``dtype``."""
  return _layer_norm_fwd(x, scale, bias, eps, dtype)[0]


def _layer_norm_fwd(x, scale, bias, eps, dtype):
  mean, rstd = _ln_stats(x, eps)
  y = ((x - mean) * (rstd * scale) + bias).astype(dtype)
  return y, (x, mean, rstd, scale)


def _layer_norm_bwd(eps, dtype, residuals, d_y):
  del eps, dtype
  x, mean, rstd, scale = residuals
  # All of them: XLA would otherwise share one full-size broadcast of scale or rstd with the forward.
  x, mean, rstd, scale = _after(d_y, x, mean, rstd, scale)
  x_hat = (x - mean) * rstd
  d_y = d_y.astype(x_hat.dtype)
  batch_axes = tuple(range(x.ndim - 1))
  d_scale = jnp.sum(d_y * x_hat, axis=batch_axes).astype(scale.dtype)
  d_bias = jnp.sum(d_y, axis=batch_axes).astype(scale.dtype)
  d_hat = d_y * scale
  d_x = rstd * (d_hat - jnp.mean(d_hat, axis=-1, keepdims=True)
                - x_hat * jnp.mean(d_hat * x_hat, axis=-1, keepdims=True))
  return d_x.astype(x.dtype), d_scale, d_bias


layer_norm.defvjp(_layer_norm_fwd, _layer_norm_bwd)
