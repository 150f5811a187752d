"""Opening a prepared COCO dataset (``coco_tree`` or the stock ``coco/2017``) for random access.

* ``make_builder`` turns ``config.dataset`` into a tfds builder (for ``with_masks``, one that stores instance
  masks: ``coco_tree`` >= 1.1.0; a detection job also reads a 1.0.0 build; ``coco/2017`` has no masks);
* ``check_prepared`` raises ``DatasetNotPreparedError`` with the exact preparation command;
* ``split_index`` gives per-example image sizes and annotation counts (read once from the records' image
  headers and cached as ``image_index-<split>.npz`` beside the dataset), which the batch planner needs;
* ``dataset_meta_data`` gives ``num_classes``, ``class_names``, ``category_ids`` and ``annotation_file``.

Random access needs the ``array_record`` file format; both preparation commands produce it.
"""

import dataclasses
import io
import json
import os
import re
import zipfile
from typing import Any, Dict, Mapping, Optional, Sequence

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from projects.detection.data import coco_builder

TREE_BUILDER = "coco_tree"
STOCK_BUILDER = "coco/2017"
SUPPORTED_BUILDERS = (TREE_BUILDER, STOCK_BUILDER)
# The zip of the official annotations, as the stock builder finds it in its manual dir.
STOCK_ANNOTATION_ZIP = "annotations_trainval2017.zip"
STOCK_ANNOTATION_MEMBERS = {"train": "annotations/instances_train2017.json",
                            "validation": "annotations/instances_val2017.json"}


class DatasetNotPreparedError(FileNotFoundError):
  """The requested dataset has not been prepared (or not in a random-access format) in ``data_dir``."""


def tree_config(dataset_config: Mapping[str, Any]) -> coco_builder.CocoTreeConfig:
  """The ``CocoTreeConfig`` named by ``dataset_config.builder_config``.

  ``builder_config`` is either the name of a registered config (default ``"2017"``) or a mapping with ``name``
  and ``splits`` (a list of ``[split, image_dir, annotation_json]``, relative to the manual dir) for a custom
  COCO-format dataset.
  """
  spec = dataset_config.get("builder_config") or coco_builder.CocoTree.DEFAULT_CONFIG_NAME
  if isinstance(spec, str):
    for config in coco_builder.CocoTree.BUILDER_CONFIGS:
      if config.name == spec:
        return config
    raise ValueError(f"unknown coco_tree config {spec!r}; registered: "
                     f"{[c.name for c in coco_builder.CocoTree.BUILDER_CONFIGS]}, or pass a mapping with "
                     "'name' and 'splits'")
  if "name" not in spec or "splits" not in spec:
    raise ValueError(f"a custom coco_tree builder_config needs 'name' and 'splits', got {dict(spec)}")
  splits = tuple(tuple(str(part) for part in split) for split in spec["splits"])
  if not splits or any(len(split) != 3 for split in splits):
    raise ValueError(f"builder_config.splits must be [split, image_dir, annotation_json] triples, "
                     f"got {splits}")
  return coco_builder.CocoTreeConfig(name=str(spec["name"]), splits=splits)


class MasksNotAvailableError(ValueError):
  """A job that needs instance masks was pointed at a dataset that stores none."""


def make_builder(dataset_config: Mapping[str, Any], latest: bool = False) -> tfds.core.DatasetBuilder:
  """The tfds builder of ``dataset_config.builder`` (``coco_tree`` or ``coco/2017``) in ``data_dir``.

  ``coco_tree`` is the newest version (with masks); unless ``dataset_config.with_masks`` is set, an older
  build without masks (1.0.0) is used when only that one is prepared, so existing detection datasets keep
  working. ``latest``: always the newest version (the one ``prepare_coco`` builds).

  Raises:
    MasksNotAvailableError: ``with_masks`` with the stock ``coco/2017`` builder (it has no masks).
    ValueError: an unknown builder.
  """
  name = dataset_config.get("builder", TREE_BUILDER)
  data_dir = dataset_config.get("data_dir")
  with_masks = bool(dataset_config.get("with_masks"))
  if name == TREE_BUILDER:
    config = tree_config(dataset_config)
    builder = coco_builder.CocoTree(config=config, data_dir=data_dir)
    if not latest and not builder.is_prepared():
      for version in coco_builder.CocoTree.SUPPORTED_VERSIONS:
        older = coco_builder.CocoTree(config=config, data_dir=data_dir, version=str(version))
        if older.is_prepared() and (older.has_masks or not with_masks):
          return older
    return builder
  if name == STOCK_BUILDER:
    if with_masks:
      raise MasksNotAvailableError(
          f"the stock tfds {STOCK_BUILDER} builder stores boxes but no instance masks, which this job "
          f"(config.dataset.with_masks, e.g. Mask R-CNN) needs. Use the {TREE_BUILDER} builder on the "
          "extracted COCO tree (train2017/, val2017/, annotations/instances_*2017.json): "
          f"--config.dataset.builder={TREE_BUILDER} and prepare it with\n  python -m "
          f"projects.detection.data.prepare_coco --builder {TREE_BUILDER} --manual_dir <extracted_coco> "
          f"--data_dir {data_dir or '~/tensorflow_datasets'}")
    return tfds.builder(STOCK_BUILDER, data_dir=data_dir)
  raise ValueError(f"config.dataset.builder must be one of {SUPPORTED_BUILDERS}, got {name!r}")


def prepare_command(dataset_config: Mapping[str, Any]) -> str:
  """The shell command that prepares the dataset ``dataset_config`` describes."""
  name = dataset_config.get("builder", TREE_BUILDER)
  manual_dir = dataset_config.get("manual_dir") or "<manual_dir>"
  data_dir = dataset_config.get("data_dir") or "~/tensorflow_datasets"
  command = (f"python -m projects.detection.data.prepare_coco --builder {name} "
             f"--manual_dir {manual_dir} --data_dir {data_dir}")
  if name == TREE_BUILDER:
    config = tree_config(dataset_config)
    command += f" --config {config.name}"
    if config not in coco_builder.CocoTree.BUILDER_CONFIGS:
      command += "".join(f" --split {split}:{images}:{annotations}"
                         for split, images, annotations in config.splits)
  return command


def check_prepared(builder: tfds.core.DatasetBuilder, dataset_config: Mapping[str, Any]) -> None:
  """Raises ``DatasetNotPreparedError`` (with the preparation command) unless random access is possible."""
  command = prepare_command(dataset_config)
  if not builder.is_prepared() and isinstance(builder, coco_builder.CocoTree) and dataset_config.get(
      "with_masks"):
    older = [str(v) for v in coco_builder.CocoTree.SUPPORTED_VERSIONS
             if coco_builder.CocoTree(config=builder.builder_config, data_dir=builder.data_dir_root,
                                      version=str(v)).is_prepared()]
    if older:
      raise DatasetNotPreparedError(
          f"dataset {builder.name}/{builder.builder_config.name} in {builder.data_dir_root} is prepared only "
          f"as version {', '.join(older)}, which stores no instance masks; this job needs version "
          f"{builder.version} (masks). Prepare it again (the old version is kept beside it):\n  {command}")
  if not builder.is_prepared():
    if isinstance(builder, coco_builder.CocoTree):
      where = "the extracted COCO-format tree (" + ", ".join(
          f"{images}/ + {annotations}" for _, images, annotations in builder.builder_config.splits) + ")"
      alternative = ""
    else:
      where = "the five official COCO 2017 zips"
      alternative = (f"\nor, with the tfds CLI (the image index is then built on first use):\n  tfds build "
                     f"{STOCK_BUILDER} --manual_dir {dataset_config.get('manual_dir') or '<manual_dir>'} "
                     f"--data_dir {dataset_config.get('data_dir') or '~/tensorflow_datasets'} "
                     "--file_format array_record")
    raise DatasetNotPreparedError(
        f"dataset {builder.name}/{builder.builder_config.name} is not prepared in {builder.data_dir}.\n"
        f"Put {where} in the manual dir and run:\n  {command}{alternative}")
  if tfds.core.file_adapters.FileFormat.ARRAY_RECORD not in builder.info.available_file_formats():
    raise DatasetNotPreparedError(
        f"dataset {builder.name} in {builder.data_dir} is stored as {builder.info.file_format.value}, but "
        "the detection pipeline reads examples by index and needs array_record. Delete that folder (or "
        f"choose another data_dir) and run:\n  {command}")


@dataclasses.dataclass(frozen=True)
class SplitIndex:
  """Per-example facts of a split, aligned with the data source's indices."""
  image_ids: np.ndarray  # int64
  heights: np.ndarray  # int64, original image height
  widths: np.ndarray  # int64
  num_objects: np.ndarray  # int64, annotations of any kind (crowd included)


def _index_path(builder: tfds.core.DatasetBuilder, split: str) -> str:
  safe_split = re.sub(r"[^A-Za-z0-9_.-]+", "_", split)
  return os.path.join(os.fspath(builder.data_dir), f"image_index-{safe_split}.npz")


def compute_split_index(builder: tfds.core.DatasetBuilder, split: str, chunk: int = 256) -> SplitIndex:
  """Reads every record of ``split`` once (image headers only) and returns its ``SplitIndex``."""
  source = builder.as_data_source(split, deserialize_method=tfds.decode.DeserializeMethod.RAW_BYTES)
  features = builder.info.features
  decoders = {"image": tfds.decode.SkipDecoding()}
  rows = np.zeros((len(source), 4), np.int64)
  for start in range(0, len(source), chunk):
    for offset, record in enumerate(source.__getitems__(list(range(start, min(start + chunk, len(source)))))):
      example = features.deserialize_example_np(record, decoders=decoders)
      with Image.open(io.BytesIO(example["image"])) as image:
        width, height = image.size
      rows[start + offset] = (example["image/id"], height, width, len(example["objects"]["label"]))
  return SplitIndex(*rows.T.copy())


def split_index(builder: tfds.core.DatasetBuilder, split: str, num_records: int) -> SplitIndex:
  """The cached ``SplitIndex`` of ``split`` (computed and written on first use)."""
  path = _index_path(builder, split)
  if os.path.isfile(path):
    with np.load(path) as cached:
      index = SplitIndex(**{field.name: cached[field.name] for field in dataclasses.fields(SplitIndex)})
    if len(index.image_ids) == num_records:
      return index
    logging.warning("ignoring stale %s (%d entries for %d records)", path, len(index.image_ids), num_records)
  logging.info("indexing image sizes of %s/%s (one pass over the records)", builder.name, split)
  index = compute_split_index(builder, split)
  try:
    np.savez(path, **dataclasses.asdict(index))
  except OSError as e:
    logging.warning("could not cache the image index at %s (%s); it will be recomputed next time", path, e)
  return index


def _base_split(split: str) -> str:
  return split.split("[", 1)[0]


def _stock_annotation_file(dataset_config: Mapping[str, Any], builder: tfds.core.DatasetBuilder,
                           split: str) -> str:
  """Extracts the official instances file of ``split`` from the manual dir's annotation zip."""
  manual_dir = dataset_config.get("manual_dir")
  member = STOCK_ANNOTATION_MEMBERS.get(_base_split(split))
  zip_path = os.path.join(manual_dir, STOCK_ANNOTATION_ZIP) if manual_dir else None
  if member is None or zip_path is None or not os.path.isfile(zip_path):
    raise ValueError(
        f"COCO evaluation of {STOCK_BUILDER} split {split!r} needs its instances JSON: set "
        "config.dataset.annotation_file, or config.dataset.manual_dir to the folder holding "
        f"{STOCK_ANNOTATION_ZIP}")
  target = os.path.join(os.fspath(builder.data_dir), member)
  if not os.path.isfile(target):
    os.makedirs(os.path.dirname(target), exist_ok=True)
    with zipfile.ZipFile(zip_path) as archive, archive.open(member) as src:
      with open(target + ".tmp", "wb") as dst:
        dst.write(src.read())
    os.replace(target + ".tmp", target)
  return target


def _annotation_categories(annotation_file: str) -> Sequence[Mapping[str, Any]]:
  with open(annotation_file, "r") as f:
    return json.load(f)["categories"]


def dataset_meta_data(builder: tfds.core.DatasetBuilder, dataset_config: Mapping[str, Any],
                      eval_split: str) -> Dict[str, Any]:
  """``num_classes``, ``class_names``, ``category_ids`` (contiguous index -> COCO id), ``annotation_file``.

  ``annotation_file`` is ``config.dataset.annotation_file`` when set; otherwise, for ``coco_tree``, the file
  the eval split was built from, and for ``coco/2017`` the official file extracted from the manual dir's zip.
  """
  class_names = list(builder.info.features["objects"]["label"].names)
  annotation_file: Optional[str] = dataset_config.get("annotation_file")
  if isinstance(builder, coco_builder.CocoTree):
    category_ids = [int(i) for i in builder.info.metadata["category_ids"]]
    if not annotation_file:
      annotation_file = builder.info.metadata["annotation_files"].get(_base_split(eval_split))
      if annotation_file is None or not os.path.isfile(annotation_file):
        raise ValueError(f"the annotation file of split {eval_split!r} ({annotation_file}) is not available; "
                         "set config.dataset.annotation_file")
  else:
    if not annotation_file:
      annotation_file = _stock_annotation_file(dataset_config, builder, eval_split)
    # The stock builder numbers the categories in the order of the instances file.
    categories = _annotation_categories(annotation_file)
    if [c["name"] for c in categories] != class_names:
      raise ValueError(f"the categories of {annotation_file} do not match the label names of {builder.name}")
    category_ids = [int(c["id"]) for c in categories]
  return {"num_classes": len(class_names), "class_names": class_names, "category_ids": category_ids,
          "annotation_file": os.fspath(annotation_file)}
