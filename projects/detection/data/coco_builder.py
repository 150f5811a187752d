"""``coco_tree``: a tfds builder for an *extracted* COCO-format tree (COCO 2017 itself, subsets, custom sets).

The stock ``coco/2017`` builder only reads the five official zips (checksummed), so it cannot build a
subset or a custom dataset. This builder reads, from the manual dir::

  <manual_dir>/train2017/*.jpg
  <manual_dir>/val2017/*.jpg
  <manual_dir>/annotations/instances_{train,val}2017.json

(or whatever a ``CocoTreeConfig`` names) and writes the stock builder's features plus the COCO category id:

* ``image`` (the original encoded bytes), ``image/id``, ``image/filename``;
* ``objects``: ``bbox`` (normalised ``[ymin, xmin, ymax, xmax]`` clipped to the image, like the stock
  builder), ``label`` (contiguous index, categories sorted by COCO id), ``category_id`` (COCO id),
  ``is_crowd``, ``area`` (the annotation's area, float), ``id`` (the annotation id), and (version >= 1.1.0)
  ``segmentation``: the instance mask as the counts string of its compressed COCO RLE at the original image
  size (polygons, uncompressed and compressed RLE, ``iscrowd`` regions included; "" when the annotation has
  none; ``rle.py``).

Versions: 1.0.0 has no ``segmentation``; 1.1.0 adds it (a few hundred bytes per instance, small beside the images).
Both read the same way; a detection job can still use a 1.0.0 build, a mask job needs 1.1.0
(``coco_source.make_builder``). The stock tfds ``coco/2017`` builder stores no masks at all.

Images without annotations are kept. The contiguous index <-> COCO id mapping, the annotation files used and,
per split, the number of annotations without a segmentation are stored in ``info.metadata``
(``category_ids``, ``annotation_files``, ``annotations_without_segmentation``); class names are the ``label`` names.
Malformed input (unparsable JSON, a box of negative size, an unknown category or image id, a missing or
unreadable image, an image whose size differs from its JSON entry) raises ``ValueError`` /
``FileNotFoundError`` naming the file and the annotation.

Custom dataset::

  config = CocoTreeConfig(name="my_set", splits=(("train", "imgs/train", "ann/train.json"),
                                                 ("validation", "imgs/val", "ann/val.json")))
  builder = tfds.builder("coco_tree", config=config, data_dir=...)
"""

import dataclasses
import json
import os
from typing import Any, Dict, Iterator, List, Mapping, Sequence, Tuple

from absl import logging
import numpy as np
from PIL import Image
import tensorflow_datasets as tfds

from projects.detection.data import rle

# (split name, image folder, annotation file); relative paths are relative to the manual dir.
SplitSpec = Tuple[str, str, str]

# The first version that stores instance masks (``objects/segmentation``).
MASKS_VERSION = tfds.core.Version("1.1.0")

COCO_2017_SPLITS: Tuple[SplitSpec, ...] = (
    ("train", "train2017", "annotations/instances_train2017.json"),
    ("validation", "val2017", "annotations/instances_val2017.json"),
)


@dataclasses.dataclass(eq=False)
class CocoTreeConfig(tfds.core.BuilderConfig):
  """Where the splits of a COCO-format tree live.

  Attributes:
    splits: ``(split name, image folder, annotation json)`` triples, paths absolute or relative to the manual
      dir. All annotation files must list the same categories.
  """
  splits: Tuple[SplitSpec, ...] = COCO_2017_SPLITS


@dataclasses.dataclass(frozen=True)
class CocoSplit:
  """The validated content of one COCO annotation file."""
  annotation_file: str
  image_dir: str
  categories: Tuple[Tuple[int, str], ...]  # (COCO id, name), sorted by id
  images: Tuple[Mapping[str, Any], ...]  # sorted by id
  annotations: Mapping[int, Tuple[Mapping[str, Any], ...]]  # image id -> its annotations


def _require(condition: bool, path: str, message: str) -> None:
  if not condition:
    raise ValueError(f"{path}: {message}")


def load_coco_split(annotation_file: str, image_dir: str) -> CocoSplit:
  """Reads and validates a COCO instances file (images are checked later, when they are read).

  Raises:
    FileNotFoundError: the annotation file does not exist.
    ValueError: the file is not JSON, lacks ``images``/``annotations``/``categories``, has duplicate ids,
      or an annotation has a malformed/negative-size bbox, an unknown ``category_id`` or an unknown
      ``image_id``.
  """
  if not os.path.isfile(annotation_file):
    raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
  try:
    with open(annotation_file, "r") as f:
      data = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{annotation_file}: not a valid JSON file ({e})") from e
  _require(isinstance(data, dict), annotation_file, "expected a JSON object at the top level")
  for key in ("images", "annotations", "categories"):
    _require(isinstance(data.get(key), list), annotation_file, f"missing the list {key!r}")

  categories = {}
  for cat in data["categories"]:
    _require("id" in cat and "name" in cat, annotation_file, f"category without 'id'/'name': {cat}")
    _require(cat["id"] not in categories, annotation_file, f"duplicate category id {cat['id']}")
    categories[int(cat["id"])] = str(cat["name"])
  _require(bool(categories), annotation_file, "'categories' is empty")

  images = {}
  for img in data["images"]:
    for key in ("id", "file_name", "height", "width"):
      _require(key in img, annotation_file, f"image entry without {key!r}: {img}")
    _require(img["id"] not in images, annotation_file, f"duplicate image id {img['id']}")
    _require(img["height"] > 0 and img["width"] > 0, annotation_file,
             f"image {img['id']} ({img['file_name']}) has a non-positive size")
    images[int(img["id"])] = img

  annotations: Dict[int, List[Mapping[str, Any]]] = {}
  outside: List[str] = []
  for ann in data["annotations"]:
    ann_id = ann.get("id")
    where = f"annotation id {ann_id} (image_id {ann.get('image_id')})"
    _require(ann_id is not None, annotation_file, f"{where} has no 'id'")
    _require(ann.get("image_id") in images, annotation_file, f"{where} refers to an unknown image_id")
    _require(ann.get("category_id") in categories, annotation_file,
             f"{where} has category_id {ann.get('category_id')} which is not in 'categories'")
    bbox = ann.get("bbox")
    _require(isinstance(bbox, (list, tuple)) and len(bbox) == 4
             and all(isinstance(v, (int, float)) and np.isfinite(v) for v in bbox),
             annotation_file, f"{where} has a malformed bbox {bbox!r} (expected [x, y, w, h])")
    _require(bbox[2] >= 0 and bbox[3] >= 0, annotation_file,
             f"{where} has a bbox of negative size {bbox!r}")
    image = images[ann["image_id"]]
    if (bbox[0] >= image["width"] or bbox[1] >= image["height"] or bbox[0] + bbox[2] <= 0
        or bbox[1] + bbox[3] <= 0):
      outside.append(f"{ann_id} (image_id {ann['image_id']}, bbox {bbox}, image {image['width']}x{image['height']})")
    annotations.setdefault(int(ann["image_id"]), []).append(ann)
  if outside:
    logging.warning("%s: %d annotation(s) with a bbox entirely outside their image (clipped to an empty box): "
                    "annotation id %s", annotation_file, len(outside),
                    "; ".join(outside[:20]) + (f" ... (+{len(outside) - 20})" if len(outside) > 20 else ""))

  return CocoSplit(
      annotation_file=annotation_file,
      image_dir=image_dir,
      categories=tuple(sorted(categories.items())),
      images=tuple(images[i] for i in sorted(images)),
      annotations={k: tuple(v) for k, v in annotations.items()},
  )


def normalized_bbox(bbox: Sequence[float], height: int, width: int) -> np.ndarray:
  """COCO ``[x, y, w, h]`` in pixels -> ``[ymin, xmin, ymax, xmax]`` in ``[0, 1]``, clipped to the image."""
  x, y, w, h = (float(v) for v in bbox)
  box = np.array([y / height, x / width, (y + h) / height, (x + w) / width], np.float64)
  return np.clip(box, 0.0, 1.0).astype(np.float32)


def image_path(image_dir: str, image_info: Mapping[str, Any], annotation_file: str) -> str:
  """The file of an image entry, which must stay inside ``image_dir`` once resolved: a ``file_name`` such as
  ``../../x.jpg``, an absolute path or a symlink out of the folder would pull a foreign file into the split."""
  path = os.path.join(image_dir, image_info["file_name"])
  root = os.path.realpath(image_dir)
  if os.path.commonpath([root, os.path.realpath(path)]) != root:
    raise ValueError(f"{annotation_file}: image {image_info['id']} has file_name {image_info['file_name']!r}, "
                     f"which leads outside the image folder {image_dir}; only files inside it are read")
  return path


def _check_image(path: str, image_info: Mapping[str, Any], annotation_file: str) -> None:
  """Raises if the image is missing, unreadable, or not the size its JSON entry says (reads the header)."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f"{annotation_file}: image {image_info['id']} ({image_info['file_name']}) "
                            f"is missing: {path}")
  try:
    with Image.open(path) as img:
      width, height = img.size
  except OSError as e:
    raise ValueError(f"{path}: cannot read image {image_info['id']} ({e})") from e
  if (height, width) != (image_info["height"], image_info["width"]):
    raise ValueError(f"{path}: image {image_info['id']} is {height}x{width} (h x w) but {annotation_file} "
                     f"says {image_info['height']}x{image_info['width']}")


class CocoTree(tfds.core.GeneratorBasedBuilder):
  """COCO-format detection dataset read from an extracted tree in the manual dir."""

  VERSION = tfds.core.Version("1.1.0")
  SUPPORTED_VERSIONS = [tfds.core.Version("1.0.0")]
  RELEASE_NOTES = {"1.0.0": "Initial release.",
                   "1.1.0": "objects/segmentation: instance masks as compressed COCO RLE strings."}
  BUILDER_CONFIGS = [
      CocoTreeConfig(name="2017", description="COCO 2017 train/val (or any subset of it) extracted in "
                     "the manual dir: train2017/, val2017/, annotations/instances_{train,val}2017.json."),
  ]
  DEFAULT_CONFIG_NAME = "2017"
  MANUAL_DOWNLOAD_INSTRUCTIONS = """\
  Put an extracted COCO-format tree in the manual dir; for the default config:
    <manual_dir>/train2017/  <manual_dir>/val2017/
    <manual_dir>/annotations/instances_train2017.json  <manual_dir>/annotations/instances_val2017.json
  Then run: python -m projects.detection.data.prepare_coco --manual_dir <manual_dir> --data_dir <data_dir>
  """

  @property
  def has_masks(self) -> bool:
    """Whether this version stores ``objects/segmentation``."""
    return self.version >= MASKS_VERSION

  def _info(self) -> tfds.core.DatasetInfo:
    objects = {
        "id": np.int64,
        "area": np.float32,
        "bbox": tfds.features.BBoxFeature(),
        "label": tfds.features.ClassLabel(),
        "category_id": np.int64,
        "is_crowd": np.bool_,
    }
    if self.has_masks:
      objects["segmentation"] = tfds.features.Text()
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({
            "image": tfds.features.Image(shape=(None, None, 3)),
            "image/filename": tfds.features.Text(),
            "image/id": np.int64,
            "objects": tfds.features.Sequence(objects),
        }),
        metadata=tfds.core.MetadataDict(),
        homepage="https://cocodataset.org/#format-data",
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> Dict[str, Iterator[Any]]:
    manual_dir = os.fspath(dl_manager.manual_dir)
    splits = [load_coco_split(os.path.join(manual_dir, ann), os.path.join(manual_dir, img_dir))
              for _, img_dir, ann in self.builder_config.splits]
    categories = splits[0].categories
    for split in splits[1:]:
      if split.categories != categories:
        raise ValueError(f"{split.annotation_file} and {splits[0].annotation_file} list different "
                         "categories; all splits of a dataset must share them")
    self.info.features["objects"]["label"].names = [name for _, name in categories]
    self.info.metadata["category_ids"] = [cat_id for cat_id, _ in categories]
    self.info.metadata["annotation_files"] = {
        name: os.path.abspath(split.annotation_file)
        for (name, _, _), split in zip(self.builder_config.splits, splits)}
    self.info.metadata["annotations_without_segmentation"] = {
        name: sum(not ann.get("segmentation") for anns in split.annotations.values() for ann in anns)
        for (name, _, _), split in zip(self.builder_config.splits, splits)}
    return {name: self._generate_examples(split)
            for (name, _, _), split in zip(self.builder_config.splits, splits)}

  def _generate_examples(self, split: CocoSplit) -> Iterator[Tuple[int, Dict[str, Any]]]:
    label_of = {cat_id: index for index, (cat_id, _) in enumerate(split.categories)}
    for image_info in split.images:
      path = image_path(split.image_dir, image_info, split.annotation_file)
      _check_image(path, image_info, split.annotation_file)
      height, width = image_info["height"], image_info["width"]
      objects = []
      for ann in split.annotations.get(int(image_info["id"]), ()):
        x, y, w, h = ann["bbox"]
        objects.append({
            "id": int(ann["id"]),
            "area": float(ann.get("area", w * h)),
            "bbox": normalized_bbox(ann["bbox"], height, width),
            "label": label_of[ann["category_id"]],
            "category_id": int(ann["category_id"]),
            "is_crowd": bool(ann.get("iscrowd", 0)),
        })
        if self.has_masks:
          objects[-1]["segmentation"] = rle.segmentation_to_rle(
              ann, height, width, f"{split.annotation_file}: annotation id {ann['id']} "
              f"(image_id {image_info['id']})")
      yield int(image_info["id"]), {
          "image": path,
          "image/filename": image_info["file_name"],
          "image/id": int(image_info["id"]),
          "objects": objects,
      }
