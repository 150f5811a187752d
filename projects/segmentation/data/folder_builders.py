"""tfds builders for semantic segmentation beyond ADE20K: a folder of your own, and Cityscapes.

``segmentation_folder`` reads your own data from the manual dir (mmseg's ``CustomDataset`` idea)::

  <manual_dir>/classes.txt                      one class name per line: line i is class i
  <manual_dir>/images/{train,val}/NAME.jpg      (or .jpeg / .png; any RGB, grayscale, RGBA or 16-bit image)
  <manual_dir>/masks/{train,val}/NAME.png       8-bit class indices 0..K-1, IGNORE (default 255) = unlabelled

``classes.txt`` may end with a line ``ignore: N`` to choose another ignore value. ``cityscapes_train_ids``
reads Cityscapes in the layout mmseg's ``tools/convert_datasets/cityscapes.py`` leaves (19 classes,
255 = ignored)::

  <manual_dir>/leftImg8bit/{train,val}/CITY/STEM_leftImg8bit.png
  <manual_dir>/gtFine/{train,val}/CITY/STEM_gtFine_labelTrainIds.png

Both store the same features as ``ade20k_challenge``: ``image`` (the original bytes when the file is an RGB or
grayscale JPEG/PNG, else a lossless RGB PNG), ``segmentation`` (an 8-bit grayscale PNG of the raw class
indices, re-encoded so that palette PNGs decode to indices), ``image/filename`` and ``image/id``; the class
names and the ignore value are in the dataset's metadata. A defect (unpaired file, unreadable image, size
mismatch, a label that is neither a class nor the ignore value) raises ``ValueError`` naming the file.
Prepare with ``python -m projects.segmentation.data.prepare_folder --dataset NAME --manual_dir DIR``.
"""

import io
import os
import pathlib
from typing import Dict, Iterator, List, Sequence, Tuple

import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

DEFAULT_IGNORE = 255
CITYSCAPES_CLASSES = (
    "road", "sidewalk", "building", "wall", "fence", "pole", "traffic light", "traffic sign", "vegetation",
    "terrain", "sky", "person", "rider", "car", "truck", "bus", "train", "motorcycle", "bicycle")
SPLITS = {"train": "train", "validation": "val"}  # tfds split -> folder name
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")


def read_class_file(path: pathlib.Path) -> Tuple[List[str], int]:
  """``(class names, ignore value)`` of a ``classes.txt``."""
  if not path.is_file():
    raise FileNotFoundError(f"{path} not found: write one class name per line (line i = class i)")
  names, ignore = [], DEFAULT_IGNORE
  for number, line in enumerate(path.read_text().splitlines(), 1):
    line = line.strip()
    if not line:
      continue
    if line.lower().startswith("ignore:"):
      try:
        ignore = int(line.split(":", 1)[1])
      except ValueError:
        raise ValueError(f"{path}:{number}: expected 'ignore: N' with an integer N, got {line!r}") from None
      continue
    names.append(line)
  if not names:
    raise ValueError(f"{path} lists no class")
  if not 0 <= ignore <= 255 or ignore < len(names):
    raise ValueError(f"{path}: the ignore value {ignore} must be in [{len(names)}, 255] (8-bit masks, "
                     f"{len(names)} classes)")
  if len(set(names)) != len(names):
    raise ValueError(f"{path} names a class twice")
  return names, ignore


def _open(path: pathlib.Path) -> Image.Image:
  try:
    image = Image.open(path)
    image.load()
  except Exception as e:  # PIL raises many types for truncated or corrupt files
    raise ValueError(f"cannot read image {path}: {e}") from None
  return image


def image_bytes(path: pathlib.Path) -> Tuple[bytes, Tuple[int, int]]:
  """The bytes to store for an image file and its (width, height): RGB/L JPEG or PNG as they are, anything
  else (RGBA, palette, 16-bit, ...) converted to an RGB PNG (16-bit scaled to 8)."""
  image = _open(path)
  if image.format in ("JPEG", "MPO", "PNG") and image.mode in ("RGB", "L"):
    return path.read_bytes(), image.size
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    array = np.asarray(image).astype(np.float64)
    array = np.round(array * (255.0 / 65535.0)).clip(0, 255).astype(np.uint8)
    image = Image.fromarray(array)
  buffer = io.BytesIO()
  image.convert("RGB").save(buffer, format="PNG")
  return buffer.getvalue(), image.size


def mask_bytes(path: pathlib.Path, num_classes: int, ignore: int, size: Tuple[int, int],
               image_path: pathlib.Path) -> bytes:
  """An 8-bit grayscale PNG of the class indices in ``path`` (validated against the image and classes)."""
  mask = _open(path)
  if mask.mode not in ("L", "P"):
    raise ValueError(f"mask {path} is mode {mask.mode}; expected an 8-bit PNG of class indices "
                     "(grayscale or palette)")
  if mask.size != size:
    raise ValueError(f"mask {path} is {mask.size[0]}x{mask.size[1]} (WxH) but its image {image_path} is "
                     f"{size[0]}x{size[1]}")
  values = np.asarray(mask)
  bad = np.setdiff1d(np.unique(values), np.append(np.arange(num_classes), ignore))
  if bad.size:
    raise ValueError(f"mask {path} has values {bad[:5].tolist()} that are neither a class (0..{num_classes - 1}) "
                     f"nor the ignore value {ignore}")
  buffer = io.BytesIO()
  Image.fromarray(values.astype(np.uint8), mode="L").save(buffer, format="PNG")
  return buffer.getvalue()


def pair_files(image_dir: pathlib.Path, mask_dir: pathlib.Path, image_suffixes: Sequence[str],
               image_tail: str, mask_tail: str) -> List[Tuple[str, pathlib.Path, pathlib.Path]]:
  """``(key, image, mask)`` for every image under ``image_dir`` (recursively), sorted.

  An image ``REL/STEM<image_tail><suffix>`` pairs with ``mask_dir/REL/STEM<mask_tail>``; an unpaired file on
  either side raises ``ValueError`` naming it.
  """
  for folder in (image_dir, mask_dir):
    if not folder.is_dir():
      raise FileNotFoundError(f"folder {folder} does not exist")
  images: Dict[str, pathlib.Path] = {}
  for path in sorted(image_dir.rglob("*")):
    name = path.name
    suffix = next((s for s in image_suffixes if name.lower().endswith((image_tail + s).lower())), None)
    if suffix is None or not path.is_file():
      continue
    key = str(path.relative_to(image_dir))[:-len(image_tail + suffix)]
    if key in images:
      raise ValueError(f"images {images[key]} and {path} have the same name: keep one")
    images[key] = path
  masks = {str(p.relative_to(mask_dir))[:-len(mask_tail)]: p for p in sorted(mask_dir.rglob("*" + mask_tail))}
  if not images:
    raise ValueError(f"no image ({'/'.join(image_suffixes)}) in {image_dir}")
  for key in sorted(images.keys() - masks.keys()):
    raise ValueError(f"image {images[key]} has no mask {mask_dir / (key + mask_tail)}")
  for key in sorted(masks.keys() - images.keys()):
    raise ValueError(f"mask {masks[key]} has no image in {image_dir}")
  return [(key, images[key], masks[key]) for key in sorted(images)]


class _PairedSegmentation(tfds.core.GeneratorBasedBuilder):
  """Image / mask pairs found by walking folders; subclasses say where."""

  IMAGE_TAIL = ""
  MASK_TAIL = ".png"

  def _features(self) -> tfds.features.FeaturesDict:
    return tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "segmentation": tfds.features.Image(shape=(None, None, 1), encoding_format="png"),
        "image/filename": tfds.features.Text(),
        "image/id": np.int64,
    })

  def _classes(self, manual_dir: pathlib.Path) -> Tuple[List[str], int]:
    raise NotImplementedError

  def _folders(self, manual_dir: pathlib.Path, split_folder: str) -> Tuple[pathlib.Path, pathlib.Path]:
    raise NotImplementedError

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    names, ignore = self._classes(manual_dir)
    self.info.metadata["class_names"] = list(names)
    self.info.metadata["ignore_label"] = int(ignore)
    return {split: self._generate_examples(*self._folders(manual_dir, folder), len(names), ignore)
            for split, folder in SPLITS.items()}

  def _generate_examples(self, image_dir: pathlib.Path, mask_dir: pathlib.Path, num_classes: int,
                         ignore: int) -> Iterator[Tuple[str, dict]]:
    pairs = pair_files(image_dir, mask_dir, IMAGE_SUFFIXES, self.IMAGE_TAIL, self.MASK_TAIL)
    for index, (key, image_path, mask_path) in enumerate(pairs):
      data, size = image_bytes(image_path)
      yield key, {
          "image": data,
          "segmentation": mask_bytes(mask_path, num_classes, ignore, size, image_path),
          "image/filename": str(image_path.relative_to(image_dir)),
          "image/id": index,
      }


class SegmentationFolder(_PairedSegmentation):
  """Your own semantic-segmentation data: ``images/`` + ``masks/`` + ``classes.txt`` (module docstring)."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put classes.txt, images/{train,val}/ and masks/{train,val}/ in the manual dir (see the module docstring of
projects/segmentation/data/folder_builders.py)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="A user's semantic-segmentation folder: images with 8-bit class-index PNG masks.",
        features=self._features(), supervised_keys=("image", "segmentation"),
        metadata=tfds.core.MetadataDict())

  def _classes(self, manual_dir):
    return read_class_file(manual_dir / "classes.txt")

  def _folders(self, manual_dir, split_folder):
    return manual_dir / "images" / split_folder, manual_dir / "masks" / split_folder


class CityscapesTrainIds(_PairedSegmentation):
  """Cityscapes fine annotations as mmseg trains on them: ``labelTrainIds``, 19 classes, 255 ignored."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  IMAGE_TAIL = "_leftImg8bit"
  MASK_TAIL = "_gtFine_labelTrainIds.png"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Download leftImg8bit_trainvaltest.zip and gtFine_trainvaltest.zip from https://www.cityscapes-dataset.com/,
extract both into the manual dir and create the *_labelTrainIds.png files with mmseg's
tools/convert_datasets/cityscapes.py (or cityscapesscripts' createTrainIdLabelImgs)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="Cityscapes fine annotations (19 train classes, 255 = ignored), mmseg's layout.",
        features=self._features(), supervised_keys=("image", "segmentation"),
        homepage="https://www.cityscapes-dataset.com/",
        metadata=tfds.core.MetadataDict(class_names=list(CITYSCAPES_CLASSES), ignore_label=DEFAULT_IGNORE))

  def _classes(self, manual_dir):
    return list(CITYSCAPES_CLASSES), DEFAULT_IGNORE

  def _folders(self, manual_dir, split_folder):
    return manual_dir / "leftImg8bit" / split_folder, manual_dir / "gtFine" / split_folder


BUILDERS = {"segmentation_folder": SegmentationFolder, "cityscapes_train_ids": CityscapesTrainIds}


def prepare(name: str, manual_dir: str, data_dir: str = None) -> tfds.core.DatasetBuilder:
  """Builds dataset ``name`` (a key of ``BUILDERS``) from ``manual_dir`` into ``data_dir``."""
  if name not in BUILDERS:
    raise ValueError(f"unknown dataset {name!r}; expected one of {sorted(BUILDERS)}")
  builder = BUILDERS[name](data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
      try_download_gcs=False))
  return builder
