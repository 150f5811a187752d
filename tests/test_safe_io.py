"""Loading user files never runs code from them (``backbones.weights.files``, ``convert.read_official_checkpoint``)."""

import os
import sys
import types

import numpy as np
import pytest

from backbones.weights import files as safe_io
from backbones.crossformer import convert

torch = pytest.importorskip("torch")


class _Payload:
  """A pickle that runs a shell command when unpickled (the attack the loader must refuse)."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def _fake_yacs_cfgnode():
  """A class pickled as ``yacs.config.CfgNode`` with yacs's instance attributes (yacs is not installed)."""
  class CfgNode(dict):
    def __init__(self, init=None):
      super().__init__(init or {})
      self.__dict__.update({"__immutable__": False, "__deprecated_keys__": set(), "__renamed_keys__": {},
                            "__new_allowed__": False})
  CfgNode.__module__, CfgNode.__qualname__ = "yacs.config", "CfgNode"
  return CfgNode


def test_official_checkpoint_with_yacs_config_loads_without_yacs(tmp_path, monkeypatch):
  cfgnode = _fake_yacs_cfgnode()
  module = types.ModuleType("yacs.config")
  module.CfgNode = cfgnode
  monkeypatch.setitem(sys.modules, "yacs", types.ModuleType("yacs"))
  monkeypatch.setitem(sys.modules, "yacs.config", module)
  config = cfgnode({"MODEL": cfgnode({"TYPE": "cross-scale", "CROS": cfgnode({"GROUP_SIZE": [7, 7, 7, 7]})})})
  weight = torch.arange(6, dtype=torch.float32).reshape(2, 3)
  path = tmp_path / "crossformer-s.pth"
  torch.save({"model": {"patch_embed.proj.weight": weight}, "optimizer": {"state": {}}, "epoch": 299,
              "max_accuracy": 82.5, "config": config}, path)
  monkeypatch.delitem(sys.modules, "yacs.config")
  monkeypatch.delitem(sys.modules, "yacs")

  loaded = safe_io.load_torch_checkpoint(path)
  assert loaded["config"]["MODEL"]["CROS"]["GROUP_SIZE"] == [7, 7, 7, 7]
  assert "yacs.config" not in sys.modules  # rebuilt as inert data, nothing imported
  state_dict = convert.read_official_checkpoint(str(path))
  np.testing.assert_array_equal(state_dict["patch_embed.proj.weight"], weight.numpy())


def test_crafted_pth_is_refused_without_running_it(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"model": {"w": torch.zeros(2)}, "x": _Payload(marker)}, path)
  with pytest.raises(ValueError, match="evil.pth: refused") as error:
    convert.read_official_checkpoint(str(path))
  assert "posix.system" in str(error.value) or "os.system" in str(error.value)
  assert not marker.exists(), "the file's code ran"


def test_not_a_checkpoint_and_missing_files_are_named(tmp_path):
  garbage = tmp_path / "garbage.pth"
  garbage.write_bytes(b"not a zip at all")
  with pytest.raises(ValueError, match="garbage.pth: refused"):
    convert.read_official_checkpoint(str(garbage))
  for name in ("absent.pth", "absent.npz"):
    with pytest.raises(FileNotFoundError, match=f"not found: .*{name}"):
      convert.read_official_checkpoint(str(tmp_path / name))


def test_npz_with_pickled_objects_is_not_a_valid_npz(tmp_path):
  path = tmp_path / "objects.npz"
  np.savez(path, w=np.array([{"a": 1}], dtype=object))
  with pytest.raises(ValueError, match=r"objects.npz is not a valid .npz") as error:
    convert.read_official_checkpoint(str(path))
  assert "allow_pickle" not in str(error.value)
  truncated = tmp_path / "truncated.npz"
  np.savez(truncated, w=np.ones(100))
  truncated.write_bytes(truncated.read_bytes()[:50])
  with pytest.raises(ValueError, match="truncated.npz is not a valid .npz"):
    safe_io.load_npz(truncated)
  good = tmp_path / "good.npz"
  np.savez(good, **{"sd/a.weight": np.ones(3)})
  assert list(convert.read_official_checkpoint(str(good))) == ["a.weight"]
