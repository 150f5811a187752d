"""Contract tests over every variant (timm style): feature_info matches the real outputs, out_indices, metadata."""

import jax
import jax.numpy as jnp
import pytest

from backbones import create_model, get_pretrained_cfg, list_models
from backbones.registry import normalize_out_indices


def _output_shapes(module, height, width):
  """Output shapes of ``module`` on a (1, height, width, 3) input, by abstract evaluation (no compile)."""
  images = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  outputs, _ = jax.eval_shape(lambda x: module.init_with_output(jax.random.PRNGKey(0), x), images)
  return {name: value.shape for name, value in outputs.items()}


@pytest.mark.parametrize("name", list_models())
def test_feature_info_matches_outputs(name):
  module = create_model(name, out_indices=(-3, -2, -1))
  info = module.feature_info
  assert len(info) == 3
  for height, width in ((320, 448),):
    shapes = _output_shapes(module, height, width)
    assert list(shapes) == info.module_name()
    for (out_name, shape), channels, reduction in zip(shapes.items(), info.channels(), info.reduction()):
      assert shape == (1, height // reduction, width // reduction, channels), (name, out_name, shape)


@pytest.mark.parametrize("name", list_models())
def test_pretrained_cfg_per_variant(name):
  cfg = get_pretrained_cfg(name)
  assert cfg["architecture"] == name and cfg["input_size"] == (3, 224, 224)
  assert cfg["file"].endswith(".pth") and 0 < cfg["top1"] < 100
  assert cfg["mean"] == pytest.approx((0.485, 0.456, 0.406), abs=1e-6)
  assert cfg["std"] == pytest.approx((0.229, 0.224, 0.225), abs=1e-6)


def test_out_indices_rules():
  assert normalize_out_indices((-1,), 4) == (3,)
  assert normalize_out_indices((3, 0, -2), 4) == (0, 2, 3)
  for bad in ((4,), (-5,), (), (1, -3)):
    with pytest.raises(ValueError, match="out_indices"):
      normalize_out_indices(bad, 4)
  with pytest.raises(ValueError, match="no pretrained_cfg"):
    get_pretrained_cfg("crossformer_xl")
