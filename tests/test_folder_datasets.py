"""The segmentation_folder and cityscapes_train_ids tfds builders on small generated trees."""

import pathlib

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from projects.segmentation.data import folder_builders


def _write_pair(image_path: pathlib.Path, mask_path: pathlib.Path, mask: np.ndarray, mode: str = "RGB"):
  image_path.parent.mkdir(parents=True, exist_ok=True)
  mask_path.parent.mkdir(parents=True, exist_ok=True)
  h, w = mask.shape
  rng = np.random.default_rng(int(mask.sum()))
  if mode == "I;16":
    Image.fromarray(rng.integers(0, 65535, (h, w)).astype(np.uint16)).save(image_path)
  else:
    Image.fromarray(rng.integers(0, 255, (h, w, 4 if mode == "RGBA" else 3), np.uint8), mode).save(image_path)
  palette = Image.fromarray(mask.astype(np.uint8), mode="P")
  palette.putpalette([v for i in range(256) for v in ((i * 37) % 256, (i * 91) % 256, (i * 13) % 256)])
  palette.save(mask_path)  # palette PNGs must be read as indices, not colours


def _read(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_folder_builder_reads_classes_masks_and_odd_images(tmp_path):
  root = tmp_path / "manual"
  root.mkdir()
  (root / "classes.txt").write_text("background\ncat\ndog\nignore: 200\n")
  masks = {}
  for split, n in (("train", 3), ("val", 2)):
    for i in range(n):
      mask = np.full((40, 56), 200, np.uint8)
      mask[: 10 + 5 * i, :] = i % 3
      mask[20:, 30:] = (i + 1) % 3
      masks[(split, f"img{i}")] = mask
      suffix, mode = [(".jpg", "RGB"), (".png", "RGBA"), (".png", "I;16")][i]
      _write_pair(root / "images" / split / f"img{i}{suffix}", root / "masks" / split / f"img{i}.png", mask, mode)
  builder = folder_builders.prepare("segmentation_folder", str(root), str(tmp_path / "tfds"))
  reloaded = folder_builders.SegmentationFolder(data_dir=str(tmp_path / "tfds"))
  assert reloaded.info.metadata["class_names"] == ["background", "cat", "dog"]
  assert reloaded.info.metadata["ignore_label"] == 200
  examples = _read(builder, "validation")
  assert [e["image/filename"].decode() for e in examples] == ["img0.jpg", "img1.png"]
  for example in examples:
    stem = example["image/filename"].decode().split(".")[0]
    np.testing.assert_array_equal(example["segmentation"][..., 0], masks[("val", stem)])
    assert example["image"].shape == (40, 56, 3)


def test_folder_builder_names_defects(tmp_path):
  root = tmp_path / "manual"
  (root).mkdir()
  (root / "classes.txt").write_text("a\nb\n")
  mask = np.zeros((32, 32), np.uint8)
  _write_pair(root / "images" / "train" / "x.png", root / "masks" / "train" / "x.png", mask)
  _write_pair(root / "images" / "val" / "y.png", root / "masks" / "val" / "y.png", mask + 7)
  with pytest.raises(ValueError, match=r"y.png has values \[7\] that are neither a class"):
    folder_builders.prepare("segmentation_folder", str(root), str(tmp_path / "tfds"))
  (root / "masks" / "val" / "y.png").unlink()
  with pytest.raises(ValueError, match=r"image .*y.png has no mask"):
    folder_builders.prepare("segmentation_folder", str(root), str(tmp_path / "tfds2"))
  (root / "classes.txt").write_text("a\nb\nignore: 1\n")
  with pytest.raises(ValueError, match="ignore value 1 must be in"):
    folder_builders.read_class_file(root / "classes.txt")


def test_cityscapes_builder_pairs_label_train_ids(tmp_path):
  root = tmp_path / "cityscapes"
  for split, city in (("train", "aachen"), ("val", "frankfurt")):
    for i in range(2):
      stem = f"{city}_00000{i}_000019"
      mask = np.full((32, 64), 255, np.uint8)
      mask[:, : 10 * (i + 1)] = 18 - i
      _write_pair(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png",
                  root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png", mask)
      Image.fromarray(np.zeros((32, 64), np.uint8)).save(
          root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png")  # other gtFine files are ignored
  builder = folder_builders.prepare("cityscapes_train_ids", str(root), str(tmp_path / "tfds"))
  assert len(builder.info.metadata["class_names"]) == 19
  examples = _read(builder, "train")
  assert [e["image/filename"].decode() for e in examples] == [
      "aachen/aachen_000000_000019_leftImg8bit.png", "aachen/aachen_000001_000019_leftImg8bit.png"]
  assert set(np.unique(examples[1]["segmentation"])) == {17, 255}
