"""``backbones.weights``: the one reader of official files, the one atomic writer, the one tree helper and
shape report."""

import os

import numpy as np
import pytest

from backbones.weights import files
from backbones.weights import tree


class _Payload:
  """A pickle that runs a shell command when unpickled."""

  def __init__(self, marker):
    self.marker = marker

  def __reduce__(self):
    return (os.system, (f"touch {self.marker}",))


def test_read_official_refuses_a_pickled_npz_without_running_it(tmp_path):
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.npz"
  np.savez(path, w=np.array([_Payload(marker)], dtype=object))
  with pytest.raises(ValueError, match=r"evil.npz is not a valid .npz of numeric arrays \(it holds pickled"):
    files.read_official(path)
  assert not marker.exists(), "the file's code ran"


def test_read_official_refuses_a_malicious_pickle_with_our_message(tmp_path):
  torch = pytest.importorskip("torch")
  marker = tmp_path / "pwned"
  path = tmp_path / "evil.pth"
  torch.save({"state_dict": {"w": torch.zeros(2)}, "meta": {"x": _Payload(marker)}}, path)
  with pytest.raises(ValueError, match=r"evil.pth: refused to load \(it pickles objects outside the allow-list"):
    files.read_official(path)
  assert not marker.exists(), "the file's code ran"


def test_read_official_unwraps_state_dict_model_and_module_prefixes(tmp_path):
  torch = pytest.importorskip("torch")
  path = tmp_path / "mmseg.pth"
  torch.save({"state_dict": {"module.backbone.w": torch.ones(2, 3)}, "meta": {"CLASSES": ["a", "b"]}}, path)
  state_dict, meta = files.read_official(path)
  assert list(state_dict) == ["backbone.w"] and isinstance(state_dict["backbone.w"], np.ndarray)
  assert state_dict["backbone.w"].shape == (2, 3) and meta == {"CLASSES": ["a", "b"]}
  torch.save({"model": {"head.weight": torch.ones(4)}, "epoch": 3}, path)
  state_dict, meta = files.read_official(path)
  assert list(state_dict) == ["head.weight"] and meta == {}
  npz = tmp_path / "fixture.npz"
  np.savez(npz, **{"sd/a.weight": np.ones(3), "out/logits": np.zeros(2)})
  assert list(files.read_official(npz)[0]) == ["a.weight"]
  with pytest.raises(FileNotFoundError, match="official checkpoint not found: .*absent.pth"):
    files.read_official(tmp_path / "absent.pth")


def test_write_atomic_replaces_whole_files_and_cleans_up_on_failure(tmp_path, monkeypatch):
  path = tmp_path / "sub" / "out.json"
  files.write_atomic(path, "first")
  files.write_atomic(path, b"second")
  assert path.read_text() == "second" and sorted(p.name for p in path.parent.iterdir()) == ["out.json"]

  def broken_replace(src, dst):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "replace", broken_replace)
  with pytest.raises(OSError, match="No space"):
    files.write_atomic(path, b"third")
  assert path.read_text() == "second", "a failed write must leave the old file whole"
  assert sorted(p.name for p in path.parent.iterdir()) == ["out.json"], "the temp file must be removed"


def test_flatten_round_trips_string_and_tuple_paths():
  nested = {"params": {"stage_1": {"kernel": np.ones((2, 2)), "bias": np.zeros(2)}, "head": {"k": 1}}}
  flat = tree.flatten(nested)
  assert sorted(flat) == ["params/head/k", "params/stage_1/bias", "params/stage_1/kernel"]
  assert tree.unflatten(flat) == nested or tree.unflatten(flat)["params"]["head"] == {"k": 1}
  by_tuple = tree.flatten(nested, sep=None)
  assert ("params", "stage_1", "kernel") in by_tuple
  back = tree.unflatten(by_tuple, sep=None)
  np.testing.assert_array_equal(back["params"]["stage_1"]["kernel"], nested["params"]["stage_1"]["kernel"])
  assert tree.flatten({"a": {}, "b": {"c": 1}}, sep=".", keep_empty=True) == {"a": {}, "b.c": 1}
  assert tree.flatten({"a": {}, "b": {"c": 1}}, sep=".") == {"b.c": 1}


def test_shape_report_names_missing_unexpected_and_mismatched():
  expected = {"conv": {"kernel": np.zeros((3, 3, 3, 8)), "bias": np.zeros(8)}, "norm": {"scale": np.zeros(8)}}
  given = {"conv": {"kernel": np.zeros((3, 3, 3, 4)), "bias": np.zeros(8)}, "extra": {"w": np.zeros(1)}}
  report = tree.compare_shapes(expected, given)
  assert not report.ok
  assert report.missing == ["norm/scale"] and report.unexpected == ["extra/w"]
  assert report.mismatched == ["conv/kernel: checkpoint (3, 3, 3, 4) vs model (3, 3, 3, 8)"]
  line = report.problems()
  assert "\n" not in line
  assert line == ("1 shape mismatches [conv/kernel: checkpoint (3, 3, 3, 4) vs model (3, 3, 3, 8)]; "
                  "1 missing from the checkpoint [norm/scale]; 1 unexpected in the checkpoint [extra/w]")
  with pytest.raises(ValueError, match=r"^w.msgpack does not fit the model \(try another variant\): 1 shape"):
    report.raise_if_bad("w.msgpack", "try another variant")
  tree.compare_shapes(expected, expected).raise_if_bad("same")  # nothing to report: no error
  many = tree.compare_shapes({f"p{i}": np.zeros(1) for i in range(12)}, {})
  assert "12 missing from the checkpoint [p0, p1," in many.problems() and "... (+4)" in many.problems()
