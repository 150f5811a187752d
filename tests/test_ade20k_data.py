"""ADE20K data: synthetic generator, tfds builder (zip and folder), train/eval pipelines and get_dataset."""

import os
import shutil

import ml_collections
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from projects.segmentation.data import ade20k_builder
from projects.segmentation.data import ade20k_classes
from projects.segmentation.data import make_synthetic_ade20k as synthetic
from projects.segmentation.data import pipeline
from projects.segmentation.data import transforms

NUM_TRAIN, NUM_VAL = 6, 5
SHORT_SIDE = (40, 80)
# Training labels the synthetic classes can map to (raw k -> k - 1), plus ignore.
ALLOWED_LABELS = {c - 1 for c in synthetic.SYNTHETIC_CLASSES} | {-1}


def _make(out_dir, layout="folder", seed=0, num_train=NUM_TRAIN, num_val=NUM_VAL):
  return synthetic.make_synthetic_ade20k(str(out_dir), num_train=num_train, num_val=num_val, seed=seed,
                                         layout=layout, short_side=SHORT_SIDE)


@pytest.fixture(scope="module")
def folder_manual_dir(tmp_path_factory):
  return _make(tmp_path_factory.mktemp("manual_folder"), "folder")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, folder_manual_dir):
  out = str(tmp_path_factory.mktemp("tfds_folder"))
  ade20k_builder.prepare(folder_manual_dir, out)
  return out


def _config(data_dir, **dataset):
  settings = dict(data_dir=data_dir, scale=(128, 32), crop_size=(32, 32), eval_scale=(128, 32),
                  shuffle_buffer_size=4)
  settings.update(dataset)
  return ml_collections.ConfigDict(dict(rng_seed=0, batch_size=4, eval_batch_size=2, dataset=settings))


def _take(iterator, n):
  return [next(iterator) for _ in range(n)]


def _assert_batches_equal(a, b):
  assert a.keys() == b.keys()
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_class_names_follow_mmseg():
  assert len(ade20k_classes.CLASS_NAMES) == 150 == len(set(ade20k_classes.CLASS_NAMES))
  assert ade20k_classes.CLASS_NAMES[:5] == ("wall", "building", "sky", "floor", "tree")
  assert ade20k_classes.CLASS_NAMES[-3:] == ("glass", "clock", "flag")


def test_synthetic_dataset_is_deterministic(tmp_path):
  def read(root):
    return {os.path.relpath(os.path.join(d, f), root): open(os.path.join(d, f), "rb").read()
            for d, _, files in os.walk(root) for f in files}
  a = read(_make(tmp_path / "a", num_train=2, num_val=1))
  b = read(_make(tmp_path / "b", num_train=2, num_val=1))
  c = read(_make(tmp_path / "c", num_train=2, num_val=1, seed=1))
  assert "ADEChallengeData2016/images/training/ADE_train_00000002.jpg" in a
  assert "ADEChallengeData2016/annotations/validation/ADE_val_00000001.png" in a
  assert a == b
  assert a["ADEChallengeData2016/images/training/ADE_train_00000001.jpg"] != \
      c["ADEChallengeData2016/images/training/ADE_train_00000001.jpg"]


def test_builder_reads_folder_and_zip_identically(tmp_path, data_dir):
  zip_manual = _make(tmp_path / "manual_zip", "zip")
  assert os.listdir(zip_manual) == [ade20k_builder.ZIP_NAME]
  zip_builder = ade20k_builder.prepare(zip_manual, str(tmp_path / "tfds_zip"))
  folder_builder = pipeline.load_builder(data_dir)
  for split, count in (("train", NUM_TRAIN), ("validation", NUM_VAL)):
    assert folder_builder.info.splits[split].num_examples == count
    folder = sorted(tfds.as_numpy(folder_builder.as_dataset(split=split)), key=lambda e: e["image/id"])
    zipped = sorted(tfds.as_numpy(zip_builder.as_dataset(split=split)), key=lambda e: e["image/id"])
    assert [e["image/id"] for e in folder] == list(range(1, count + 1))
    raw_values = set()
    for a, b in zip(folder, zipped):
      _assert_batches_equal(a, b)
      image, seg = a["image"], a["segmentation"]
      assert image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3
      assert seg.dtype == np.uint8 and seg.shape == image.shape[:2] + (1,)
      assert min(image.shape[:2]) >= SHORT_SIDE[0]
      prefix = "ADE_train_" if split == "train" else "ADE_val_"
      assert a["image/filename"].decode() == f"{prefix}{a['image/id']:08d}.jpg"
      raw_values |= set(np.unique(seg).tolist())
    assert 0 in raw_values and raw_values <= {0, *synthetic.SYNTHETIC_CLASSES}


def _two_example_tree(src, dst):
  """A copy of the first train and val example of ``src`` in the official layout under ``dst``."""
  for kind, folder, stem, ext in (("images", "training", "ADE_train_00000001", "jpg"),
                                  ("annotations", "training", "ADE_train_00000001", "png"),
                                  ("images", "validation", "ADE_val_00000001", "jpg"),
                                  ("annotations", "validation", "ADE_val_00000001", "png")):
    rel = os.path.join(ade20k_builder.ROOT, kind, folder, f"{stem}.{ext}")
    os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
    shutil.copy(os.path.join(src, rel), os.path.join(dst, rel))
  return os.path.join(dst, ade20k_builder.ROOT, "annotations", "training", "ADE_train_00000001.png")


@pytest.mark.parametrize("corruption, message", [
    ("missing", "ADE_train_00000001.jpg has no annotation"),
    ("size", "ADE_train_00000001.png is"),
    ("label", "ADE_train_00000001.png has label 151"),
])
def test_builder_rejects_corrupt_annotation(tmp_path, folder_manual_dir, corruption, message):
  annotation = _two_example_tree(folder_manual_dir, str(tmp_path / "manual"))
  seg = np.asarray(Image.open(annotation))
  if corruption == "missing":
    os.remove(annotation)
  elif corruption == "size":
    Image.fromarray(seg[:-1]).save(annotation)
  else:
    seg = seg.copy()
    seg[0, 0] = 151
    Image.fromarray(seg).save(annotation)
  with pytest.raises(ValueError, match=message):
    ade20k_builder.prepare(str(tmp_path / "manual"), str(tmp_path / "tfds"))


def test_missing_dataset_error_prints_prepare_command(tmp_path):
  empty = str(tmp_path / "nothing_here")
  with pytest.raises(FileNotFoundError) as error:
    pipeline.get_dataset(_config(empty))
  assert "python -m projects.segmentation.data.prepare_ade20k --manual_dir" in str(error.value)
  assert f"--data_dir {empty}" in str(error.value)


def test_invalid_configs_are_rejected(data_dir):
  with pytest.raises(ValueError, match="unknown config.dataset keys"):
    pipeline.get_dataset(_config(data_dir, crop=(32, 32)))
  with pytest.raises(ValueError, match="does not split over 3 processes"):
    pipeline.get_dataset(_config(data_dir), process_index=0, process_count=3)
  with pytest.raises(ValueError, match="no bucket holding"):
    pipeline.get_dataset(_config(data_dir, eval_buckets=[(32, 128)]))


def test_resize_sizes_match_mmcv():
  def size(fn, *args):
    return tuple(int(x) for x in fn(*args))
  # mmcv.rescale_size((w, h), (2048, 512)): factor min(2048 / long, 512 / short), int(x * f + 0.5).
  assert size(transforms.rescale_size, 375, 500, (2048, 512)) == (512, 683)
  assert size(transforms.rescale_size, 300, 1500, (2048, 512)) == (410, 2048)
  assert size(transforms.align_resize_size, 375, 500, (2048, 512), 32) == (512, 704)
  assert size(transforms.align_resize_size, 1500, 300, (2048, 512), 32) == (2048, 416)
  assert pipeline.default_eval_buckets((2048, 512), 32) == (
      (512, 512), (512, 704), (512, 768), (512, 1024), (512, 2048), (704, 512), (768, 512), (1024, 512),
      (2048, 512))


def test_reduce_zero_label():
  raw = tf.constant([[0, 1, 2], [150, 0, 7]])
  np.testing.assert_array_equal(transforms.reduce_zero_label(raw), [[-1, 0, 1], [149, -1, 6]])


def _crops(label, cat_max_ratio, n=64):
  crop = tf.function(lambda seed: transforms.random_crop(
      tf.zeros(label.shape + (3,)), tf.constant(label), seed, (16, 16), cat_max_ratio)[1])
  return [crop(tf.constant([s, 7])).numpy() for s in range(n)]


def test_random_crop_cat_max_ratio():
  label = np.ones((64, 64), np.int32)
  label[:, 56:] = 2  # an 8-column strip: only crops with offset_w >= 45 keep class 1 under 75 %
  def balanced(crop):
    counts = np.bincount(crop.ravel())[1:]
    return (counts > 0).sum() > 1 and counts.max() < 0.75 * counts.sum()
  with_ratio = np.mean([balanced(c) for c in _crops(label, 0.75)])
  without = np.mean([balanced(c) for c in _crops(label, 1.0)])
  assert all(c.shape == (16, 16) for c in _crops(label, 0.75, n=4))
  assert with_ratio > 0.35 and without < 0.25, (with_ratio, without)
  # The ignore value (0) is not a class: a crop of class 1 and ignore is never balanced, so all tries fail
  # and the crop stays uniformly random instead of being drawn to the ignore boundary.
  label = np.ones((64, 64), np.int32)
  label[:, :32] = transforms.RAW_IGNORE
  mixed = np.mean([len(np.unique(c)) > 1 for c in _crops(label, 0.75)])
  assert mixed < 0.6, mixed


def test_photometric_distortion_stays_on_uint8_grid():
  image = tf.constant(np.random.default_rng(0).integers(0, 256, (8, 8, 3)), tf.float32)
  outputs = [transforms.photometric_distortion(image, tf.constant([s, 3])).numpy() for s in range(16)]
  np.testing.assert_array_equal(outputs[0], transforms.photometric_distortion(image, tf.constant([0, 3])))
  for out in outputs:
    assert out.min() >= 0 and out.max() <= 255 and np.array_equal(out, np.round(out))
  assert len({out.tobytes() for out in outputs}) > 8


def test_train_batches(data_dir):
  # Images rescaled to a 16-pixel short side inside 32x32 crops: the crop keeps all of it, the rest is
  # padding.
  dataset = pipeline.get_dataset(_config(data_dir, scale=(64, 16), ratio_range=(1.0, 1.0)))
  assert dataset.meta_data["num_train_examples"] == NUM_TRAIN
  assert dataset.meta_data["num_eval_examples"] == NUM_VAL
  assert dataset.meta_data["class_names"] == ade20k_classes.CLASS_NAMES
  assert dataset.meta_data["input_shape"] == (-1, 32, 32, 3)
  for batch in _take(dataset.train_iter_fn(0), 2):
    assert batch["inputs"].shape == (4, 32, 32, 3) and batch["inputs"].dtype == np.float32
    assert batch["label"].shape == (4, 32, 32) and batch["label"].dtype == np.int32
    np.testing.assert_array_equal(batch["batch_mask"], np.ones(4, np.float32))
    assert set(np.unique(batch["label"]).tolist()) <= ALLOWED_LABELS
    assert len(set(np.unique(batch["label"]).tolist()) - {-1}) >= 2
    for inputs, label in zip(batch["inputs"], batch["label"]):
      pad_rows, pad_cols = np.all(label[16:] == -1), np.all(label[:, 16:] == -1)
      assert pad_rows or pad_cols
      padding = (slice(16, None),) if pad_rows else (slice(None), slice(16, None))
      assert np.all(inputs[padding] == 0.0)
      assert np.any(label[:16, :16] >= 0)


def test_train_is_deterministic_and_resumable(data_dir):
  dataset = pipeline.get_dataset(_config(data_dir))
  # 6 examples, 4 per batch: steps 0..5 cross three epoch boundaries; step 4 starts mid-epoch.
  run = _take(dataset.train_iter_fn(0), 6)
  for a, b in zip(run[4:], _take(dataset.train_iter_fn(4), 2)):
    _assert_batches_equal(a, b)
  other_seed = pipeline.get_dataset(ml_collections.ConfigDict({**_config(data_dir).to_dict(), "rng_seed": 1}))
  assert not np.array_equal(next(other_seed.train_iter_fn(0))["inputs"], run[0]["inputs"])
  # Two processes: each yields its half of the global batch, from disjoint example slices.
  halves = [pipeline.get_dataset(_config(data_dir, photometric_distortion=False), process_index=p,
                                 process_count=2) for p in range(2)]
  firsts = [next(h.train_iter_fn(0)) for h in halves]
  assert all(f["inputs"].shape == (2, 32, 32, 3) for f in firsts)
  assert not np.array_equal(firsts[0]["inputs"], firsts[1]["inputs"])


def _check_eval_batches(batches, batch_size, buckets):
  for batch in batches:
    (b, h, w, _), mask = batch["inputs"].shape, batch["batch_mask"]
    assert b == batch_size and (h, w) in buckets and batch["label"].shape == (b, h, w)
    assert batch["image_size"].dtype == np.int32 and batch["label"].dtype == np.int32
    for inputs, label, (vh, vw), valid in zip(batch["inputs"], batch["label"], batch["image_size"], mask):
      if valid:
        assert 0 < vh <= h and 0 < vw <= w and vh % 32 == 0 and vw % 32 == 0
        assert set(np.unique(label[:vh, :vw]).tolist()) <= ALLOWED_LABELS
      else:
        assert vh == vw == 0
      assert np.all(label[vh:] == -1) and np.all(label[:, vw:] == -1)
      assert np.all(inputs[vh:] == 0.0) and np.all(inputs[:, vw:] == 0.0)


def test_eval_buckets(data_dir):
  dataset = pipeline.get_dataset(_config(data_dir))
  buckets = dataset.meta_data["eval_buckets"]
  assert buckets == ((32, 32), (32, 64), (32, 128), (64, 32), (128, 32))
  batches = list(dataset.eval_iter_fn())
  _check_eval_batches(batches, 2, buckets)
  assert sum(b["batch_mask"].sum() for b in batches) == NUM_VAL
  assert any(b["batch_mask"].min() == 0 for b in batches)
  # Within a bucket only the last batch may hold fillers.
  shapes = [b["inputs"].shape for b in batches]
  for i, batch in enumerate(batches):
    if batch["batch_mask"].min() == 0:
      assert shapes[i] not in shapes[i + 1:]
  # Two processes: the same sequence of bucket shapes, half the batch each, every example exactly once.
  per_process = [
      list(pipeline.get_dataset(_config(data_dir), process_index=p, process_count=2).eval_iter_fn())
      for p in range(2)]
  assert [b["inputs"].shape[1:] for b in per_process[0]] == [s[1:] for s in shapes]
  assert [b["inputs"].shape[1:] for b in per_process[1]] == [s[1:] for s in shapes]
  for process_batches in per_process:
    _check_eval_batches(process_batches, 1, buckets)
  assert sum(b["batch_mask"].sum() for p in per_process for b in p) == NUM_VAL
  for step, batch in enumerate(batches):  # process p holds rows [p, p + 1) of each global batch
    for p in range(2):
      np.testing.assert_array_equal(per_process[p][step]["inputs"][0], batch["inputs"][p])
