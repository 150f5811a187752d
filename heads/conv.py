"""2-D convolution for the heads: ``nn.Conv``'s parameters and results, with a faster kernel gradient on CPU.

On XLA:CPU the forward convolution and its input gradient run well, but the kernel gradient (the
"backward-filter" convolution) is 2-2.5x slower than writing it as one matmul per kernel tap
(``dW[i, j] = x_shifted(i, j)^T dy``, contracting over batch and pixels; see benchmarks/RESULTS.md). ``conv2d``
with ``impl="tap_grad"`` keeps XLA's forward and input gradient and computes the kernel gradient that way;
``impl="xla"`` is the plain ``lax.conv_general_dilated`` (autodiff by XLA). ``impl=None`` picks per backend:
``tap_grad`` on CPU, ``xla`` on accelerators, whose native convolutions are fast in every direction.

``Conv2d`` declares the same parameters as ``flax.linen.Conv`` (``kernel`` HWIO, ``bias``), drawn from the same
initialisers with the same names, so checkpoints and converted official weights load unchanged.
"""

import functools
from typing import Any, Callable, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

Dtype = Any
Pad = Tuple[Tuple[int, int], Tuple[int, int]]
CONV_IMPLS = ("xla", "tap_grad")
_DIMS = ("NHWC", "HWIO", "NHWC")


def default_conv_impl() -> str:
  """``"tap_grad"`` on the CPU backend, ``"xla"`` elsewhere."""
  return "tap_grad" if jax.default_backend() == "cpu" else "xla"


def _xla_conv(x: jnp.ndarray, kernel: jnp.ndarray, strides: Tuple[int, int], padding: Pad,
              dilation: Tuple[int, int]) -> jnp.ndarray:
  return lax.conv_general_dilated(x, kernel, strides, padding, rhs_dilation=dilation, dimension_numbers=_DIMS)


def tap_kernel_grad(x: jnp.ndarray, dy: jnp.ndarray, kernel_hw: Tuple[int, int], strides: Tuple[int, int],
                    padding: Pad, dilation: Tuple[int, int]) -> jnp.ndarray:
  """Gradient of an NHWC/HWIO convolution w.r.t. its kernel, one matmul per tap; (kh, kw, in, out).

  The taps run in a ``lax.scan`` so that one shifted window of ``x`` is alive at a time (unrolled, XLA keeps
  all ``kh * kw`` window copies live: 9x the input's memory).
  """
  kh, kw = kernel_hw
  (sh, sw), (dh, dw) = strides, dilation
  batch, out_h, out_w, _ = dy.shape
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  window_shape = (batch, (out_h - 1) * sh + 1, (out_w - 1) * sw + 1, x.shape[3])

  def tap(carry, index):
    i, j = index // kw, index % kw
    window = lax.dynamic_slice(xp, (0, i * dh, j * dw, 0), window_shape)
    if sh > 1 or sw > 1:
      window = window[:, ::sh, ::sw]
    return carry, jnp.einsum("bhwc,bhwo->co", window, dy)

  _, taps = lax.scan(tap, None, jnp.arange(kh * kw))
  return taps.reshape(kh, kw, *taps.shape[1:])


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _tap_grad_conv(x, kernel, strides, padding, dilation):
  return _xla_conv(x, kernel, strides, padding, dilation)


def _tap_grad_fwd(x, kernel, strides, padding, dilation):
  return _xla_conv(x, kernel, strides, padding, dilation), (x, kernel)


def _tap_grad_bwd(strides, padding, dilation, residuals, dy):
  x, kernel = residuals
  to_x = jax.linear_transpose(lambda v: _xla_conv(v, kernel, strides, padding, dilation), x)
  (dx,) = to_x(dy)
  dk = tap_kernel_grad(x, dy, kernel.shape[:2], strides, padding, dilation)
  return dx, dk.astype(kernel.dtype)


_tap_grad_conv.defvjp(_tap_grad_fwd, _tap_grad_bwd)


def conv2d(x: jnp.ndarray, kernel: jnp.ndarray, strides: Tuple[int, int] = (1, 1), padding: Pad = ((0, 0), (0, 0)),
           dilation: Tuple[int, int] = (1, 1), impl: Optional[str] = None) -> jnp.ndarray:
  """NHWC x HWIO convolution (explicit zero padding, PyTorch semantics); ``impl`` from ``CONV_IMPLS``/None."""
  impl = impl or default_conv_impl()
  strides, dilation = tuple(int(s) for s in strides), tuple(int(d) for d in dilation)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if impl == "xla":
    return _xla_conv(x, kernel, strides, padding, dilation)
  if impl == "tap_grad":
    return _tap_grad_conv(x, kernel, strides, padding, dilation)
  raise ValueError(f"unknown conv impl {impl!r}; expected one of {CONV_IMPLS} or None (per backend)")


class Conv2d(nn.Module):
  """``nn.Conv`` for NHWC maps with square integer geometry and explicit padding, computed by ``conv2d``.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: ((top, bottom), (left, right)) zero padding.
    kernel_dilation: (dh, dw).
    use_bias: add a ``bias`` parameter.
    kernel_init: initialiser of ``kernel`` (kh, kw, in, out).
    bias_init: initialiser of ``bias``.
    dtype: compute dtype (parameters stay float32).
    impl: ``"xla"``, ``"tap_grad"`` or None (per backend, see ``default_conv_impl``).
  """
  features: int
  kernel_size: Tuple[int, int] = (1, 1)
  strides: Tuple[int, int] = (1, 1)
  padding: Pad = ((0, 0), (0, 0))
  kernel_dilation: Tuple[int, int] = (1, 1)
  use_bias: bool = True
  kernel_init: Callable[..., jnp.ndarray] = nn.linear.default_kernel_init
  bias_init: Callable[..., jnp.ndarray] = nn.initializers.zeros_init()
  dtype: Optional[Dtype] = None
  impl: Optional[str] = None

  @nn.compact
  def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
    """Applies the convolution to an NHWC map."""
    shape = (*self.kernel_size, x.shape[-1], self.features)
    kernel = self.param("kernel", self.kernel_init, shape, jnp.float32)
    bias = self.param("bias", self.bias_init, (self.features,), jnp.float32) if self.use_bias else None
    x, kernel, bias = nn.dtypes.promote_dtype(x, kernel, bias, dtype=self.dtype)
    y = conv2d(x, kernel, self.strides, self.padding, self.kernel_dilation, self.impl)
    return y if bias is None else y + bias
