"""The backbone registry: a contract over every registered variant (timm style) and a toy second family that
joins it from this file and is created by name."""

from typing import Any, Dict, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import pytest

from backbones import registry
from backbones.weights import converted


@pytest.mark.parametrize("name", registry.list_models("crossformer"))
def test_every_variant_builds_abstractly_with_its_metadata(name):
  info = registry.model_info(name)
  assert info["architecture"] == name and info["family"] == "crossformer"
  assert 0 < info["pretrained_cfg"]["top1"] < 100 and info["pretrained_cfg"]["params_m"] > 0
  assert info["pretrained_cfg"]["input_size"] == (3, 224, 224)
  assert 0 < info["kwargs"]["drop_path_rate"] < 1
  levels = info["feature_info"]
  assert [level["reduction"] for level in levels] == [4, 8, 16, 32]
  assert [level["num_chs"] for level in levels] == list(info["kwargs"]["dims"])
  small = jax.ShapeDtypeStruct((1, 64, 96, 3), jnp.float32)
  backbone = registry.create_model(name)
  out, _ = jax.eval_shape(lambda x: backbone.init_with_output(jax.random.PRNGKey(0), x), small)
  assert list(out) == [level["module"] for level in levels]
  for level in levels:
    r = level["reduction"]
    assert out[level["module"]].shape == (1, 64 // r, 96 // r, level["num_chs"]), (name, level)
  classifier = registry.create_model(name, features_only=False, num_classes=7)
  assert converted.is_classifier(classifier)
  logits, variables = jax.eval_shape(lambda x: classifier.init_with_output(jax.random.PRNGKey(0), x), small)
  assert logits.shape == (1, 7)
  assert sorted(variables["params"]) == ["backbone", "norm", "output_projection"]


def test_configs_take_the_drop_path_rate_from_the_registry():
  from configs import common  # pylint: disable=import-outside-toplevel
  for letter, name in common.BACKBONES.items():
    assert common.backbone_config(letter).drop_path_rate == registry.variant_kwargs(name)["drop_path_rate"]


def test_build_from_config_passes_the_block_to_the_family():
  cfg = {"name": "crossformer_t", "overrides": {"embed_dim": 16, "depths": (1, 1, 1, 1)}, "drop_path_rate": 0.1,
         "remat": "dots"}
  module = registry.build_from_config(cfg, out_indices=(1, 3), dtype=jnp.bfloat16)
  assert module.dims == (16, 32, 64, 128) and module.out_indices == (1, 3) and module.dtype == jnp.bfloat16
  assert module.drop_path_rate == 0.1 and module.remat == "dots" and module.lda_mode == "v1"
  assert registry.build_from_config({"name": "crossformerpp_s"}).lda_mode == "main"  # the variant's own
  with pytest.raises(ValueError, match=r"unknown keys \['window'\]"):
    registry.build_from_config({"name": "crossformer_t", "window": 7})
  with pytest.raises(ValueError, match="needs a 'name'"):
    registry.build_from_config({"overrides": {}})
  with pytest.raises(ValueError, match="unknown backbone 'nope'"):
    registry.create_model("nope")


class ToyBackbone(nn.Module):
  """A second family: strided convolutions returning stages at strides 4, 8, 16, 32."""
  width: int = 8
  out_indices: Sequence[int] = (0, 1, 2, 3)
  dtype: Any = jnp.float32

  @property
  def feature_info(self):
    from backbones.feature_info import FeatureInfo  # pylint: disable=import-outside-toplevel
    return FeatureInfo([dict(num_chs=self.width * 2 ** i, reduction=4 * 2 ** i, module=f"stage_{i + 1}")
                        for i in self.out_indices])

  @nn.compact
  def __call__(self, x, train: bool = False) -> Dict[str, jnp.ndarray]:
    x = nn.Conv(self.width, (4, 4), strides=4, dtype=self.dtype, name="stem")(x)
    out = {}
    for i in range(4):
      if i:
        x = nn.Conv(self.width * 2 ** i, (2, 2), strides=2, dtype=self.dtype, name=f"down_{i}")(x)
      if i in self.out_indices:
        out[f"stage_{i + 1}"] = x
    return out


class ToyClassifier(nn.Module):
  num_classes: int = 10
  backbone: Any = None

  @nn.compact
  def __call__(self, x, train: bool = False):
    return nn.Dense(self.num_classes, name="head")(self.backbone(x)["stage_4"].mean(axis=(1, 2)))


def _toy_create(kwargs, *, features_only, out_indices, num_classes, name, **overrides):
  kwargs.update(overrides)
  indices = registry.normalize_out_indices(out_indices, 4)
  if features_only:
    return ToyBackbone(**kwargs, out_indices=indices, name=name)
  return ToyClassifier(num_classes, backbone=ToyBackbone(**kwargs, out_indices=(3,), parent=None), name=name)


def _toy_from_config(kwargs, cfg, *, out_indices, dtype):
  return _toy_create(kwargs, features_only=True, out_indices=out_indices, num_classes=0, name=None,
                     width=cfg.get("width", kwargs["width"]), **({"dtype": dtype} if dtype is not None else {}))


@pytest.fixture
def toy_family():
  before = (dict(registry._FAMILIES), dict(registry._VARIANTS))  # pylint: disable=protected-access
  registry.register_family(registry.Family(
      name="toy", modules=(ToyBackbone, ToyClassifier), create=_toy_create, from_config=_toy_from_config,
      load_variables=lambda module, path: converted.variables_for(module, path, {}),
      pretrained_defaults=dict(input_size=(3, 64, 64))))
  registry.register_backbone("toy_small", "toy", dict(width=4), top1=12.5)
  yield
  registry._FAMILIES.clear(), registry._FAMILIES.update(before[0])  # pylint: disable=protected-access
  registry._VARIANTS.clear(), registry._VARIANTS.update(before[1])  # pylint: disable=protected-access


def test_a_second_family_is_created_by_name(toy_family, tmp_path):
  assert "toy_small" in registry.list_models() and registry.list_models("toy") == ["toy_small"]
  info = registry.model_info("toy_small")
  assert info["family"] == "toy" and info["pretrained_cfg"] == {"architecture": "toy_small",
                                                                "input_size": (3, 64, 64), "top1": 12.5}
  assert [level["num_chs"] for level in info["feature_info"]] == [4, 8, 16, 32]
  x = jnp.zeros((2, 64, 64, 3))
  backbone = registry.create_model("toy_small", out_indices=(-1,))
  out = jax.eval_shape(lambda: backbone.init_with_output(jax.random.PRNGKey(0), x)[0])
  assert {k: v.shape for k, v in out.items()} == {"stage_4": (2, 2, 2, 32)}
  from_cfg = registry.build_from_config({"name": "toy_small", "width": 6}, out_indices=(0, 1), dtype=jnp.bfloat16)
  assert isinstance(from_cfg, ToyBackbone) and from_cfg.width == 6 and from_cfg.dtype == jnp.bfloat16
  classifier = registry.create_model("toy_small", features_only=False, num_classes=3)
  variables = jax.jit(classifier.init)(jax.random.PRNGKey(0), x)
  assert classifier.apply(variables, x).shape == (2, 3) and "backbone" in variables["params"]
  # Converted files of the new family: its classes are found through the registry.
  path = converted.save_converted(tmp_path / "toy.msgpack", classifier, variables)
  module, loaded = converted.load_converted(path)
  assert isinstance(module, ToyClassifier) and module.backbone.width == 4
  params = converted.load_backbone_params(path)
  assert params["stem"]["kernel"].shape == (4, 4, 3, 4)


def test_classifier_files_of_the_flat_layout_still_load(tmp_path):
  from backbones.crossformer.model import CrossFormer  # pylint: disable=import-outside-toplevel
  from backbones.weights import description  # pylint: disable=import-outside-toplevel
  flat = ('{"num_classes": 5, "dim": [16, 32, 64, 128], "depth": [1, 1, 1, 1], "global_window_size": [8, 4, 2, 1], '
          '"local_window_size": 7, "num_heads": [1, 1, 2, 2], "lda_mode": "main", "use_acl": false}')
  module = description.module_from_description("CrossFormer", flat, "old.msgpack")
  assert isinstance(module, CrossFormer) and module.num_classes == 5
  assert module.backbone.dims == (16, 32, 64, 128) and module.backbone.lda_mode == "main"
  again = description.module_from_description("CrossFormer", description.architecture_json(module), "new")
  assert again == module
  with pytest.raises(ValueError, match="old.msgpack holds an unknown module 'Resnet'"):
    description.module_from_description("Resnet", "{}", "old.msgpack")
