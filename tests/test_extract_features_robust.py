"""``backbones.extract_features`` on awkward folders, its memory estimate, and uint8 input to the predict API;
a COCO box outside its image is named."""

import json
import logging

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from backbones import create_model
from backbones import extract_features

TINY = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))
TINY_ARGS = ["--model", "crossformer_t"]


@pytest.fixture(scope="module")
def tiny_backbone():
  module = create_model("crossformer_t", **TINY)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def test_folder_with_bad_same_stem_and_16_bit_images(tmp_path, monkeypatch, tiny_backbone, capsys):
  monkeypatch.setattr(extract_features, "build_extractor", lambda *a, **k: tiny_backbone)
  images = tmp_path / "in"
  images.mkdir()
  rng = np.random.default_rng(0)
  pixels = rng.integers(0, 255, (40, 56, 3), dtype=np.uint8)
  Image.fromarray(pixels).save(images / "photo.png")
  Image.fromarray(255 - pixels).save(images / "photo.jpg", quality=95)
  (images / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
  grey16 = np.full((40, 56), 65535 // 2, np.uint16)
  Image.fromarray(grey16).save(images / "deep.png")
  Image.fromarray(pixels).save(images / "zz_last.png")
  out = tmp_path / "out"
  with pytest.raises(SystemExit) as error:
    extract_features.main([*TINY_ARGS, "--input", str(images), "--output_dir", str(out)])
  message = str(error.value)
  assert "1 of 5 images skipped" in message and "broken.jpg" in message
  written = sorted(p.name for p in out.iterdir())
  assert written == ["deep.npz", "photo_jpg.npz", "photo_png.npz", "zz_last.npz"]  # none lost
  assert not np.allclose(np.load(out / "photo_jpg.npz")["stage_1"], np.load(out / "photo_png.npz")["stage_1"])
  assert str(np.load(out / "photo_jpg.npz")["source"]) == str((images / "photo.jpg").resolve())
  loaded = extract_features.load_rgb(images / "deep.png")
  np.testing.assert_allclose(loaded, 127.5, atol=0.01)  # 16-bit mid-grey, not clipped to white


def test_an_image_too_large_for_memory_fails_fast_with_the_max_side_to_use(tmp_path, monkeypatch,
                                                                            tiny_backbone):
  module, _ = tiny_backbone
  big = module.clone(**{"dims": (96, 192, 384, 768), "num_heads": (3, 6, 12, 24), "group_sizes": (7, 7, 7, 7),
                        "intervals": (8, 4, 2, 1), "depths": (2, 2, 6, 2)})  # CrossFormer-S's shape
  need = extract_features.estimate_memory_bytes(big, 3000, 4000)
  assert need > 40 * 2**30  # v1 LDA groups grow with the image: tens of GiB, as XLA asks for
  calls = []
  monkeypatch.setattr(extract_features, "build_extractor", lambda *a, **k: (big, {}))
  monkeypatch.setattr(extract_features, "feature_fn", lambda *a: calls.append(a) or (lambda image: calls.append(1)))
  monkeypatch.setattr(extract_features, "available_memory_bytes", lambda: 8 * 2**30)
  Image.new("RGB", (4000, 3000)).save(tmp_path / "huge.jpg")
  with pytest.raises(SystemExit) as error:
    extract_features.main([*TINY_ARGS, "--input", str(tmp_path / "huge.jpg"), "--output_dir", str(tmp_path / "o")])
  message = str(error.value)
  assert "huge.jpg" in message and "3000x4000 needs about" in message and "--max_side" in message
  assert len(calls) == 1, "the network ran on an image that does not fit"
  max_side = int(message.split("--max_side ")[1].split()[0])
  assert extract_features.estimate_memory_bytes(big, max_side * 3 // 4, max_side) <= 8 * 2**30
  assert extract_features.estimate_memory_bytes(big, (max_side + 32) * 3 // 4, max_side + 32) > 8 * 2**30


@pytest.mark.parametrize("size", [(96, 160)])
def test_memory_estimate_bounds_the_compiled_program(tiny_backbone, size):
  """The analytic estimate is above XLA's own figure for the program, within a factor of 3."""
  module, variables = tiny_backbone
  compiled = jax.jit(module.apply).lower(variables, jax.ShapeDtypeStruct((1, *size, 3), jnp.float32)).compile()
  analysis = compiled.memory_analysis()
  measured = analysis.temp_size_in_bytes + analysis.argument_size_in_bytes + analysis.output_size_in_bytes
  estimate = extract_features.estimate_memory_bytes(module, *size)
  assert measured <= estimate <= 3 * measured, (estimate, measured)


def test_uint8_input_is_normalised_and_non_finite_input_refused(tiny_backbone):
  module, variables = tiny_backbone
  extract = extract_features.feature_fn(module, variables)
  pixels = np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)
  from_uint8 = extract(pixels)
  from_float = extract(pixels.astype(np.float32))
  np.testing.assert_allclose(from_uint8["stage_4"], from_float["stage_4"], atol=1e-5)
  with_nan = pixels.astype(np.float32)
  with_nan[3, 4, 0] = np.nan
  with pytest.raises(ValueError, match="1 non-finite"):
    extract(with_nan)
  with pytest.raises(TypeError, match="expects normalised float images"):  # the bare model refuses uint8
    module.apply(variables, jnp.asarray(pixels[None]))


def test_trainer_predict_normalises_uint8_inputs(tiny_backbone):
  from backbones.preprocess import normalize_image  # pylint: disable=g-import-not-at-top
  from projects.common import sharding  # pylint: disable=g-import-not-at-top
  from projects.common import trainer  # pylint: disable=g-import-not-at-top
  module, variables = tiny_backbone

  class _Model:
    flax_model = module

  mesh = sharding.create_mesh(jax.devices()[:1])
  predict = trainer.make_predict_fn(_Model(), mesh)
  pixels = np.random.default_rng(2).integers(0, 255, (1, 64, 64, 3), dtype=np.uint8)
  got = predict(variables, {"inputs": pixels})["stage_2"]
  want = predict(variables, {"inputs": normalize_image(pixels)})["stage_2"]  # the float path, same program
  np.testing.assert_allclose(got, want, atol=1e-5)


def test_coco_box_outside_its_image_is_named(tmp_path, caplog):
  from projects.detection.data import coco_builder  # pylint: disable=g-import-not-at-top
  annotations = {"images": [{"id": 1, "file_name": "a.jpg", "height": 100, "width": 80}],
                 "categories": [{"id": 3, "name": "car"}],
                 "annotations": [{"id": 10, "image_id": 1, "category_id": 3, "bbox": [5, 5, 20, 20]},
                                 {"id": 11, "image_id": 1, "category_id": 3, "bbox": [90, 10, 5, 5]},
                                 {"id": 12, "image_id": 1, "category_id": 3, "bbox": [-30, 10, 20, 5]}]}
  path = tmp_path / "instances.json"
  path.write_text(json.dumps(annotations))
  with caplog.at_level(logging.WARNING):
    split = coco_builder.load_coco_split(str(path), str(tmp_path))
  assert len(split.annotations[1]) == 3
  warning = " ".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
  assert "2 annotation(s) with a bbox entirely outside" in warning
  assert "11 (image_id 1" in warning and "12 (image_id 1" in warning and "10 (image_id" not in warning


def test_adversarial_names_map_to_distinct_files_and_nothing_foreign_is_replaced(tmp_path, monkeypatch,
                                                                                  tiny_backbone):
  """``a.jpg``, ``a.png`` and ``a.jpg.png`` (three images) give three files, each holding its own image's
  features; a foreign file in the way is kept (exit 1, named) unless --overwrite; the output folder inside the
  input folder is not read back on a second run."""
  monkeypatch.setattr(extract_features, "build_extractor", lambda *a, **k: tiny_backbone)
  images = tmp_path / "in"
  images.mkdir()
  rng = np.random.default_rng(1)
  sources = {}
  for name in ("a.jpg", "a.png", "a.jpg.png", "a_jpg.png"):
    Image.fromarray(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)).save(images / name, quality=95)
    sources[name] = str((images / name).resolve())
  out = images / "features"  # inside the input folder
  args = [*TINY_ARGS, "--input", str(images), "--output_dir", str(out)]
  shapes = extract_features.main(args)
  assert len(shapes) == 4
  files = sorted(out.iterdir())
  assert len(files) == 4 and sorted(str(np.load(f)["source"]) for f in files) == sorted(sources.values())
  assert len(extract_features.main(args)) == 4  # a re-run replaces its own outputs, reads none of them

  victim = files[0]
  victim.write_bytes(b"keep me")
  with pytest.raises(SystemExit, match="--overwrite"):
    extract_features.main(args)
  assert victim.read_bytes() == b"keep me"
  extract_features.main(args + ["--overwrite"])
  assert victim.read_bytes() != b"keep me"
