"""Checkpoint conversion: key mapping of the full-size models, wrappers, error reports, files on disk."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones import (CrossFormer, CrossFormerBackbone, create_model, from_official, load_backbone_params,
                       load_converted, save_converted)
from backbones.crossformer import convert


def _fake_state_dict(keys_json):
  """Zero arrays with the official shapes/dtypes of every key of a full-size model."""
  return {k["key"]: np.zeros(k["shape"], dtype=k["dtype"]) for k in keys_json["keys"]}


@pytest.mark.parametrize("variant", ["t", "s"])
@pytest.mark.parametrize("kind", ["cls", "backbone"])
def test_every_official_key_maps_with_the_right_shape(official_fixtures_dir, variant, kind):
  meta = json.loads((official_fixtures_dir / f"keys_crossformer_{variant}_{kind}.json").read_text())
  state_dict = _fake_state_dict(meta)
  module, variables = from_official(state_dict, **meta["config"])
  assert isinstance(module, CrossFormer if kind == "cls" else CrossFormerBackbone)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
  assert n_params == meta["num_params"]
  # Every learned key landed somewhere, transposed to the Flax layout.
  learned = [k for k in meta["keys"] if k["kind"] == "param"]
  flat = flax.traverse_util.flatten_dict(variables["params"])
  assert len(flat) == len(learned)
  for entry in learned:
    path, leaf = convert.flax_path(entry["key"])
    if kind == "cls" and path[0] not in ("norm", "output_projection"):
      path = ("backbone",) + path
    name, converted = convert.convert_leaf(leaf, np.zeros(entry["shape"]))
    assert flat[path + (name,)].shape == converted.shape, entry["key"]


def test_classification_checkpoint_feeds_the_dense_backbone(official_fixtures_dir):
  meta = json.loads((official_fixtures_dir / "keys_crossformer_t_cls.json").read_text())
  checkpoint = {"model": _fake_state_dict(meta), "epoch": 300}
  module, variables = from_official(checkpoint, model="backbone", **meta["config"])
  assert isinstance(module, CrossFormerBackbone)
  assert "output_projection" not in variables["params"]
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
  assert n_params == 27_262_770  # the official dense T


def test_mmdet_prefix_and_wrapper_are_unwrapped(official_fixtures_dir):
  meta = json.loads((official_fixtures_dir / "keys_crossformer_s_backbone.json").read_text())
  sd = _fake_state_dict(meta)
  mmdet = {"state_dict": {**{f"backbone.{k}": v for k, v in sd.items()},
                          "neck.lateral_convs.0.conv.weight": np.zeros((256, 192, 1, 1))}}
  module, variables = from_official(mmdet, **meta["config"])
  assert isinstance(module, CrossFormerBackbone)
  assert sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables)) == meta["num_params"]


def test_missing_unexpected_and_misshaped_keys_are_reported(official_fixtures_dir):
  meta = json.loads((official_fixtures_dir / "keys_crossformer_t_backbone.json").read_text())
  sd = _fake_state_dict(meta)
  del sd["layers.2.blocks.3.mlp.fc1.weight"]
  sd["layers.0.blocks.0.attn.extra.weight"] = np.zeros((3, 3))
  sd["patch_embed.norm.weight"] = np.zeros((65,))
  with pytest.raises(ValueError) as error:
    from_official(sd, **meta["config"])
  message = str(error.value)
  assert "missing keys (1): layers_2_blocks_3/mlp/fc1/kernel" in message
  assert "unexpected keys (1): layers.0.blocks.0.attn.extra.weight" in message
  assert "patch_embed.norm.weight: checkpoint (65,)" in message
  # Non-strict conversion keeps what fits.
  _, variables = from_official(sd, strict=False, **meta["config"])
  assert "kernel" not in variables["params"]["layers_2_blocks_3"]["mlp"]["fc1"]


def test_unsupported_official_options_are_refused():
  with pytest.raises(ValueError, match="ape=True"):
    convert.module_from_official({"ape": True}, classifier=False)
  with pytest.raises(ValueError, match="use_cpe=True is not supported"):
    convert.module_from_official({"use_cpe": True}, classifier=False)
  with pytest.raises(ValueError, match="unknown official CrossFormer arguments: \\['window'\\]"):
    convert.module_from_official({"window": 7}, classifier=False)


def test_classifier_interval_is_implicit_from_img_size():
  module = convert.module_from_official({"img_size": 448, "group_size": [7, 7, 7, 7]}, classifier=True)
  assert module.backbone.intervals == (16, 8, 4, 2)


def test_converted_file_round_trip_and_create_model(tmp_path):
  module = create_model("crossformer_t", embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                        features_only=False, num_classes=5)
  x = jnp.ones((1, 64, 64, 3))
  variables = module.init(jax.random.PRNGKey(0), x)
  path = save_converted(tmp_path / "tiny.msgpack", module, variables)
  assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")], "no temp file left behind"
  restored, restored_vars = load_converted(path)
  np.testing.assert_array_equal(module.apply(variables, x), restored.apply(restored_vars, x))
  # The backbone part of a classifier checkpoint feeds the dense backbone.
  backbone, backbone_vars = create_model("crossformer_t", embed_dim=16, depths=(1, 1, 1, 1),
                                         num_heads=(1, 1, 2, 2), checkpoint=str(path))
  assert jax.tree.structure(backbone_vars["params"]) == jax.tree.structure(
      load_backbone_params(path))
  feats = backbone.apply(backbone_vars, x)
  assert feats["stage_4"].shape == (1, 2, 2, 128)
  with pytest.raises(ValueError, match="does not fit"):
    create_model("crossformer_t", embed_dim=32, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
                 checkpoint=str(path))


def test_missing_converted_file_names_the_command(tmp_path):
  with pytest.raises(FileNotFoundError, match="projects.convert_checkpoint"):
    load_converted(tmp_path / "absent.msgpack")
