"""Converted-checkpoint files: atomic writes leave no temp files and get normal permissions."""

import os
import subprocess
import sys

import numpy as np
import pytest

from backbones.weights import converted as checkpoint_io


class _Module:  # stands in for a Flax module: save_converted only reads its dataclass fields
  __dataclass_fields__ = {"dims": None}
  dims = (4, 8)


def _save(path):
  return checkpoint_io.save_converted(path, _Module(), {"params": {"w": np.ones((2, 3), np.float32)}})


def test_killed_and_failed_writes_leave_no_temp_files(tmp_path, monkeypatch):
  dead = subprocess.Popen([sys.executable, "-c", "pass"])
  dead.wait()
  leftover = tmp_path / f".out.msgpack.{dead.pid}.abc123.tmp"  # what a killed conversion leaves
  leftover.write_bytes(b"x" * 1000)
  _save(tmp_path / "out.msgpack")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.msgpack"]

  def broken_fsync(fd):
    raise OSError(28, "No space left on device")
  monkeypatch.setattr(os, "fsync", broken_fsync)
  with pytest.raises(OSError, match="No space"):
    _save(tmp_path / "out.msgpack")
  assert sorted(p.name for p in tmp_path.iterdir()) == ["out.msgpack"]


def test_output_has_normal_permissions_and_truncation_is_named(tmp_path):
  old = os.umask(0o022)
  try:
    path = _save(tmp_path / "out.msgpack")
  finally:
    os.umask(old)
  assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
  path.write_bytes(path.read_bytes()[:20])
  with pytest.raises(ValueError, match="out.msgpack is not a readable converted"):
    checkpoint_io.load_converted(path)
