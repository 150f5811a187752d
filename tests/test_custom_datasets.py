"""Your own folder and Cityscapes through the segmentation pipeline, configs, job CLI and predict command."""

import io
import json
import os
import pathlib

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf

from projects import registry
from projects.common import config_utils
from projects.common import guards
from projects.segmentation import train
from projects.segmentation.data import datasets
from projects.segmentation.data import folder_builders
from projects.segmentation.data import make_synthetic_folder as synthetic
from projects.segmentation.data import pipeline
from projects.segmentation.data import transforms

REPO = pathlib.Path(__file__).resolve().parents[1]
IGNORE = 200  # a non-default ignore value, from classes.txt


def _prepare(tmp_path_factory, name, layout, **kwargs):
  root = tmp_path_factory.mktemp(layout)
  manual = synthetic.make_synthetic_folder(str(root / "manual"), layout, **kwargs)
  folder_builders.prepare(name, manual, str(root / "tfds"))
  return pathlib.Path(manual), str(root / "tfds")


@pytest.fixture(scope="module")
def folder_data(tmp_path_factory):
  """6 train / 3 val images (JPEG and PNG alternate, landscape and portrait), ignore value 200."""
  return _prepare(tmp_path_factory, "segmentation_folder", "folder", num_train=6, num_val=3,
                  short_side=(40, 72), ignore=IGNORE)


@pytest.fixture(scope="module")
def cityscapes_data(tmp_path_factory):
  """2 train / 2 val 32 x 64 frames in the Cityscapes layout (labelTrainIds, 255 ignored)."""
  return _prepare(tmp_path_factory, "cityscapes_train_ids", "cityscapes", num_train=2, num_val=2,
                  short_side=(32, 32))


def _config(data_dir, name, batch_size=2, **dataset):
  settings = dict(num_classes=None, data_dir=data_dir, scale=(128, 32), crop_size=(32, 32),
                  eval_scale=(128, 32), shuffle_buffer_size=4)
  settings.update(dataset)
  return ml_collections.ConfigDict(dict(dataset_name=name, rng_seed=0, batch_size=batch_size, eval_batch_size=2,
                                        dataset=settings))


def _masks(split_dir, suffix):
  """The raw arrays of the mask files under ``split_dir``."""
  return [np.asarray(Image.open(p)) for p in sorted(split_dir.rglob("*" + suffix))]


def _check_eval(dataset, expected, ignore, buckets):
  """Every real eval example: image_size = AlignResize of its original size, orig_label = its mask file."""
  expected = [np.where(m == ignore, -1, m.astype(np.int32)) for m in expected]
  found = []
  for batch in dataset.eval_iter_fn():
    assert batch["inputs"].shape[1:3] in buckets
    for i in np.flatnonzero(batch["batch_mask"]):
      oh, ow = batch["orig_size"][i]
      labels = train.original_label(batch["orig_label"][i, :oh, :ow])
      matches = [j for j, m in enumerate(expected) if m.shape == labels.shape and np.array_equal(m, labels)]
      assert len(matches) == 1
      found += matches
      aligned = transforms.align_resize_size(int(oh), int(ow), (128, 32), 32)
      assert tuple(batch["image_size"][i]) == tuple(int(v) for v in aligned)
      h, w = batch["image_size"][i]
      assert set(np.unique(batch["label"][i, :h, :w])) <= set(np.unique(labels))
  assert sorted(found) == list(range(len(expected)))


def test_encoded_image_shape_reads_jpeg_and_png_headers():
  rng = np.random.default_rng(0)
  for mode, fmt in (("RGB", "JPEG"), ("RGB", "PNG"), ("L", "PNG"), ("L", "JPEG")):
    array = rng.integers(0, 255, (37, 53, 3) if mode == "RGB" else (37, 53), np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array, mode).save(buffer, format=fmt)
    shape = datasets.encoded_image_shape(tf.constant(buffer.getvalue()))
    assert shape.dtype == tf.int32 and shape.numpy().tolist() == [37, 53], (mode, fmt)
    decoded = datasets.decode_image(tf.constant(buffer.getvalue()), datasets.DATASETS["segmentation_folder"])
    assert decoded.shape == (37, 53, 3)


def test_label_codes_map_ignore_and_classes():
  raw = tf.constant([[0, 1, 200], [7, 200, 3]], tf.uint8)
  codes = datasets.label_codes(raw, datasets.DATASETS["segmentation_folder"], 200)
  np.testing.assert_array_equal(transforms.reduce_zero_label(codes), [[0, 1, -1], [7, -1, 3]])
  ade = datasets.label_codes(raw, datasets.DATASETS["ade20k"], 0)
  np.testing.assert_array_equal(transforms.reduce_zero_label(ade), [[-1, 0, 199], [6, 199, 2]])
  with pytest.raises(ValueError, match="not a segmentation dataset; known"):
    datasets.get("pascal_voc")


def test_custom_folder_batches(folder_data):
  manual, data_dir = folder_data
  dataset = pipeline.get_dataset(_config(data_dir, "segmentation_folder"))
  meta = dataset.meta_data
  assert meta["num_classes"] == 8 and meta["class_names"] == synthetic.FOLDER_CLASS_NAMES
  assert (meta["num_train_examples"], meta["num_eval_examples"]) == (6, 3)
  iterator = dataset.train_iter_fn(0)
  batches = [next(iterator) for _ in range(2)]
  for batch in batches:
    assert batch["inputs"].shape == (2, 32, 32, 3) and batch["label"].dtype == np.int32
    assert set(np.unique(batch["label"])) <= set(range(-1, 8))
  assert len(set(np.unique([b["label"] for b in batches])) - {-1}) >= 3
  _check_eval(dataset, _masks(manual / "masks" / "val", ".png"), IGNORE, meta["eval_buckets"])
  with pytest.raises(ValueError, match="num_classes=5 but the segmentation_folder dataset .* has 8 classes"):
    pipeline.get_dataset(_config(data_dir, "segmentation_folder", num_classes=5))
  with pytest.raises(FileNotFoundError, match="prepare_folder --dataset segmentation_folder"):
    pipeline.get_dataset(_config(str(manual / "nothing"), "segmentation_folder"))


def test_every_segmentation_dataset_is_registered_under_its_own_name():
  for name in datasets.DATASETS:
    assert registry.get_dataset_fn(name) is pipeline.get_dataset
  # An earlier run's tfds builder names map onto today's table.
  assert {datasets.DATASETS[n].builder_class.name: n for n in datasets.DATASETS} == guards.LEGACY_DATASET_NAMES


def test_an_earlier_runs_dataset_name_layout_still_reads(folder_data):
  """config.json of earlier runs: dataset_name "ade20k" for every dataset, the real one in dataset.name."""
  _, data_dir = folder_data
  legacy = _config(data_dir, "ade20k")
  with legacy.unlocked():
    legacy.dataset.name = "segmentation_folder"
  assert pipeline.get_dataset(legacy).meta_data["class_names"] == synthetic.FOLDER_CLASS_NAMES
  with legacy.unlocked():
    legacy.dataset_name = "cityscapes"
  with pytest.raises(ValueError, match=r"^config.dataset.name='segmentation_folder' \(with dataset_name="
                     r"'cityscapes'\) is no longer read: set dataset_name to one of \['ade20k', 'cityscapes', "
                     r"'segmentation_folder'\] and remove dataset.name$"):
    pipeline.get_dataset(legacy)


def test_cityscapes_through_its_config(cityscapes_data):
  """The recipe's own dataset settings: 512 x 1024 crops, frames evaluated whole at 1024 x 2048."""
  manual, data_dir = cityscapes_data
  config = config_utils.load_config(str(REPO / "configs" / "upernet_crossformer_s_cityscapes.py"))
  assert tuple(config.dataset.crop_size) == (512, 1024) and tuple(config.dataset.scale) == (2048, 1024)
  assert (config.inference.mode, tuple(config.inference.crop_size), tuple(config.inference.stride)) == (
      "slide", (1024, 1024), (768, 768))
  with config.unlocked():
    config.dataset.data_dir = data_dir
    config.batch_size = config.eval_batch_size = 2
    config.dataset.shuffle_buffer_size = 4
  dataset = pipeline.get_dataset(config)
  assert dataset.meta_data["class_names"] == folder_builders.CITYSCAPES_CLASSES
  assert dataset.meta_data["num_classes"] == 19
  batch = next(dataset.train_iter_fn(0))
  assert batch["inputs"].shape == (2, 512, 1024, 3)
  drawn = set(synthetic.CITYSCAPES_IDS.values())
  assert set(np.unique(batch["label"])) <= drawn | {-1} and len(set(np.unique(batch["label"])) & drawn) >= 2
  evals = list(dataset.eval_iter_fn())
  assert len(evals) == 1 and evals[0]["inputs"].shape == (2, 1024, 2048, 3)
  np.testing.assert_array_equal(evals[0]["image_size"], [[1024, 2048]] * 2)
  np.testing.assert_array_equal(evals[0]["orig_size"], [[32, 64]] * 2)
  expected = [np.where(m == 255, -1, m.astype(np.int32))
              for m in _masks(manual / "gtFine" / "val", "_labelTrainIds.png")]
  got = sorted((train.original_label(evals[0]["orig_label"][i, :32, :64]) for i in range(2)),
               key=lambda a: a.tobytes())
  for a, b in zip(got, sorted(expected, key=lambda a: a.tobytes())):
    np.testing.assert_array_equal(a, b)


def test_custom_folder_config():
  config = config_utils.load_config(str(REPO / "configs" / "fpn_crossformer_s_custom_folder.py"),
                                    {"dataset.data_dir": "/data/tfds", "dataset.num_classes": 4})
  assert config.dataset_name == "segmentation_folder" and "name" not in config.dataset
  assert config.dataset.num_classes == 4
  assert config.model.decode_head.type == "semantic_fpn" and config.model.backbone.name == "crossformer_s"
  default = config_utils.load_config(str(REPO / "configs" / "fpn_crossformer_s_custom_folder.py"))
  assert default.dataset.num_classes is None  # the dataset's


TINY_CONFIG = '''
from configs import common
from configs import fpn_crossformer_s_custom_folder


def get_config():
  config = fpn_crossformer_s_custom_folder.get_config()
  config.model.backbone = common.backbone_config(
      "s", group_sizes=(7, 7, 7, 7), intervals=(4, 2, 1, 1), embed_dim=16, depths=(1, 1, 1, 1),
      num_heads=(1, 2, 4, 8))
  config.model.backbone.drop_path_rate = 0.0
  config.model.neck.out_channels = 16
  config.model.decode_head.channels = 16
  config.dataset.update(dict(scale=(128, 64), crop_size=(64, 64), eval_scale=(128, 64), shuffle_buffer_size=4,
                             eval_buckets=((64, 64), (64, 128), (128, 64))))
  return config
'''


@pytest.mark.slow
def test_fine_tune_custom_folder_through_cli_then_predict(tmp_path_factory, tmp_path, monkeypatch):
  """The custom-folder recipe (shrunk) for 3 steps through the job's CLI; evaluate and predict on the run."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from projects.segmentation import evaluate  # pylint: disable=g-import-not-at-top
  from projects.segmentation import main  # defines the flags  # pylint: disable=g-import-not-at-top
  from projects.segmentation import predict  # pylint: disable=g-import-not-at-top
  # Square 48 x 48 validation images: one AlignResize shape, so one inference program.
  manual, data_dir = _prepare(tmp_path_factory, "segmentation_folder", "folder", num_train=4, num_val=2,
                              short_side=(48, 48), max_aspect=1.0)
  config_path = tmp_path / "tiny_custom_folder.py"
  config_path.write_text(TINY_CONFIG)
  workdir = tmp_path / "work"
  argv = ["main", f"--config={config_path}", f"--workdir={workdir}", f"--config.dataset.data_dir={data_dir}",
          "--config.num_training_steps=3", "--config.batch_size=4", "--config.eval_batch_size=4",
          "--config.log_summary_steps=1", "--config.log_eval_steps=0", "--config.checkpoint_steps=3",
          "--config.progress_bar=False"]
  monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    main.main(["main"])
  finally:
    flags.FLAGS.unparse_flags()
  names = list(synthetic.FOLDER_CLASS_NAMES)
  stored = json.loads((workdir / "config.json").read_text())
  assert stored["dataset_meta"] == {"num_classes": 8, "class_names": names}
  results = json.loads((workdir / "eval_results.json").read_text())
  assert 0.0 <= results["mIoU"] <= 1.0 and results["num_batches"] == 1
  lines = (workdir / "per_class_iou.tsv").read_text().splitlines()
  assert [line.split("\t")[0] for line in lines[1:]] == names
  assert os.path.getsize(workdir / "predictions.png") > 0
  # The evaluate command restores the run and scores the same split with the same protocol.
  again = evaluate.main(["--checkpoint", str(workdir), "--output_dir", str(tmp_path / "eval")])
  assert again["mIoU"] == pytest.approx(results["mIoU"], abs=1e-6)
  # The predict command names the folder's classes (overlay legend) and writes class-index PNGs.
  seen = {}
  overlay = predict.visualize.overlay_with_legend

  def record(rgb, label_map, class_names, *args, **kwargs):
    seen["class_names"] = list(class_names)
    return overlay(rgb, label_map, class_names, *args, **kwargs)

  monkeypatch.setattr(predict.visualize, "overlay_with_legend", record)
  image = next((manual / "images" / "val").iterdir())
  summary = predict.main(["--checkpoint", str(workdir), "--input", str(image), "--output_dir",
                          str(tmp_path / "pred")])
  assert not summary["skipped"] and seen["class_names"] == names
  label = np.asarray(Image.open(tmp_path / "pred" / f"{image.stem}.png"))
  assert label.shape == (48, 48) and label.max() < 8
