"""Weights as safetensors and in the Hub layout (offline Hub cache), and model export (StableHLO, SavedModel)."""

import importlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones import create_model, export
from backbones.weights import converted as checkpoint_io
from backbones.weights import hub

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


@pytest.fixture(scope="module")
def tiny():
  module = create_model("crossformer_s", **TINY)
  variables = jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  return module, jax.tree.map(np.asarray, variables)


def _same(a, b):
  return jax.tree.structure(a) == jax.tree.structure(b) and all(
      np.array_equal(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_safetensors_round_trip_and_errors(tiny, tmp_path):
  module, variables = tiny
  path = checkpoint_io.save_converted(tmp_path / "tiny.safetensors", module, variables)
  assert oct(path.stat().st_mode & 0o777) == oct(0o644)
  loaded_module, loaded = checkpoint_io.load_converted(path)
  assert loaded_module == module and _same(loaded, variables)
  assert not list(tmp_path.glob(".*tmp"))  # no temp file left behind
  (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file")
  with pytest.raises(ValueError, match="junk.safetensors is not a valid .safetensors"):
    checkpoint_io.load_converted(tmp_path / "junk.safetensors")
  with pytest.raises(FileNotFoundError, match="missing.safetensors"):
    checkpoint_io.load_converted(tmp_path / "missing.safetensors")


def _fill_hub_cache(cache, repo_id, folder):
  """Lays ``folder``'s files out as huggingface_hub's cache does for ``repo_id`` at revision main."""
  repo = cache / ("models--" + repo_id.replace("/", "--"))
  snapshot = repo / "snapshots" / ("0" * 40)
  snapshot.mkdir(parents=True)
  for name in (hub.WEIGHTS_NAME, hub.CONFIG_NAME):
    (snapshot / name).write_bytes((folder / name).read_bytes())
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("0" * 40)


@pytest.fixture
def offline_hub(tmp_path, monkeypatch):
  cache = tmp_path / "hub_cache"
  cache.mkdir()
  monkeypatch.setenv("HF_HUB_CACHE", str(cache))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")
  if "huggingface_hub" in sys.modules:  # its constants are read at import time
    constants = importlib.import_module("huggingface_hub.constants")
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
  return cache


def test_hub_layout_loads_offline_by_id(tiny, tmp_path, offline_hub):
  module, variables = tiny
  folder = hub.save_pretrained(tmp_path / "export", module, variables, {"mean": [123.675, 116.28, 103.53]})
  config = (folder / hub.CONFIG_NAME).read_text()
  assert '"architecture": "CrossFormerBackbone"' in config and '"mean"' in config
  _fill_hub_cache(offline_hub, "someorg/tiny-crossformer", folder)

  loaded_module, loaded = create_model("crossformer_s", pretrained="hf-hub:someorg/tiny-crossformer", **TINY)
  assert _same(loaded, variables)
  assert checkpoint_io.load_converted(folder)[0] == module  # a local folder in the same layout
  with pytest.raises(FileNotFoundError, match="hf-hub:someorg/absent.*HF_HUB_OFFLINE"):
    checkpoint_io.load_converted("hf-hub:someorg/absent")
  with pytest.raises(ValueError, match="not both"):
    create_model("crossformer_s", checkpoint="a.msgpack", pretrained="hf-hub:x/y")


def test_stablehlo_export_reloads_and_refuses_other_shapes(tiny, tmp_path):
  module, variables = tiny
  images = np.random.default_rng(0).normal(size=(1, 32, 64, 3)).astype(np.float32)
  exported = export.export_stablehlo(module.apply, variables, [(1, 32, 64, 3), (1, 64, 32, 3)])
  path = export.save_stablehlo(tmp_path / "tiny.jaxexport", exported)
  model = export.load_stablehlo(path)
  assert sorted(model.shapes) == [(1, 32, 64, 3), (1, 64, 32, 3)]
  ours, theirs = module.apply(variables, images), model(images)
  assert set(theirs) == set(ours)
  for name in ours:
    np.testing.assert_allclose(np.asarray(theirs[name]), np.asarray(ours[name]), atol=1e-5, rtol=1e-5)
  with pytest.raises(ValueError, match=r"exported for input shapes .* not \(1, 64, 64, 3\)"):
    model(np.zeros((1, 64, 64, 3), np.float32))
  (tmp_path / "bad.jaxexport").write_bytes(b"\x05\x00\x00\x00\x00\x00\x00\x00hello")
  with pytest.raises(ValueError, match="bad.jaxexport is not an exported model"):
    export.load_stablehlo(tmp_path / "bad.jaxexport")


@pytest.mark.slow
def test_saved_model_reproduces_outputs(tiny, tmp_path):
  import tensorflow as tf  # pylint: disable=import-outside-toplevel
  module, variables = tiny
  images = np.random.default_rng(1).normal(size=(1, 32, 32, 3)).astype(np.float32)
  directory = export.save_saved_model(tmp_path / "sm", module.apply, variables, (1, 32, 32, 3))
  loaded = tf.saved_model.load(str(directory))
  outputs = loaded.signatures["serving_default"](inputs=tf.constant(images))
  ours = module.apply(variables, images)
  for name in ours:
    np.testing.assert_allclose(outputs[name].numpy(), np.asarray(ours[name]), atol=1e-4, rtol=1e-4)
  with pytest.raises(FileExistsError, match="exists"):
    export.save_saved_model(directory, module.apply, variables, (1, 64, 64, 3))


def test_export_command_keeps_an_existing_file_unless_overwrite(tmp_path, capsys):
  """``projects.export --output notes.txt`` replaced an unrelated existing file; it now refuses before any
  work, naming the file (--overwrite lifts the refusal)."""
  from projects import export  # pylint: disable=import-outside-toplevel
  notes = tmp_path / "notes.txt"
  notes.write_text("my notes")
  with pytest.raises(SystemExit) as error:
    export.main(["--model", "crossformer_t", "--shape", "1x64x64", "--output", str(notes)])
  assert error.value.code == 2 and notes.read_text() == "my notes"
  assert f"--output {notes} already exists" in capsys.readouterr().err
