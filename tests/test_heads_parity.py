"""``python -m projects.parity`` on the public mmseg/mmdet head fixtures: every output within tolerance, and a
perturbed weight is caught."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from projects.parity.__main__ import main

HEAD_FIXTURES = pathlib.Path(__file__).resolve().parents[2] / "shared" / "fixtures" / "heads"
# Mask R-CNN has its own runner (another branch).
KINDS = ("semantic_fpn", "upernet", "retinanet")


@pytest.fixture(scope="module")
def heads_dir() -> pathlib.Path:
  if not HEAD_FIXTURES.is_dir():
    pytest.skip(f"head fixtures not found at {HEAD_FIXTURES} (they live in the shared/ folder beside the "
                "checkout)")
  return HEAD_FIXTURES


@pytest.mark.slow
def test_every_public_head_fixture_passes(heads_dir, capsys):
  paths = [str(heads_dir / f"{kind}.npz") for kind in KINDS]
  status = main(paths)
  lines = capsys.readouterr().out.strip().splitlines()
  assert status == 0, "\n".join(line for line in lines if line.startswith("FAIL"))
  assert lines[-1].startswith("parity: ") and "FAILED" not in lines[-1]
  compared = int(lines[-1].split()[1])
  assert compared >= 118  # 20 + 21 + 77 outputs in the public files
  assert not [line for line in lines[:-1] if not line.startswith("ok  ")]
  # Both detection post-processing versions and the UperNet intermediates were compared.
  text = "\n".join(lines)
  for part in ("det/img1/bboxes", "det_mmdet2/img1/bboxes", "assign/img0/gt_inds", "dbg/b2_128x128/psp_bottleneck",
               "loss/aux.loss_ce", "neck/l0"):
    assert part in text


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
