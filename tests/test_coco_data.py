"""COCO detection data: the coco_tree builder on a generated tree, and the mmdet-style input pipeline."""

import json
import os

import ml_collections
import numpy as np
import pytest

from projects.detection.data import coco_source
from projects.detection.data import input_pipeline
from projects.detection.data import make_synthetic_coco
from projects.detection.data import prepare_coco
from projects.detection.data import schedule

IMAGE_SCALE = (160, 96)  # small stand-in for (1333, 800): buckets (96, 96), (96, 160), (160, 96)
MAX_BOXES = 6


@pytest.fixture(scope="module")
def coco_tree(tmp_path_factory):
  """A generated COCO tree prepared with the real builder: (manual_dir, data_dir, train json, val json)."""
  root = tmp_path_factory.mktemp("coco")
  manual_dir, data_dir = str(root / "tree"), str(root / "tfds")
  make_synthetic_coco.make_synthetic_coco(manual_dir, num_train=10, num_val=5, seed=0)
  prepare_coco.prepare({"builder": "coco_tree", "manual_dir": manual_dir, "data_dir": data_dir})
  load = lambda name: json.load(open(os.path.join(manual_dir, "annotations", name)))
  return manual_dir, data_dir, load("instances_train2017.json"), load("instances_val2017.json")


def _config(data_dir, batch_size=4, seed=0, **dataset):
  return ml_collections.ConfigDict({
      "rng_seed": seed, "batch_size": batch_size, "eval_batch_size": 4,
      "dataset": {"data_dir": data_dir, "image_scale": IMAGE_SCALE, "max_boxes": MAX_BOXES,
                  "bucket_aspect_ratios": (1.0, 1.34), "num_parallel_calls": 1, **dataset}})


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _gt_boxes(coco_json, image_id, scale_hw, crowd=False):
  """Expected xyxy boxes of an image in the resized frame (clipped), crowd or non-crowd ones."""
  info = next(i for i in coco_json["images"] if i["id"] == image_id)
  boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
           for a in coco_json["annotations"] if a["image_id"] == image_id and bool(a["iscrowd"]) == crowd]
  boxes = np.clip(np.asarray(boxes, np.float32).reshape(-1, 4), 0, [info["width"], info["height"]] * 2)
  return boxes * np.tile(np.asarray(scale_hw)[::-1], 2)


def test_builder_keeps_everything_and_maps_categories(coco_tree):
  _, data_dir, train_json, _ = coco_tree
  builder = coco_source.make_builder({"builder": "coco_tree", "data_dir": data_dir})
  assert builder.info.metadata["category_ids"] == [3, 7, 12]
  assert builder.info.features["objects"]["label"].names == ["red_square", "green_disc", "blue_triangle"]
  source = builder.as_data_source("train")
  assert len(source) == len(train_json["images"])  # the image without annotations is kept
  examples = {int(ex["image/id"]): ex for ex in source}
  for info in train_json["images"]:
    objects = {k: np.asarray(v) for k, v in examples[info["id"]]["objects"].items()}
    anns = [a for a in train_json["annotations"] if a["image_id"] == info["id"]]
    assert sorted(objects["id"].tolist()) == sorted(a["id"] for a in anns)
    for k, ann_id in enumerate(objects["id"]):
      ann = next(a for a in anns if a["id"] == ann_id)
      assert objects["category_id"][k] == ann["category_id"]
      assert [3, 7, 12][objects["label"][k]] == ann["category_id"]
      assert bool(objects["is_crowd"][k]) == bool(ann["iscrowd"])
      x, y, w, h = ann["bbox"]
      expected = np.clip([y / info["height"], x / info["width"], (y + h) / info["height"],
                          (x + w) / info["width"]], 0, 1)
      np.testing.assert_allclose(objects["bbox"][k], expected, atol=1e-6)
  assert sum(len(ex["objects"]["id"]) == 0 for ex in examples.values()) == 1
  assert sum(np.sum(ex["objects"]["is_crowd"]) for ex in examples.values()) == 1


def _corrupt_tree(root, mutate):
  manual_dir = str(root / "tree")
  paths = make_synthetic_coco.make_synthetic_coco(manual_dir, num_train=2, num_val=2, seed=1)
  mutate(manual_dir, paths["val2017"])
  return manual_dir


def _edit_json(edit):
  def mutate(manual_dir, path):
    data = json.load(open(path))
    edit(data)
    json.dump(data, open(path, "w"))
  return mutate


def _first_box(data):
  return next(a for a in data["annotations"] if not a["iscrowd"])


def _truncate(manual_dir, path):
  with open(path, "r+") as f:
    f.truncate(50)


def _remove_image(manual_dir, path):
  data = json.load(open(path))
  os.remove(os.path.join(manual_dir, "val2017", data["images"][1]["file_name"]))


@pytest.mark.parametrize("mutate, error, pattern", [
    (_edit_json(lambda d: _first_box(d).update(bbox=[5.0, 5.0, -3.0, 4.0])), ValueError,
     r"instances_val2017\.json: annotation id \d+ .* bbox of negative size"),
    (_edit_json(lambda d: _first_box(d).update(category_id=99)), ValueError,
     r"instances_val2017\.json: annotation id \d+ .*category_id 99 which is not in 'categories'"),
    (_truncate, ValueError, r"instances_val2017\.json: not a valid JSON file"),
    (_remove_image, FileNotFoundError, r"image \d+ \(\d+\.jpg\) is missing: .*val2017"),
], ids=["negative_size", "unknown_category", "bad_json", "missing_image"])
def test_corrupt_tree_raises_naming_the_problem(tmp_path, mutate, error, pattern):
  manual_dir = _corrupt_tree(tmp_path, mutate)
  with pytest.raises(error, match=pattern):
    prepare_coco.prepare({"builder": "coco_tree", "manual_dir": manual_dir, "data_dir": str(tmp_path / "d")})


@pytest.mark.parametrize("builder, expected", [
    ("coco_tree", "python -m projects.detection.data.prepare_coco --builder coco_tree "
                  "--manual_dir /data/coco --data_dir {data_dir} --config 2017"),
    ("coco/2017", "python -m projects.detection.data.prepare_coco --builder coco/2017 "
                  "--manual_dir /data/coco --data_dir {data_dir}"),
])
def test_missing_dataset_error_has_the_preparation_command(tmp_path, builder, expected):
  data_dir = str(tmp_path / "empty")
  config = _config(data_dir, builder=builder, manual_dir="/data/coco")
  with pytest.raises(coco_source.DatasetNotPreparedError) as info:
    input_pipeline.get_dataset(config, process_index=0, process_count=1)
  assert expected.format(data_dir=data_dir) in str(info.value)
  assert "is not prepared" in str(info.value)
  if builder == "coco/2017":
    assert f"tfds build coco/2017 --manual_dir /data/coco --data_dir {data_dir} --file_format array_record" \
        in str(info.value)


def test_rescale_and_buckets_follow_mmdet():
  new_h, new_w = schedule.rescale_sizes(np.array([480, 640, 500, 100]), np.array([640, 480, 500, 400]),
                                        (1333, 800))
  np.testing.assert_array_equal(new_h, [800, 1067, 800, 333])  # 4:3, 3:4, square, 4:1 (long side capped)
  np.testing.assert_array_equal(new_w, [1067, 800, 800, 1333])
  buckets = schedule.make_buckets((1333, 800), 32, (1.0, 1.34))
  assert buckets == ((800, 800), (800, 1088), (1088, 800), (800, 1344), (1344, 800))
  np.testing.assert_array_equal(schedule.assign_buckets(new_h, new_w, buckets), [1, 2, 0, 3])


def test_train_batches_shapes_targets_and_flip(coco_tree):
  _, data_dir, train_json, _ = coco_tree
  plain = input_pipeline.get_dataset(_config(data_dir, flip_prob=0.0), process_index=0, process_count=1)
  flipped = input_pipeline.get_dataset(_config(data_dir, flip_prob=1.0), process_index=0, process_count=1)
  meta = plain.meta_data
  assert meta["category_ids"] == [3, 7, 12] and meta["num_classes"] == 3
  assert meta["num_train_examples"] == len(train_json["images"]) - 1  # the empty image is skipped
  empty_id = train_json["images"][0]["id"]
  crowd_id = next(a["image_id"] for a in train_json["annotations"] if a["iscrowd"])
  steps = meta["steps_per_epoch"]
  seen = set()
  for batch, mirror in zip(_take(plain.train_iter_fn(0), steps), _take(flipped.train_iter_fn(0), steps)):
    label = batch["label"]
    assert batch["inputs"].shape[0] == 4 and batch["inputs"].shape[1:3] in meta["buckets"]
    assert batch["inputs"].dtype == np.float32 and label["boxes"].shape == (4, MAX_BOXES, 4)
    assert label["labels"].dtype == np.int32 and label["image/id"].dtype == np.int64
    np.testing.assert_array_equal(batch["batch_mask"], 1.0)
    np.testing.assert_array_equal(label["image/id"], mirror["label"]["image/id"])  # flips don't change order
    for i, image_id in enumerate(label["image/id"]):
      seen.add(int(image_id))
      h, w = label["image_size"][i]
      assert h <= batch["inputs"].shape[1] and w <= batch["inputs"].shape[2] and max(h, w) <= max(IMAGE_SCALE)
      assert not batch["inputs"][i, h:].any() and not batch["inputs"][i, :, w:].any()  # zero padding
      expected = _gt_boxes(train_json, image_id, label["scale"][i])
      n = len(expected)
      assert (label["labels"][i, :n] >= 0).all() and (label["labels"][i, n:] == -1).all()
      np.testing.assert_allclose(label["boxes"][i, :n], expected, atol=1e-3)
      np.testing.assert_array_equal(label["boxes"][i, n:], 0.0)
      # the flipped example is the mirror image, and its boxes the mirrored boxes
      np.testing.assert_array_equal(mirror["inputs"][i, :h, :w], batch["inputs"][i, :h, :w][:, ::-1])
      mirrored = np.stack([w - expected[:, 2], expected[:, 1], w - expected[:, 0], expected[:, 3]], -1)
      np.testing.assert_allclose(mirror["label"]["boxes"][i, :n], mirrored, atol=1e-3)
  assert empty_id not in seen and crowd_id in seen
  assert seen == {i["id"] for i in train_json["images"]} - {empty_id}  # one epoch covers every image


def test_train_iterator_is_deterministic_resumable_and_sharded(coco_tree):
  data_dir = coco_tree[1]
  dataset = input_pipeline.get_dataset(_config(data_dir), process_index=0, process_count=1)
  run = _take(dataset.train_iter_fn(0), 5)
  resumed = _take(dataset.train_iter_fn(3), 2)
  for a, b in zip(run[3:], resumed):
    np.testing.assert_array_equal(a["inputs"], b["inputs"])
    np.testing.assert_array_equal(a["label"]["boxes"], b["label"]["boxes"])
  other_seed = input_pipeline.get_dataset(_config(data_dir, seed=1), process_index=0, process_count=1)
  ids = lambda batches: np.concatenate([b["label"]["image/id"] for b in batches])
  assert not np.array_equal(ids(run), ids(_take(other_seed.train_iter_fn(0), 5)))
  shares = [_take(input_pipeline.get_dataset(_config(data_dir), process_index=p, process_count=2)
                  .train_iter_fn(3), 2) for p in range(2)]
  for step in range(2):
    for key in ("inputs", "batch_mask"):
      np.testing.assert_array_equal(np.concatenate([s[step][key] for s in shares]), resumed[step][key])
    assert shares[0][step]["inputs"].shape[0] == 2


def test_eval_pass_covers_every_image_once_with_filler(coco_tree):
  _, data_dir, _, val_json = coco_tree
  dataset = input_pipeline.get_dataset(_config(data_dir), process_index=0, process_count=1)
  batches = list(dataset.eval_iter_fn())
  assert len(batches) == dataset.meta_data["num_eval_batches"]
  real = []
  for batch in batches:
    assert batch["inputs"].shape[1:3] in dataset.meta_data["buckets"]
    mask = batch["batch_mask"]
    filler = mask == 0
    np.testing.assert_array_equal(batch["label"]["image/id"][filler], -1)
    assert (batch["label"]["labels"][filler] == -1).all()
    real.extend(batch["label"]["image/id"][~filler].tolist())
    for i in np.flatnonzero(~filler):  # no flip at evaluation
      expected = _gt_boxes(val_json, batch["label"]["image/id"][i], batch["label"]["scale"][i])
      np.testing.assert_allclose(batch["label"]["boxes"][i, :len(expected)], expected, atol=1e-3)
  assert sorted(real) == sorted(i["id"] for i in val_json["images"])  # the empty image included
  assert sum((b["batch_mask"] == 0).sum() for b in batches) == 4 * len(batches) - len(real) > 0
  assert dataset.meta_data["annotation_file"].endswith("instances_val2017.json")


def test_file_names_that_leave_the_image_folder_are_refused(tmp_path):
  """A COCO ``file_name`` of ``../../../x/y.jpg``, an absolute path or a symlink out of the image folder used to
  pull a foreign image into the split without a word; it is refused naming the annotation file and the entry."""
  from projects.detection.data import coco_builder  # pylint: disable=import-outside-toplevel
  images = tmp_path / "coco" / "train2017"
  images.mkdir(parents=True)
  (tmp_path / "secret.jpg").write_bytes(b"x")
  (images / "ok.jpg").write_bytes(b"x")
  (images / "link.jpg").symlink_to(tmp_path / "secret.jpg")
  ann = str(tmp_path / "coco" / "annotations" / "instances_train2017.json")
  assert coco_builder.image_path(str(images), {"id": 1, "file_name": "ok.jpg"}, ann) == str(images / "ok.jpg")
  for name in ("../../secret.jpg", str(tmp_path / "secret.jpg"), "link.jpg"):
    with pytest.raises(ValueError, match=r"instances_train2017\.json: image 7 has file_name .* leads outside"):
      coco_builder.image_path(str(images), {"id": 7, "file_name": name}, ann)
