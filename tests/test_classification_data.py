"""Classification data: the image-folder builder's checks, both layouts, the pipeline's batches, ImageNet wiring."""

import pathlib

import ml_collections
import numpy as np
import pytest
from PIL import Image

from projects import registry
from projects.classification.data import datasets
from projects.classification.data import folder_builder
from projects.classification.data import make_synthetic
from projects.classification.data import pipeline
from projects.classification.data import transforms


def _image(path: pathlib.Path, size=(40, 32)) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((size[1], size[0], 3), 90, np.uint8)).save(path)


def _folder(root: pathlib.Path, classes=("cat", "dog"), splits=("train", "val"), per_class=3) -> pathlib.Path:
  for split in splits:
    for name in classes:
      for i in range(per_class):
        _image(root / split / name / f"{i}.png")
  return root


def test_a_bad_image_is_named(tmp_path):
  root = _folder(tmp_path / "f")
  (root / "train" / "dog" / "broken.jpg").write_bytes(b"not a jpeg at all")
  with pytest.raises(ValueError, match=r"cannot read image .*train/dog/broken\.jpg"):
    folder_builder.prepare(str(root), str(tmp_path / "tfds"))


def test_an_empty_class_folder_is_named(tmp_path):
  root = _folder(tmp_path / "f")
  (root / "val" / "dog").mkdir(exist_ok=True)
  for p in (root / "val" / "dog").iterdir():
    p.unlink()
  with pytest.raises(ValueError, match=r"class folder .*val/dog holds no image"):
    folder_builder.find_splits(root, 0.0)


def test_class_names_differing_between_splits_are_named(tmp_path):
  root = _folder(tmp_path / "f")
  _image(root / "val" / "bird" / "0.png")
  with pytest.raises(ValueError, match=r"only in train \[\], only in validation \['bird'\]"):
    folder_builder.find_splits(root, 0.0)


def test_stray_images_and_missing_split_are_refused(tmp_path):
  root = _folder(tmp_path / "f", splits=("train",))
  with pytest.raises(ValueError, match="give val_fraction"):
    folder_builder.find_splits(root, 0.0)
  _image(root / "train" / "loose.png")
  with pytest.raises(ValueError, match="outside class folders"):
    folder_builder.find_splits(root, 0.2)


def test_val_fraction_splits_every_class_stably(tmp_path):
  root = tmp_path / "flat"
  for name in ("a", "b", "c"):
    for i in range(10):
      _image(root / name / f"{i}.png")
  names, splits, _ = folder_builder.find_splits(root, 0.2)
  assert names == ["a", "b", "c"]
  assert len(splits["validation"]) == 6 and len(splits["train"]) == 24
  assert {label for _, label in splits["validation"]} == {0, 1, 2}
  _image(root / "a" / "10.png")  # a new file moves no other file between splits
  _, again, _ = folder_builder.find_splits(root, 0.2)
  assert set(p for p, _ in splits["validation"]) <= set(p for p, _ in again["validation"]) | {root / "a" / "10.png"}
  assert not set(p for p, _ in splits["train"]) & set(p for p, _ in again["validation"])


def _config(tmp_path, manual_dir, **dataset):
  return ml_collections.ConfigDict(dict(
      dataset_name="image_folder", batch_size=4, eval_batch_size=3, rng_seed=0,
      dataset=dict(data_dir=str(tmp_path / "tfds"), manual_dir=str(manual_dir), crop_size=32, **dataset)))


def test_pipeline_batches_resume_and_pad(tmp_path):
  manual = make_synthetic.make_image_folder(str(tmp_path / "synthetic"), num_train=3, num_val=2,
                                            size_range=(30, 50))
  config = _config(tmp_path, manual, rand_augment=None, color_jitter=0.0, erase_prob=0.5)  # no Keras layer
  data = registry.get_dataset_fn("image_folder")(config)
  meta = data.meta_data
  assert meta["class_names"] == list(make_synthetic.CLASSES) and meta["num_classes"] == 4
  assert (meta["num_train_examples"], meta["num_eval_examples"], meta["steps_per_epoch"]) == (12, 8, 3)
  assert registry.dataset_meta(config)["class_names"] == list(make_synthetic.CLASSES)  # without the data
  stream = data.train_iter_fn(0)
  first = [next(stream) for _ in range(5)]
  assert first[0]["inputs"].shape == (4, 32, 32, 3) and first[0]["label"].shape == (4, 4)  # mixed: soft labels
  np.testing.assert_allclose(first[0]["label"].sum(-1), 1.0, rtol=1e-6)
  resumed = next(data.train_iter_fn(4))  # step 4 (second epoch) directly: the same batch, same augmentation
  np.testing.assert_array_equal(resumed["inputs"], first[4]["inputs"])
  np.testing.assert_array_equal(resumed["label"], first[4]["label"])
  batches = list(data.eval_iter_fn())
  assert len(batches) == 3 and batches[-1]["batch_mask"].tolist() == [1.0, 1.0, 0.0]
  assert sum(b["batch_mask"].sum() for b in batches) == 8 and batches[0]["label"].dtype == np.int32
  # A prepared folder is not silently reused for another source folder or split.
  with pytest.raises(ValueError, match="use another config.dataset.data_dir"):
    pipeline.get_dataset(_config(tmp_path, tmp_path / "elsewhere"))


def test_mix_batch_is_timms_batch_mode():
  tf = pytest.importorskip("tensorflow")
  inputs = tf.reshape(tf.range(4 * 8 * 8 * 3, dtype=tf.float32), (4, 8, 8, 3))
  labels = tf.constant([0, 1, 2, 3])
  for seed in range(6):
    mixed, targets = transforms.mix_batch(inputs, labels, tf.constant([seed, 1], tf.int64), num_classes=5)
    lam = float(targets[0, 0])
    np.testing.assert_allclose(targets.numpy()[0, 3], 1.0 - lam, atol=1e-6)  # mixed with the reversed batch
    mixup = inputs[0] * lam + inputs[3] * (1.0 - lam)
    cut = np.isin(mixed.numpy()[0], inputs.numpy()[3]).all(-1).mean()  # CutMix: area pasted = 1 - lam
    assert np.allclose(mixed[0], mixup, atol=1e-3) or abs(cut - (1.0 - lam)) < 1e-6


def test_imagenet_wiring_without_the_tar_files(tmp_path):
  config = ml_collections.ConfigDict(dict(dataset_name="imagenet2012", batch_size=4,
                                          dataset=dict(data_dir=str(tmp_path / "tfds"))))
  meta = registry.dataset_meta(config)
  assert meta["num_classes"] == 1000 and meta["class_names"][0] == "n01440764"
  with pytest.raises(FileNotFoundError, match=r"ILSVRC2012_img_val\.tar .*--dataset imagenet2012"):
    datasets.load_builder(config)


def test_official_train_augmentation_runs_in_tf_data():
  """RandAugment (Keras 3's layer) + flip + random resized crop + random erasing on one image, in tf.data."""
  tf = pytest.importorskip("tensorflow")
  augment = transforms.TrainAugment(crop_size=32, rand_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4,
                                    erase_prob=1.0)
  assert augment.rand_augment == {"num_ops": 2, "factor": 0.9, "magnitude_std": 0.5, "increasing": True}
  assert augment.color_jitter == 0.0  # timm: no colour jitter together with an auto-augment policy
  layers = augment.build()
  assert [type(layer).__name__ for layer in layers] == ["RandAugment"]
  image = tf.cast(tf.random.stateless_uniform((50, 70, 3), (1, 2), 0, 255), tf.uint8)
  ds = tf.data.Dataset.range(3).map(lambda i: augment(image, tf.stack([i, tf.constant(7, tf.int64)])))
  outputs = [x.numpy() for x in ds]
  assert all(x.shape == (32, 32, 3) and np.isfinite(x).all() for x in outputs)
  assert not np.allclose(outputs[0], outputs[1])
  with pytest.raises(ValueError, match="rand_augment"):
    transforms.parse_rand_augment("augmix-m5")
