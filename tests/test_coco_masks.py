"""COCO instance masks: annotation -> RLE, the coco_tree builder's masks, masks through resize/flip/pad."""

import json
import os

import ml_collections
import numpy as np
from pycocotools import mask as mask_util
import pytest

from projects.detection.data import coco_source
from projects.detection.data import input_pipeline
from projects.detection.data import make_synthetic_coco
from projects.detection.data import prepare_coco
from projects.detection.data import rle

IMAGE_SCALE = (160, 96)
MAX_BOXES = 6


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory):
  """A generated COCO tree prepared with the real builder: (data_dir, train json, val json)."""
  root = tmp_path_factory.mktemp("coco_masks")
  manual_dir, data_dir = str(root / "tree"), str(root / "tfds")
  make_synthetic_coco.make_synthetic_coco(manual_dir, num_train=10, num_val=5, seed=0)
  prepare_coco.prepare({"builder": "coco_tree", "manual_dir": manual_dir, "data_dir": data_dir})
  load = lambda name: json.load(open(os.path.join(manual_dir, "annotations", name)))
  return data_dir, load("instances_train2017.json"), load("instances_val2017.json")


def _ann_mask(ann, height, width):
  """The reference decoding of a COCO annotation's segmentation (pycocotools, as COCO.annToMask)."""
  seg = ann["segmentation"]
  rles = mask_util.frPyObjects(seg, height, width) if isinstance(seg, list) or isinstance(
      seg["counts"], list) else seg
  return mask_util.decode(mask_util.merge(rles) if isinstance(rles, list) else rles)


def test_polygon_rle_and_crowd_rle_decode_to_the_same_mask():
  height, width = 12, 10
  mask = np.zeros((height, width), np.uint8)
  mask[2:7, 3:9] = 1  # pixels x 3..8, y 2..6: the polygon on pixel boundaries is x 3..9, y 2..7
  polygon = {"segmentation": [[3, 2, 9, 2, 9, 7, 3, 7]]}
  compressed = mask_util.encode(np.asfortranarray(mask))
  flat = mask.flatten(order="F")
  runs = np.diff(np.flatnonzero(np.diff(np.concatenate([[1], flat, [1 - flat[-1]]])))).tolist()
  runs = [0] + runs if flat[0] else runs  # COCO runs start with background
  crowd = {"segmentation": {"size": [height, width], "counts": runs}, "iscrowd": 1}
  compressed_rle = {"segmentation": {"size": [height, width], "counts": compressed["counts"].decode()}}
  for ann in (polygon, crowd, compressed_rle):
    counts = rle.segmentation_to_rle(ann, height, width, "x.json: annotation id 1")
    assert isinstance(counts, str)
    np.testing.assert_array_equal(rle.decode_masks([counts], height, width)[..., 0], mask)
  assert rle.segmentation_to_rle({"segmentation": []}, height, width, "x") == ""
  assert not rle.decode_masks([""], height, width).any()
  encoded = rle.encode_masks(mask[None])
  assert json.loads(json.dumps(encoded)) == encoded  # JSON-ready: counts is a str
  np.testing.assert_array_equal(mask_util.decode({**encoded[0], "counts": encoded[0]["counts"].encode()}), mask)


@pytest.mark.parametrize("seg, pattern", [
    ([[1, 2, 3, 4]], "malformed polygon"),
    ({"size": [5, 5], "counts": [25]}, r"RLE of size \[5, 5\] on an image of size \[12, 10\]"),
    ({"size": [12, 10], "counts": [3, 4]}, "counts do not cover"),
    ("not a mask", "neither polygons nor RLE"),
])
def test_malformed_segmentation_names_the_annotation(seg, pattern):
  with pytest.raises(ValueError, match=r"x\.json: annotation id 7 .*" + pattern):
    rle.segmentation_to_rle({"segmentation": seg}, 12, 10, "x.json: annotation id 7")


def test_builder_stores_every_instance_mask(coco_tree):
  data_dir, train_json, _ = coco_tree
  builder = coco_source.make_builder({"builder": "coco_tree", "data_dir": data_dir})
  assert str(builder.version) == "1.1.0" and builder.has_masks
  assert builder.info.metadata["annotations_without_segmentation"] == {"train": 0, "validation": 0}
  kinds = set()
  for example in builder.as_data_source("train"):
    info = next(i for i in train_json["images"] if i["id"] == example["image/id"])
    objects = example["objects"]
    decoded = rle.decode_masks(list(objects["segmentation"]), info["height"], info["width"])
    for k, ann_id in enumerate(objects["id"]):
      ann = next(a for a in train_json["annotations"] if a["id"] == ann_id)
      kinds.add(("crowd " if ann["iscrowd"] else "") + type(ann["segmentation"]).__name__)
      np.testing.assert_array_equal(decoded[..., k], _ann_mask(ann, info["height"], info["width"]))
  assert kinds == {"list", "dict", "crowd dict"}  # polygons, compressed RLE, crowd uncompressed RLE


def _config(data_dir, **dataset):
  return ml_collections.ConfigDict({
      "seed": 0, "batch_size": 4, "eval_batch_size": 4,
      "dataset": {"data_dir": data_dir, "image_scale": IMAGE_SCALE, "max_boxes": MAX_BOXES,
                  "num_parallel_calls": 1, **dataset}})


def _expected_masks(coco_json, image_id, size_hw):
  """Non-crowd masks of an image, nearest-resized as cv2 (source pixel floor(dst * src / dst), in float32)."""
  info = next(i for i in coco_json["images"] if i["id"] == image_id)
  anns = [a for a in coco_json["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
  source = lambda dst, src: np.floor(np.arange(dst, dtype=np.float32) * (np.float32(src) / np.float32(dst)))
  rows = source(size_hw[0], info["height"]).astype(int)
  cols = source(size_hw[1], info["width"]).astype(int)
  return [_ann_mask(a, info["height"], info["width"])[rows][:, cols] for a in anns]


def _assert_mask_in_box(mask, box):
  """The mask lies in its box (up to the nearest-resize step) and fills a good part of it."""
  ys, xs = np.nonzero(mask)
  x0, y0, x1, y1 = box
  assert xs.min() >= x0 - 1.5 and ys.min() >= y0 - 1.5 and xs.max() + 1 <= x1 + 1.5 and ys.max() + 1 <= y1 + 1.5
  assert len(xs) >= 0.4 * (x1 - x0) * (y1 - y0)
  assert abs(xs.min() - x0) <= 1.5 or abs(xs.max() + 1 - x1) <= 1.5  # touches its box


def test_masks_follow_resize_flip_and_pad_like_the_image_and_boxes(coco_tree):
  data_dir, train_json, _ = coco_tree
  plain = input_pipeline.get_dataset(_config(data_dir, flip_prob=0.0, with_masks=True), process_index=0,
                                     process_count=1)
  flipped = input_pipeline.get_dataset(_config(data_dir, flip_prob=1.0, with_masks=True), process_index=0,
                                       process_count=1)
  steps = plain.meta_data["steps_per_epoch"]
  checked = 0
  for batch, mirror in zip(*(([next(it) for _ in range(steps)]) for it in (plain.train_iter_fn(0),
                                                                           flipped.train_iter_fn(0)))):
    label = batch["label"]
    masks = label["masks"]
    assert masks.dtype == np.uint8 and masks.shape == (4, MAX_BOXES, *batch["inputs"].shape[1:3])
    for i, image_id in enumerate(label["image/id"]):
      h, w = label["image_size"][i]
      expected = _expected_masks(train_json, image_id, (h, w))
      n = len(expected)
      assert n and (label["labels"][i, :n] >= 0).all()
      for k in range(n):  # the boxes' order, the image's resize, zero padding outside the valid region
        np.testing.assert_array_equal(masks[i, k, :h, :w], expected[k])
        assert not masks[i, k, h:].any() and not masks[i, k, :, w:].any()
        _assert_mask_in_box(masks[i, k], label["boxes"][i, k])
        np.testing.assert_array_equal(mirror["label"]["masks"][i, k, :h, :w], masks[i, k, :h, :w][:, ::-1])
        _assert_mask_in_box(mirror["label"]["masks"][i, k], mirror["label"]["boxes"][i, k])
        checked += 1
      assert not masks[i, n:].any()  # padding instances are all zero
  assert checked >= 9
  eval_batch = next(plain.eval_iter_fn())
  assert not eval_batch["label"]["masks"][eval_batch["batch_mask"] == 0].any()  # filler: no targets


def test_masks_only_when_asked(coco_tree):
  dataset = input_pipeline.get_dataset(_config(coco_tree[0]), process_index=0, process_count=1)
  assert "masks" not in next(dataset.train_iter_fn(0))["label"]


def test_stock_coco_has_no_masks_and_says_where_to_go(tmp_path):
  config = _config(str(tmp_path / "tfds"), builder="coco/2017", with_masks=True, manual_dir="/data/coco")
  with pytest.raises(coco_source.MasksNotAvailableError) as info:
    input_pipeline.get_dataset(config, process_index=0, process_count=1)
  message = str(info.value)
  assert "coco/2017 builder stores boxes but no instance masks" in message
  assert "--config.dataset.builder=coco_tree" in message
  assert "python -m projects.detection.data.prepare_coco --builder coco_tree" in message


def test_a_build_without_masks_serves_detection_but_not_mask_jobs(tmp_path):
  """A dataset prepared by coco_tree 1.0.0 (before masks) keeps working for RetinaNet; a mask job says what to do."""
  from projects.detection.data import coco_builder  # pylint: disable=g-import-not-at-top
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top

  class CocoTreeV1(coco_builder.CocoTree, skip_registration=True):
    __module__ = coco_builder.__name__  # tfds reads the builder's package resources
    name = "coco_tree"
    VERSION = tfds.core.Version("1.0.0")
    SUPPORTED_VERSIONS = []

  manual_dir, data_dir = str(tmp_path / "tree"), str(tmp_path / "tfds")
  make_synthetic_coco.make_synthetic_coco(manual_dir, num_train=4, num_val=2, seed=2)
  CocoTreeV1(data_dir=data_dir).download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=manual_dir),
      file_format=tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
  builder = coco_source.make_builder({"builder": "coco_tree", "data_dir": data_dir})
  assert str(builder.version) == "1.0.0" and not builder.has_masks
  batch = next(input_pipeline.get_dataset(_config(data_dir, max_boxes=4), process_index=0,
                                          process_count=1).train_iter_fn(0))
  assert "masks" not in batch["label"] and (batch["label"]["labels"] >= 0).any()
  with pytest.raises(coco_source.DatasetNotPreparedError, match=r"prepared only as version 1\.0\.0, which "
                     r"stores no instance masks.*\n  python -m projects\.detection\.data\.prepare_coco"):
    input_pipeline.get_dataset(_config(data_dir, with_masks=True), process_index=0, process_count=1)
  prepare_coco.prepare({"builder": "coco_tree", "manual_dir": manual_dir, "data_dir": data_dir})  # as told
  batch = next(input_pipeline.get_dataset(_config(data_dir, max_boxes=4, with_masks=True), process_index=0,
                                          process_count=1).train_iter_fn(0))
  assert batch["label"]["masks"].shape[:2] == (4, 4) and batch["label"]["masks"].any()
