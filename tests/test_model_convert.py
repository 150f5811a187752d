"""Whole official checkpoints: full-size key layouts convert with every key accounted for and the official
parameter counts; model files round-trip; bad inputs give short errors."""

import json
import os
import pathlib
import stat

import ml_collections
import numpy as np
import pytest

from heads import official
from projects import convert_checkpoint
from projects.parity import official_config
from tests.conftest import FixtureDir
from projects.common import config_utils, model_io

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
# keys file -> our official recipe config.
RECIPES = {
    "fpn": "configs/fpn_crossformer_s_ade20k.py",
    "upernet": "configs/upernet_crossformer_s_ade20k.py",
    "retinanet": "configs/retinanet_crossformer_s_coco.py",
}
OFFICIAL_COUNTS = {"fpn": 34_260_000, "upernet": 62_308_022, "retinanet": 40_824_958}


def _keys(name):
  return json.loads((FixtureDir("heads") / f"keys_{name}_crossformer_s.json").read_text())


def _state_dict(layout, seed=0):
  """Weights with the shapes of a keys file: zeros, except a few random tensors to check placement."""
  rng = np.random.default_rng(seed)
  sd = {}
  for entry in layout["keys"]:
    dtype = np.int64 if entry["dtype"] == "int64" else np.float32
    sd[entry["key"]] = np.zeros(entry["shape"], dtype)
  for key in ("neck.fpn_convs.0.conv.weight", "decode_head.conv_seg.weight", "bbox_head.retina_cls.weight",
              "auxiliary_head.convs.0.bn.running_var", "backbone.layers.2.blocks.0.attn.qkv.weight"):
    if key in sd:
      sd[key] = rng.standard_normal(sd[key].shape).astype(np.float32)
  return sd


def _config(name):
  return config_utils.load_config(str(REPO_ROOT / RECIPES[name]))


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_full_size_official_layout_converts(name, tmp_path):
  layout = _keys(name)
  sd = _state_dict(layout)
  path = tmp_path / f"{name}.npz"
  np.savez(path, **sd)
  variables = model_io.convert_official_checkpoint(path, _config(name))
  counts = model_io.parameter_counts(variables)
  assert counts["total"] == OFFICIAL_COUNTS[name] == layout["num_params"]
  for part, count in layout["num_params_by_part"].items():
    assert counts[part] == count, part
  # Every key used or dropped on purpose (num_batches_tracked only), none left over.
  _, report = official.convert_state_dict(sd, model_io.variable_shapes(model_io.build_model(_config(name))))
  assert report.ok and not report.unexpected
  assert sorted(report.used + report.dropped) == sorted(sd)
  assert all(k.endswith("num_batches_tracked") for k in report.dropped)
  # Placement: conv OIHW -> HWIO, linear (out, in) -> (in, out), BN running_var -> batch_stats var.
  params = variables["params"]
  if "neck.fpn_convs.0.conv.weight" in sd:
    np.testing.assert_array_equal(params["neck"]["fpn_convs_0"]["conv"]["kernel"],
                                  sd["neck.fpn_convs.0.conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(params["backbone"]["layers_2_blocks_0"]["attn"]["qkv"]["kernel"],
                                sd["backbone.layers.2.blocks.0.attn.qkv.weight"].T)
  if name == "upernet":
    np.testing.assert_array_equal(variables["batch_stats"]["auxiliary_head"]["convs_0"]["norm"]["var"],
                                  sd["auxiliary_head.convs.0.bn.running_var"])


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipe_configs_equal_the_official_configs(name):
  """Our recipe's neck/head settings are what projects.parity.official_config maps the official full-size config to."""
  mapped = official_config.model_config_from_mm(_keys(name)["mm_config"])
  config = _config(name)
  assert mapped.pop("num_classes") == model_io.dataset_facts(config)["num_classes"]
  assert mapped.pop("avg_non_ignore", False) == config.model.get("avg_non_ignore", False)
  if "decode_head" in mapped:
    mapped.pop("test_cfg")  # mode whole: the predict/evaluate settings live elsewhere
  for section, values in mapped.items():
    ours = config.model.get(section)
    if values is None:
      assert ours is None, section
      continue
    for key, value in values.items():
      default = {"in_index": None, "add_extra_convs": False, "relu_before_extra_convs": False,
                 "no_norm_on_lateral": False, "norm": "none"}.get(key, "required")
      got = ours.get(key, default)
      got = tuple(got) if isinstance(got, (list, tuple)) else got
      assert got == value, (section, key, got, value)


def test_wrong_model_names_the_keys(tmp_path):
  sd = _state_dict(_keys("upernet"))
  with pytest.raises(ValueError, match=r"unexpected.*decode_head\.bottleneck\.conv.*missing.*neck/fpn_convs_0"):
    model_io.convert_official_checkpoint(sd, _config("fpn"))
  # A checkpoint of another size: the mismatched shapes are named.
  sd["decode_head.conv_seg.weight"] = np.zeros((150, 256, 1, 1), np.float32)
  with pytest.raises(ValueError, match=r"decode_head\.conv_seg\.weight \(150, 256, 1, 1\).*512"):
    model_io.convert_official_checkpoint(sd, _config("upernet"))


def test_convert_command_pth_with_meta(tmp_path, capsys):
  torch = pytest.importorskip("torch")
  layout = _keys("retinanet")
  sd = {k: torch.from_numpy(v) for k, v in _state_dict(layout).items()}
  names = tuple(f"thing{i}" for i in range(80))
  torch.save({"state_dict": sd, "meta": {"CLASSES": names, "config": "model = dict()"}}, tmp_path / "r.pth")
  out = tmp_path / "out" / "r.msgpack"
  assert convert_checkpoint.main(["--input", str(tmp_path / "r.pth"), "--config",
                                  str(REPO_ROOT / RECIPES["retinanet"]), "--output", str(out)]) == 0
  printed = capsys.readouterr().out
  assert "40,824,958" in printed and "bbox_head" in printed
  assert stat.S_IMODE(os.stat(out).st_mode) == 0o644
  config, variables = model_io.load_model_file(out)
  assert config.model.test_cfg.version == "mmdet2"
  assert config.dataset_meta.class_names == names and config.model.anchor.strides == (8, 16, 32, 64, 128)
  assert len(config.dataset_meta.category_ids) == 80
  assert model_io.parameter_counts(variables)["total"] == 40_824_958


def test_unsafe_pth_is_refused(tmp_path):
  torch = pytest.importorskip("torch")
  torch.save({"state_dict": {}, "meta": {"obj": ml_collections.ConfigDict({"a": 1})}}, tmp_path / "bad.pth")
  with pytest.raises(ValueError, match="bad.pth: refused to load"):
    model_io.read_official_file(tmp_path / "bad.pth")


def test_model_file_round_trip_and_errors(tmp_path):
  config = ml_collections.ConfigDict({"model": {"decode_head": {"type": "upernet", "channels": 8}},
                                      "dataset_meta": {"num_classes": 2, "class_names": ["a", "b"]}})
  variables = {"params": {"head": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}},
               "batch_stats": {"head": {"mean": np.ones(3, np.float32)}}}
  path = model_io.save_model_file(tmp_path / "m.msgpack", config, variables)
  loaded_config, loaded = model_io.load_model_file(path)
  assert loaded_config.model.decode_head.channels == 8 and list(loaded_config.dataset_meta.class_names) == ["a", "b"]
  np.testing.assert_array_equal(loaded["params"]["head"]["kernel"], variables["params"]["head"]["kernel"])
  assert [p.name for p in tmp_path.iterdir()] == ["m.msgpack"]  # no temp file left behind

  with pytest.raises(FileNotFoundError, match="model file not found"):
    model_io.load_model_file(tmp_path / "missing.msgpack")
  (tmp_path / "junk.msgpack").write_bytes(b"\x00not msgpack at all")
  with pytest.raises(ValueError, match="not a model file"):
    model_io.load_model_file(tmp_path / "junk.msgpack")
  with pytest.raises(ValueError, match="dataset_meta"):
    model_io.save_model_file(tmp_path / "x.msgpack", ml_collections.ConfigDict({"model": {}}), variables)
  with pytest.raises(FileNotFoundError, match="official checkpoint not found"):
    model_io.convert_official_checkpoint(tmp_path / "nope.pth", config)
