"""A tfds builder for your own classes: one sub-folder per class (``image_folder``).

Layouts of the manual dir (class names are the sub-folder names; class i is the i-th in sorted order)::

  <manual_dir>/train/<class>/*.jpg   and   <manual_dir>/val/<class>/*.jpg     (or validation/)
  <manual_dir>/<class>/*.jpg         with val_fraction > 0 (a per-class split, see ``split_files``)

Images may be JPEG, PNG, BMP, WebP, TIFF or GIF in any mode; JPEG/PNG in RGB or grayscale are stored as
they are, anything else as a lossless RGB PNG (``projects.segmentation.data.folder_builders.image_bytes``).
Every file is checked while preparing: an unreadable image, a class folder without images and class folders
that differ between the train and validation folders each raise a one-line ``ValueError`` naming the file
or folders. The stored features are ``image``, ``label`` (int64) and ``image/filename``; the metadata hold
``class_names``, ``val_fraction`` and ``manual_dir``.
"""

import hashlib
import os
import pathlib
from typing import Dict, Iterator, List, Optional, Tuple

import numpy as np
import tensorflow_datasets as tfds

from projects.segmentation.data.folder_builders import image_bytes

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
VAL_FOLDERS = ("val", "validation")


def class_folders(root: pathlib.Path) -> Dict[str, List[pathlib.Path]]:
  """``{class name: sorted image files}`` of the sub-folders of ``root`` (files found recursively).

  Raises ``ValueError`` for a root without sub-folders or a class folder without images; files directly in
  ``root`` are refused too (they belong to no class).
  """
  if not root.is_dir():
    raise FileNotFoundError(f"folder {root} does not exist")
  stray = sorted(p.name for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
  if stray:
    raise ValueError(f"{root} holds images outside class folders ({', '.join(stray[:3])}): put each image in "
                     "the sub-folder of its class")
  classes = {}
  for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise ValueError(f"class folder {folder} holds no image ({'/'.join(IMAGE_SUFFIXES)}): add images or "
                       "remove it")
    classes[folder.name] = files
  if not classes:
    raise ValueError(f"{root} has no class sub-folders (expected {root}/<class>/<image>)")
  return classes


def split_files(files: List[pathlib.Path], root: pathlib.Path, val_fraction: float
                ) -> Tuple[List[pathlib.Path], List[pathlib.Path]]:
  """``(train, val)`` of one class: the ``round(n * val_fraction)`` files (at least 1 when n >= 2) with the
  smallest SHA-1 of their relative path go to validation, so adding files never moves the others."""
  count = int(round(len(files) * val_fraction))
  if val_fraction > 0 and len(files) >= 2:
    count = min(max(count, 1), len(files) - 1)
  digest = {p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest() for p in files}
  val = set(sorted(files, key=digest.get)[:count])
  return [p for p in files if p not in val], [p for p in files if p in val]


def find_splits(manual_dir: pathlib.Path, val_fraction: float
                ) -> Tuple[List[str], Dict[str, List[Tuple[pathlib.Path, int]]], pathlib.Path]:
  """``(class names, {"train"|"validation": [(file, label)]}, root)`` of a manual dir in either layout."""
  if not manual_dir.is_dir():
    raise FileNotFoundError(f"image folder {manual_dir} does not exist")
  train_dir = manual_dir / "train"
  val_dir = next((manual_dir / n for n in VAL_FOLDERS if (manual_dir / n).is_dir()), None)
  if train_dir.is_dir() and val_dir is not None and val_fraction > 0:
    raise ValueError(f"{manual_dir} has {train_dir.name}/ and {val_dir.name}/ folders: val_fraction "
                     f"{val_fraction} would split nothing; set it to 0")
  if train_dir.is_dir() and val_dir is not None:
    train, val = class_folders(train_dir), class_folders(val_dir)
    if sorted(train) != sorted(val):
      only_train, only_val = sorted(set(train) - set(val)), sorted(set(val) - set(train))
      raise ValueError(f"class folders differ between {train_dir} and {val_dir}: only in train {only_train[:5]}, "
                       f"only in validation {only_val[:5]}; every class needs a folder in both")
    names = sorted(train)
    return names, {"train": [(p, names.index(c)) for c in names for p in train[c]],
                   "validation": [(p, names.index(c)) for c in names for p in val[c]]}, manual_dir
  root = train_dir if train_dir.is_dir() else manual_dir
  if not 0 < val_fraction < 1:
    raise ValueError(f"{manual_dir} has no train/ and val/ folders: give val_fraction in (0, 1) to split "
                     f"{root}/<class>/ into train and validation (got {val_fraction})")
  classes = class_folders(root)
  names = sorted(classes)
  splits = {"train": [], "validation": []}
  for label, name in enumerate(names):
    if len(classes[name]) < 2:
      raise ValueError(f"class folder {root / name} holds one image: val_fraction needs at least 2 per class")
    train, val = split_files(classes[name], root, val_fraction)
    splits["train"] += [(p, label) for p in train]
    splits["validation"] += [(p, label) for p in val]
  return names, splits, root


class ClassificationFolder(tfds.core.GeneratorBasedBuilder):
  """Your own classes, one sub-folder each (module docstring). ``val_fraction`` chooses the layout."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES = {"1.0.0": "Initial release."}
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
Put train/<class>/ and val/<class>/ folders (or <class>/ folders and a val_fraction) in the manual dir (see
projects/classification/data/folder_builder.py)."""

  def __init__(self, *, val_fraction: float = 0.0, **kwargs) -> None:
    self.val_fraction = float(val_fraction or 0.0)
    super().__init__(**kwargs)

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description="A user's image-classification folder: one sub-folder per class.",
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "label": np.int64,
            "image/filename": tfds.features.Text(),
        }),
        supervised_keys=("image", "label"), metadata=tfds.core.MetadataDict())

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    manual_dir = pathlib.Path(os.fspath(dl_manager.manual_dir))
    names, splits, root = find_splits(manual_dir, self.val_fraction)
    self.info.metadata["class_names"] = list(names)
    self.info.metadata["val_fraction"] = self.val_fraction
    self.info.metadata["manual_dir"] = str(manual_dir.resolve())
    return {split: self._generate_examples(files, root) for split, files in splits.items()}

  def _generate_examples(self, files: List[Tuple[pathlib.Path, int]], root: pathlib.Path
                         ) -> Iterator[Tuple[str, dict]]:
    for path, label in files:
      data, _ = image_bytes(path)
      relative = str(path.relative_to(root))
      yield relative, {"image": data, "label": label, "image/filename": relative}


def prepare(manual_dir: str, data_dir: Optional[str] = None, val_fraction: float = 0.0) -> "ClassificationFolder":
  """Builds ``image_folder`` from ``manual_dir`` into ``data_dir`` (refuses a data dir that holds one built
  from another folder or split)."""
  builder = ClassificationFolder(data_dir=data_dir, val_fraction=val_fraction)
  if builder.is_prepared():
    check_prepared(builder, manual_dir, val_fraction)
    return builder
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS,
      try_download_gcs=False))
  return builder


def check_prepared(builder: tfds.core.DatasetBuilder, manual_dir: Optional[str], val_fraction: float) -> None:
  """Raises when the prepared dataset was built from another folder or with another ``val_fraction``."""
  meta = builder.info.metadata or {}
  built_from, built_fraction = meta.get("manual_dir"), float(meta.get("val_fraction", 0.0))
  wanted = str(pathlib.Path(manual_dir).resolve()) if manual_dir else None
  if (wanted and built_from and wanted != built_from) or abs(built_fraction - float(val_fraction or 0.0)) > 1e-9:
    raise ValueError(f"{builder.data_dir} holds image_folder built from {built_from} with val_fraction "
                     f"{built_fraction}, not {wanted or built_from} with {val_fraction}: use another "
                     "config.dataset.data_dir (or delete that folder)")
