"""``python -m projects.parity`` on the mmseg/mmdet head fixtures (bundled in ``tests/fixtures/heads``, and any
other found in the shared folder): every stored output is compared and within tolerance, and a perturbed weight
is caught."""

import json
import re
import shutil

import numpy as np
import pytest

from projects.parity.__main__ import main
from projects.parity.report import load_fixture
from tests.conftest import FixtureDir

HEADS = FixtureDir("heads")
# Mask R-CNN fixtures run in tests/test_mask_rcnn.py (one long run each).
RUNNER_FIXTURES = [p for p in HEADS.files("*.npz")
                   if json.loads(p.with_suffix(".json").read_text()).get("kind") != "mask_rcnn"]


@pytest.fixture(scope="module")
def heads_dir() -> FixtureDir:
  return HEADS


def test_the_public_kinds_are_found():
  assert {p.stem for p in RUNNER_FIXTURES} >= {"semantic_fpn", "upernet", "retinanet"}


@pytest.mark.slow
@pytest.mark.parametrize("path", RUNNER_FIXTURES, ids=lambda p: p.stem)
def test_every_head_fixture_passes(path, capsys):
  status = main([str(path)])
  lines = capsys.readouterr().out.strip().splitlines()
  assert status == 0, "\n".join(line for line in lines if line.startswith("FAIL"))
  assert lines[-1].startswith("parity: ") and "FAILED" not in lines[-1]
  assert not [line for line in lines[:-1] if not line.startswith("ok  ")]
  # Every stored output was compared: a line names it (candidate labels share their anchor indices' line).
  arrays, _ = load_fixture(path)
  text = "\n".join(lines)
  named = lambda key: re.search(rf":{re.escape(key)}(: | \()", text)
  stored = [k for k in arrays if k.startswith(("out/", "dbg/"))]
  unnamed = [k for k in stored if not named(k) and not named(re.sub(r"/labels_l(\d+)$", r"/anchor_inds_l\1", k))]
  assert stored and not unnamed, unnamed


def test_perturbed_weight_fails(heads_dir, tmp_path, capsys):
  with np.load(heads_dir / "upernet.npz") as data:
    arrays = {k: data[k] for k in data.files}
  arrays["sd/decode_head.fpn_bottleneck.conv.weight"] = arrays["sd/decode_head.fpn_bottleneck.conv.weight"] * 1.01
  np.savez(tmp_path / "upernet.npz", **arrays)
  shutil.copy(heads_dir / "upernet.json", tmp_path / "upernet.json")
  status = main([str(tmp_path / "upernet.npz")])
  out = capsys.readouterr().out
  assert status == 1
  assert "FAIL upernet:out/b2_128x128/logits" in out and "FAILED" in out.strip().splitlines()[-1]
  assert "ok   upernet:out/b2_128x128/aux_logits" in out  # the auxiliary head does not use that weight


def test_weights_that_do_not_fit_fail_by_name(heads_dir, tmp_path, capsys):
  with np.load(heads_dir / "semantic_fpn.npz") as data:
    arrays = {k: data[k] for k in data.files if k != "sd/neck.fpn_convs.1.conv.bias"}
  arrays["sd/neck.extra.weight"] = np.zeros((2, 2), np.float32)
  np.savez(tmp_path / "semantic_fpn.npz", **arrays)
  shutil.copy(heads_dir / "semantic_fpn.json", tmp_path / "semantic_fpn.json")
  assert main([str(tmp_path / "semantic_fpn.npz")]) == 1
  out = capsys.readouterr().out
  assert "FAIL semantic_fpn:sd/neck.extra.weight" in out
  assert "FAIL semantic_fpn:param params/neck/fpn_convs_1/conv/bias" in out
  assert "FAIL semantic_fpn:out/b2_128x128/logits" in out  # not run, and said so


def test_unknown_kind_and_missing_file(heads_dir, tmp_path, capsys):
  assert main([str(tmp_path / "missing.npz")]) == 2
  meta = json.loads((heads_dir / "upernet.json").read_text())
  meta["kind"] = "no_such_model"
  shutil.copy(heads_dir / "upernet.npz", tmp_path / "x.npz")
  (tmp_path / "x.json").write_text(json.dumps(meta))
  assert main([str(tmp_path / "x.npz")]) == 1
  assert "no runner for fixture kind 'no_such_model'" in capsys.readouterr().out


def test_shared_arrays_are_read_from_the_named_fixture(tmp_path):
  np.savez(tmp_path / "a.npz", **{"sd/w": np.arange(3.0), "in/c": np.ones(2)})
  (tmp_path / "a.json").write_text(json.dumps({"kind": "k"}))
  np.savez(tmp_path / "b.npz", **{"out/c/y": np.zeros(1)})
  (tmp_path / "b.json").write_text(json.dumps({"kind": "k", "shared_arrays": {"file": "a.npz", "keys": ["sd/w"]}}))
  arrays, _ = load_fixture(tmp_path / "b.npz")
  assert sorted(arrays) == ["out/c/y", "sd/w"] and arrays["sd/w"].tolist() == [0.0, 1.0, 2.0]
  (tmp_path / "b.json").write_text(json.dumps({"kind": "k", "shared_arrays": {"file": "a.npz", "keys": ["sd/v"]}}))
  with pytest.raises(ValueError, match=r"b.json: shared_arrays key 'sd/v' is not in a.npz"):
    load_fixture(tmp_path / "b.npz")
  (tmp_path / "b.json").write_text(json.dumps({"kind": "k", "shared_arrays": {"file": "gone.npz", "keys": []}}))
  with pytest.raises(FileNotFoundError, match="gone.npz not found"):
    load_fixture(tmp_path / "b.npz")
