"""heads.conv: Conv2d matches flax's nn.Conv (parameters, outputs, gradients) for every implementation."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads.conv import CONV_IMPLS, Conv2d, conv2d, default_conv_impl

# (kernel, stride, padding, dilation): the heads' 3x3 convs, strided FPN extra levels, dilated and 1x1 convs.
GEOMETRIES = [(3, 1, 1, 1), (3, 2, 1, 1), (3, 1, 2, 2), (1, 1, 0, 1), (3, 2, 0, 1), (5, 1, 2, 1)]


@pytest.mark.parametrize("impl", CONV_IMPLS)
@pytest.mark.parametrize("geometry", GEOMETRIES)
def test_conv2d_matches_nn_conv(impl, geometry):
  k, s, p, d = geometry
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 13, 10, 8))
  kwargs = dict(strides=(s, s), padding=((p, p), (p, p)), kernel_dilation=(d, d))
  ref, ours = nn.Conv(5, (k, k), **kwargs), Conv2d(5, (k, k), impl=impl, **kwargs)
  params = ref.init(jax.random.PRNGKey(1), x)
  same_init = ours.init(jax.random.PRNGKey(1), x)
  assert jax.tree.structure(params) == jax.tree.structure(same_init)
  for a, b in zip(jax.tree.leaves(params), jax.tree.leaves(same_init)):
    np.testing.assert_array_equal(a, b)

  def loss(module):
    return lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)))
  np.testing.assert_allclose(ours.apply(params, x), ref.apply(params, x), atol=1e-5)
  got, want = jax.grad(loss(ours), (0, 1))(params, x), jax.grad(loss(ref), (0, 1))(params, x)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(a, b, atol=5e-5, rtol=1e-5)


def test_bfloat16_compute_keeps_float32_params():
  x = jnp.ones((1, 6, 6, 4))
  module = Conv2d(3, (3, 3), padding=((1, 1), (1, 1)), dtype=jnp.bfloat16, impl="tap_grad")
  params = module.init(jax.random.PRNGKey(0), x)
  assert params["params"]["kernel"].dtype == jnp.float32
  assert module.apply(params, x).dtype == jnp.bfloat16
  grads = jax.grad(lambda v: jnp.sum(module.apply(v, x).astype(jnp.float32)))(params)
  assert grads["params"]["kernel"].dtype == jnp.float32


def test_default_impl_per_backend_and_unknown_impl():
  assert default_conv_impl() == ("tap_grad" if jax.default_backend() == "cpu" else "xla")
  with pytest.raises(ValueError, match="unknown conv impl 'im2col'"):
    conv2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2)), impl="im2col")
