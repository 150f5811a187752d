"""Whole-model restore, the predictors and predict commands, and the mmseg evaluation protocol.

One tiny segmentation model and one tiny RetinaNet are saved as training workdirs (orbax checkpoint +
config.json, as the trainer writes them) and shared by the module; test images are generated here.
"""

import json
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest

from projects.common import checkpoint as checkpoint_lib
from projects.common import config_utils
from projects.common import model_io
from projects.common import images as images_lib
from backbones import outputs
from projects.common import predict_io
from projects.common import restore
from projects.common.train_state import TrainState
from projects.segmentation import predictor as seg_predictor
from tests.conftest import FixtureDir

REPO = pathlib.Path(__file__).resolve().parents[1]
SEG_CLASSES = 150


def _seg_config():
  return config_utils.load_config(str(REPO / "configs" / "tiny_ade20k.py"), {
      "model.backbone.overrides.embed_dim": 16, "model.neck.out_channels": 16,
      "model.decode_head.channels": 16})


def _init(model, seed=0):
  """Random variables of the model's shapes without compiling its initialiser (BatchNorm: mean 0, var 1)."""
  rngs = {"params": jax.random.PRNGKey(seed), "dropout": jax.random.PRNGKey(seed + 1)}
  shapes = jax.eval_shape(lambda: model.flax_model.init(rngs, jnp.zeros((1, 128, 128, 3)), train=False))
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = path[-1].key
    if path[0].key == "batch_stats":
      return np.full(leaf.shape, 1.0 if name == "var" else 0.0, leaf.dtype)
    if name == "scale":
      return np.ones(leaf.shape, leaf.dtype)
    return (0.1 * rng.standard_normal(leaf.shape)).astype(leaf.dtype)

  return dict(jax.tree_util.tree_map_with_path(fill, shapes))


def _save_workdir(workdir, config, variables):
  variables = dict(variables)
  state = TrainState(step=jnp.asarray(3, jnp.int32), params=variables.pop("params"), model_state=variables,
                     opt_state={"count": jnp.zeros((), jnp.int32)}, rng=jax.random.PRNGKey(0))
  checkpointer = checkpoint_lib.Checkpointer(workdir / "checkpoints", asynchronous=False)
  checkpointer.save(3, state, force=True)
  checkpointer.close()
  config_utils.save_config(config, str(workdir))
  return workdir


@pytest.fixture(scope="module")
def seg_workdir(tmp_path_factory):
  config = _seg_config()
  model = model_io.build_model(config, {"num_classes": SEG_CLASSES}, inference=True)
  variables = _init(model)
  return _save_workdir(tmp_path_factory.mktemp("seg_run"), config, variables), variables


@pytest.fixture(scope="module")
def segmenter(seg_workdir):
  return seg_predictor.Segmenter.from_checkpoint(None, str(seg_workdir[0]))


@pytest.fixture(scope="module")
def images_dir(tmp_path_factory):
  """A 333x500 photo as JPEG and PNG (same stem), grayscale, RGBA, 16-bit and a corrupt file."""
  folder = tmp_path_factory.mktemp("images")
  rng = np.random.default_rng(0)
  rgb = np.repeat(np.repeat(rng.integers(0, 256, (37, 50, 3), dtype=np.uint8), 9, axis=0), 10, axis=1)
  photo = Image.fromarray(rgb[:333, :500])
  photo.save(folder / "photo.jpg", quality=90)
  photo.save(folder / "photo.png")
  photo.convert("L").save(folder / "gray.png")
  photo.convert("RGBA").save(folder / "rgba.png")
  Image.fromarray((np.asarray(photo.convert("L"), np.uint16) * 257)).save(folder / "deep16.png")
  (folder / "broken.jpg").write_bytes(b"\xff\xd8 this is not a JPEG")
  return folder


def test_read_image_modes_and_exif(images_dir, tmp_path):
  reference = images_lib.read_image(images_dir / "photo.png")
  assert reference.shape == (333, 500, 3) and reference.dtype == np.uint8
  for name in ("gray.png", "rgba.png", "deep16.png"):
    image = images_lib.read_image(images_dir / name)
    assert image.shape == (333, 500, 3) and image.dtype == np.uint8, name
  np.testing.assert_array_equal(images_lib.read_image(images_dir / "rgba.png"), reference)
  np.testing.assert_array_equal(images_lib.read_image(images_dir / "deep16.png"),
                                images_lib.read_image(images_dir / "gray.png"))
  # EXIF orientation 6 (rotate 90 degrees clockwise to display): stored 333x500, displayed 500x333.
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(reference).save(tmp_path / "rotated.jpg", exif=exif, quality=100, subsampling=0)
  rotated = images_lib.read_image(tmp_path / "rotated.jpg")
  assert rotated.shape == (500, 333, 3)
  assert np.abs(rotated.astype(int) - np.rot90(reference, k=-1)).mean() < 8  # JPEG loss only
  with pytest.raises(images_lib.UnreadableImageError, match="broken.jpg"):
    images_lib.read_image(images_dir / "broken.jpg")


def test_restore_from_workdir_and_errors(seg_workdir, tmp_path):
  workdir, variables = seg_workdir
  model, restored = restore.restore_model(None, str(workdir))
  assert type(model).__name__ == "SegmentationModel" and model.num_classes == SEG_CLASSES
  assert model.dataset_meta_data["class_names"][0] == "wall"  # ADE20K names for 150 classes
  for a, b in zip(jax.tree.leaves(restored), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)
  with pytest.raises(FileNotFoundError, match="nowhere"):
    restore.restore_model(None, str(tmp_path / "nowhere"))
  wider = config_utils.apply_overrides(_seg_config(), {"model.decode_head.channels": 24})
  with pytest.raises(ValueError, match=f"checkpoint {workdir}.*does not fit.*decode_head"):
    restore.restore_model(wider, str(workdir))


def test_gather_resize_is_pytorch_bilinear():
  from heads.layers import resize_bilinear  # pylint: disable=g-import-not-at-top
  x = jax.random.normal(jax.random.PRNGKey(0), (7, 9, 3))
  for out in ((20, 5), (3, 31)):
    rows = seg_predictor.resize_indices(7, out[0], out[0] + 6)
    cols = seg_predictor.resize_indices(9, out[1], out[1] + 2)
    got = seg_predictor._gather_resize(x, rows, cols)[:out[0], :out[1]]
    np.testing.assert_allclose(got, resize_bilinear(x[None], out)[0], atol=1e-5)


def test_segmenter_returns_a_map_at_the_image_size(segmenter, images_dir):
  assert segmenter.test_time.mode == "whole" and segmenter.test_time.eval_scale == (256, 128)
  label_map = segmenter(images_dir / "photo.jpg")
  assert label_map.shape == (333, 500) and label_map.dtype == np.int32
  assert 0 <= label_map.min() and label_map.max() < SEG_CLASSES
  for source in (images_dir / "gray.png", np.asarray(Image.open(images_dir / "rgba.png")),
                 Image.open(images_dir / "deep16.png")):
    assert segmenter(source).shape == (333, 500)


def test_segmentation_predict_command(seg_workdir, images_dir, tmp_path):
  from projects.segmentation import predict  # pylint: disable=g-import-not-at-top
  out = tmp_path / "out"
  argv = ["--checkpoint", str(seg_workdir[0]), "--input", str(images_dir), "--output_dir", str(out)]
  summary = predict.main(argv)
  assert list(summary["skipped"]) == [str(images_dir / "broken.jpg")]
  assert "broken.jpg" in summary["skipped"][str(images_dir / "broken.jpg")]
  names = sorted(p.name for p in out.iterdir())
  assert names == sorted(f"{stem}{suffix}" for stem in ("photo_jpg", "photo_png", "gray", "rgba", "deep16")
                         for suffix in predict.SUFFIXES)
  label = np.asarray(Image.open(out / "photo_jpg.png"))
  assert label.shape == (333, 500) and label.dtype == np.uint8
  overlay = Image.open(out / "photo_jpg_overlay.png")
  assert overlay.size[0] == 500 and overlay.size[1] > 333  # the legend sits below the image
  assert outputs.recorded_source(out / "gray.png") == str((images_dir / "gray.png").resolve())
  # A re-run replaces its own outputs; a file written by something else is never overwritten.
  (out / "rgba.png").write_bytes(b"somebody else's file")
  again = predict.main(argv)
  assert set(again["skipped"]) == {str(images_dir / "broken.jpg"), str(images_dir / "rgba.png")}
  assert (out / "rgba.png").read_bytes() == b"somebody else's file"
  assert "--overwrite" in again["skipped"][str(images_dir / "rgba.png")]


def test_output_names_never_collide(tmp_path):
  inputs = [tmp_path / n for n in ("a.jpg", "a.png", "a_overlay.jpg", "b.jpg", "sub/a.jpg")]
  bases = outputs.output_bases(inputs, tmp_path, tmp_path / "out", (".png", "_overlay.png"))
  files = [str(b) + s for b in bases.values() for s in (".png", "_overlay.png")]
  assert len(set(files)) == len(files)
  assert bases[tmp_path / "b.jpg"] == tmp_path / "out" / "b"
  assert bases[tmp_path / "sub/a.jpg"] == tmp_path / "out" / "sub" / "a"


def _constant_variables(model, variables, cls):
  """The model's variables with a decode head that predicts ``cls`` everywhere."""
  flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, variables))
  for key in list(flat):
    if key[:2] == ("params", "decode_head") and "conv_seg" in key:
      flat[key] = np.zeros_like(flat[key])
      if key[-1] == "bias":
        flat[key][cls] = 10.0
  return flax.traverse_util.unflatten_dict(flat)


def test_evaluator_scores_at_the_original_size(seg_workdir):
  """Constant class-0 predictions: IoU_0 = labelled-0 / labelled pixels of the ORIGINAL annotation."""
  from projects.segmentation import train  # pylint: disable=g-import-not-at-top
  model, variables = restore.restore_model(None, str(seg_workdir[0]))
  evaluator = train.SegmentationEvaluator(model, num_examples=0,
                                          test_time=seg_predictor.test_time_from_config(model.config))
  evaluator.reset()
  evaluator.begin_pass(restore.InferenceState(tree=_constant_variables(model, variables, 0)))
  raw = np.zeros((2, 64, 64), np.uint8)  # canvas; raw 1 = class 0, raw 2 = class 1, 0 = ignore/padding
  raw[0, :20, :45] = 2
  raw[0, :20, :3] = 1  # 60 pixels of class 0 in a 20x45 annotation of 900
  raw[0, 19, 44] = 0  # one ignored pixel
  batch = {"inputs": np.zeros((2, 64, 64, 3), np.float32),
           "label": np.zeros((2, 64, 64), np.int32),  # the resized frame: would score 100% class 0
           "batch_mask": np.array([1.0, 0.0], np.float32),
           "image_size": np.array([[32, 64], [0, 0]], np.int32),
           "orig_label": raw, "orig_size": np.array([[20, 45], [0, 0]], np.int32)}
  evaluator.update(None, batch)
  results = evaluator.compute()
  assert results["protocol"] == "original_size"
  confusion = results["confusion_matrix"]
  assert confusion.sum() == 899 and confusion[0, 0] == 60 and confusion[1, 0] == 839
  assert results["mIoU"] == pytest.approx((60 / 899 + 0.0) / 2)


@pytest.mark.slow
def test_evaluate_command_scores_every_original_pixel(seg_workdir, tmp_path):
  """``projects.segmentation.evaluate`` on a generated ADE20K split: every labelled pixel of the original
  annotations is scored once, none of the padding."""
  from projects.segmentation import evaluate  # pylint: disable=g-import-not-at-top
  from projects.segmentation.data import ade20k_builder  # pylint: disable=g-import-not-at-top
  from projects.segmentation.data import make_synthetic_ade20k  # pylint: disable=g-import-not-at-top
  manual = make_synthetic_ade20k.make_synthetic_ade20k(str(tmp_path / "manual"), num_train=1, num_val=3, seed=1,
                                                       short_side=(50, 50), max_aspect=1.0)
  ade20k_builder.prepare(manual, str(tmp_path / "tfds"))
  annotations = sorted((pathlib.Path(manual) / ade20k_builder.ROOT / "annotations" / "validation").glob("*.png"))
  labelled = sum(int((np.asarray(Image.open(p)) > 0).sum()) for p in annotations)
  results = evaluate.main(["--checkpoint", str(seg_workdir[0]), "--data_dir", str(tmp_path / "tfds"),
                           "--eval_batch_size", "2", "--output_dir", str(tmp_path / "eval")])
  assert results["protocol"] == "original_size" and len(annotations) == 3
  assert results["confusion_matrix"].sum() == labelled
  assert json.load(open(tmp_path / "eval" / "eval_results.json"))["mIoU"] == pytest.approx(results["mIoU"])


def test_evaluate_commands_refuse_the_other_tasks_model(seg_workdir, det_workdir):
  from projects.detection import evaluate as det_evaluate  # pylint: disable=g-import-not-at-top
  from projects.segmentation import evaluate as seg_evaluate  # pylint: disable=g-import-not-at-top
  with pytest.raises(SystemExit, match="not a detection model; use projects.segmentation.evaluate"):
    det_evaluate.main(["--checkpoint", str(seg_workdir[0])])
  with pytest.raises(SystemExit, match="not a segmentation model; use projects.detection.evaluate"):
    seg_evaluate.main(["--checkpoint", str(det_workdir)])


@pytest.fixture(scope="module")
def det_workdir(tmp_path_factory):
  config = config_utils.load_config(str(REPO / "configs" / "tiny_coco.py"), {"model.test_cfg.score_thr": 0.0})
  with config.unlocked():  # the dataset facts a model file carries
    config.dataset_meta = {"num_classes": 3, "class_names": ["circle", "square", "star"], "category_ids": [2, 7, 11]}
  model = model_io.build_model(config, {"num_classes": 3}, inference=True)
  return _save_workdir(tmp_path_factory.mktemp("det_run"), config, _init(model))


def test_detection_predict_command(det_workdir, images_dir, tmp_path):
  from projects.detection import predict  # pylint: disable=g-import-not-at-top
  summary = predict.main(["--checkpoint", str(det_workdir), "--input", str(images_dir / "photo.jpg"),
                          "--output_dir", str(tmp_path), "--score_threshold", "0"])
  assert not summary["skipped"]
  payload = json.load(open(tmp_path / "photo.json"))
  assert (payload["height"], payload["width"], payload["file_name"]) == (333, 500, "photo.jpg")
  results = payload["results"]
  assert len(results) == 100  # max_per_img with score_thr 0
  for r in results:
    x, y, w, h = r["bbox"]
    assert r["category_id"] in (2, 7, 11) and 0.0 <= r["score"] <= 1.0
    assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 500 + 1e-3 and y + h <= 333 + 1e-3
  assert Image.open(tmp_path / "photo.png").size == (500, 333)


def _official_layout(config, variables, keys_file):
  """A tiny model's variables written under the official mmseg key names (the layout of ``keys_file``,
  keeping the keys the tiny model has), as an official checkpoint would hold them."""
  from heads import official  # pylint: disable=g-import-not-at-top
  flat = {(c,) + tuple(path): v for c in variables
          for path, v in flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, variables[c])).items()}
  state_dict = {}
  for entry in json.loads(keys_file.read_text())["keys"]:
    key = entry["key"]
    prefix, rest = key.split(".", 1)
    target = official.PREFIX_CONVERTERS[prefix](rest, np.zeros(entry["shape"], np.float32))
    if target is None:
      if key.endswith("num_batches_tracked") and key.rsplit(".", 1)[0] + ".running_mean" in state_dict:
        state_dict[key] = np.zeros((), np.int64)
      continue
    collection, path, _ = target
    value = flat.get((collection,) + tuple(path))
    if value is None:
      continue  # a block the tiny backbone does not have
    if path[-1] == "kernel":  # HWIO -> OIHW, (in, out) -> (out, in)
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    state_dict[key] = value
  return state_dict


def test_official_npz_converts_and_predicts(images_dir, tmp_path):
  keys_file = FixtureDir("heads") / "keys_fpn_crossformer_s.json"
  config = _seg_config()
  model = model_io.build_model(config, {"num_classes": SEG_CLASSES}, inference=True)
  variables = _init(model, seed=3)
  state_dict = _official_layout(config, variables, keys_file)
  assert "decode_head.conv_seg.weight" in state_dict and "backbone.layers.3.blocks.0.mlp.fc1.weight" in state_dict
  np.savez(tmp_path / "fpn_tiny.npz", **state_dict)
  segmenter = seg_predictor.Segmenter.from_checkpoint(config, str(tmp_path / "fpn_tiny.npz"))
  for a, b in zip(jax.tree.leaves(segmenter.variables), jax.tree.leaves(variables)):
    np.testing.assert_array_equal(a, b)  # every tensor back in its place
  label_map = segmenter(images_dir / "photo.jpg")
  assert label_map.shape == (333, 500) and len(np.unique(label_map)) > 1


def test_non_finite_pixels_are_refused_by_the_one_input_check(tmp_path):
  """A float image with NaN pixels used to become a class map (with a numpy cast warning); every command now
  refuses it naming the file, as feature extraction does."""
  values = np.full((8, 10), 100.0, np.float32)
  values[2, 3] = np.nan
  Image.fromarray(values, mode="F").save(tmp_path / "nan.tif")
  with pytest.raises(images_lib.UnreadableImageError, match=r"nan\.tif.*1 non-finite"):
    images_lib.read_image(tmp_path / "nan.tif")
  rgb = np.full((8, 10, 3), 100.0, np.float32)
  rgb[0, 0, :2] = (np.nan, np.inf)
  with pytest.raises(ValueError, match="2 non-finite"):
    images_lib.to_rgb_uint8(rgb)


def test_summary_of_one_image_shows_no_nan(capsys):
  predict_io.print_summary({"done": ["a.jpg"], "skipped": {}, "first_image_seconds": 1.5,
                            "seconds_per_image": float("nan")}, "segmented", "out")
  line = capsys.readouterr().out
  assert "nan" not in line and "first 1.50 s with compilation" in line and "skipped 0" in line
