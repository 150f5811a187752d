"""The segmentation datasets the input pipeline reads, by their ``config.dataset_name`` (``projects.registry``).

Every entry is a tfds builder storing ``image`` (encoded JPEG or PNG bytes) and ``segmentation`` (an 8-bit
PNG of the raw mask values). What differs is how raw mask values map to classes:

* ``ade20k`` (tfds ``ade20k_challenge``, ``ade20k_builder``): 150 classes, mmseg's ``reduce_zero_label``:
  raw 0 ("other") is ignored, raw k is class k - 1. Images are JPEGs.
* ``segmentation_folder`` (your own folder) and ``cityscapes`` (tfds ``cityscapes_train_ids``: Cityscapes
  ``labelTrainIds``, 19 classes), both in ``folder_builders``: raw k is class k and the builder's
  ``ignore_label`` metadata value (255 by default) is ignored. Images are JPEG or PNG. Class names come from
  the builder's metadata.

The pipeline works on *label codes*, ADE20K's raw convention: 0 = ignore, c + 1 = class c (uint8, so up to
255 classes). ADE20K masks are codes as stored; other masks are mapped by ``label_codes`` right after
decoding, so that every transform (the ``cat_max_ratio`` crop, resizing, ``reduce_zero_label``) and the
original-size scoring (``orig_label``) treat all datasets alike.
"""

from typing import Any, Callable, Dict, NamedTuple, Optional, Tuple

import tensorflow as tf
import tensorflow_datasets as tfds

from projects.segmentation.data import ade20k_builder
from projects.segmentation.data import ade20k_classes
from projects.segmentation.data import folder_builders

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _folder_prepare_command(name: str) -> Callable[[Optional[str]], str]:
  def command(data_dir: Optional[str]) -> str:
    line = f"python -m projects.segmentation.data.prepare_folder --dataset {name} --manual_dir MANUAL_DIR"
    return line + (f" --data_dir {data_dir}" if data_dir else "")
  return command


class SegmentationDataset(NamedTuple):
  """How the pipeline reads one tfds segmentation dataset.

  Attributes:
    builder_class: the ``tfds.core.GeneratorBasedBuilder`` subclass.
    reduce_zero_label: raw 0 is ignored and raw k is class k - 1 (ADE20K); otherwise raw k is class k and
      the builder's ``ignore_label`` metadata value is ignored.
    jpeg_images: every image is a JPEG (decoded with ``decode_jpeg``); otherwise JPEG or PNG.
    prepare_command: ``data_dir -> the shell command that prepares the dataset``.
    help: where the raw data comes from (for the not-prepared error).
  """
  builder_class: type
  reduce_zero_label: bool
  jpeg_images: bool
  prepare_command: Callable[[Optional[str]], str]
  help: str


DATASETS = {
    "ade20k": SegmentationDataset(
        ade20k_builder.Ade20kChallenge, reduce_zero_label=True, jpeg_images=True,
        prepare_command=ade20k_builder.prepare_command,
        help=(f"Put the official {ade20k_builder.ZIP_NAME} (or its extracted {ade20k_builder.ROOT}/ folder) "
              "in a MANUAL_DIR (for a small generated stand-in, first run python -m "
              "projects.segmentation.data.make_synthetic_ade20k --out_dir DIR and pass DIR as "
              "--manual_dir)")),
    "segmentation_folder": SegmentationDataset(
        folder_builders.SegmentationFolder, reduce_zero_label=False, jpeg_images=False,
        prepare_command=_folder_prepare_command("segmentation_folder"),
        help=("Put classes.txt, images/{train,val}/ and masks/{train,val}/ in a MANUAL_DIR (layout: "
              "projects/segmentation/data/folder_builders.py)")),
    "cityscapes": SegmentationDataset(
        folder_builders.CityscapesTrainIds, reduce_zero_label=False, jpeg_images=False,
        prepare_command=_folder_prepare_command("cityscapes_train_ids"),
        help=("Put leftImg8bit/ and gtFine/ (with mmseg's *_gtFine_labelTrainIds.png) in a MANUAL_DIR")),
}


def get(name: str) -> SegmentationDataset:
  """The table entry of ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in DATASETS:
    raise ValueError(f"config.dataset_name {name!r} is not a segmentation dataset; known: {sorted(DATASETS)}")
  return DATASETS[name]


def load_builder(name: str, data_dir: Optional[str]) -> tfds.core.DatasetBuilder:
  """The prepared builder of dataset ``name``; raises ``FileNotFoundError`` with the command if missing."""
  entry = get(name)
  builder = entry.builder_class(data_dir=data_dir)
  if not builder.is_prepared():
    raise FileNotFoundError(
        f"the {name} dataset (version {builder.version}) is not prepared in {builder.data_dir_root}. "
        f"{entry.help} and run:\n  {entry.prepare_command(data_dir or builder.data_dir_root)}")
  return builder


def class_names(name: str, builder: tfds.core.DatasetBuilder) -> Tuple[str, ...]:
  """The class names of a prepared dataset (index i = class i)."""
  if get(name).builder_class is ade20k_builder.Ade20kChallenge:
    return ade20k_classes.CLASS_NAMES
  names = (builder.info.metadata or {}).get("class_names")
  if not names:
    raise ValueError(f"the {name} dataset in {builder.data_dir} has no class_names metadata; "
                     "prepare it again")
  return tuple(str(n) for n in names)


def dataset_meta(config: Any) -> Optional[Dict[str, Any]]:
  """The class facts of ``config.dataset_name``'s prepared dataset (``projects.registry.DATASET_META``), or
  None when it is not on disk; Cityscapes' 19 classes are known without it."""
  name = config.get("dataset_name")
  data_dir = (config.get("dataset") or {}).get("data_dir")
  try:
    builder = get(name).builder_class(data_dir=data_dir)
    names = class_names(name, builder) if builder.is_prepared() else None
  except Exception:  # pylint: disable=broad-except  (names are a nicety: a missing dataset is fine)
    names = None
  if names is None and get(name).builder_class is folder_builders.CityscapesTrainIds:
    names = folder_builders.CITYSCAPES_CLASSES
  return None if names is None else {"num_classes": len(names), "class_names": list(names)}


def ignore_label(name: str, builder: tfds.core.DatasetBuilder) -> int:
  """The raw mask value that marks unlabelled pixels (0 for ADE20K)."""
  if get(name).reduce_zero_label:
    return 0
  return int((builder.info.metadata or {}).get("ignore_label", folder_builders.DEFAULT_IGNORE))


def label_codes(raw: tf.Tensor, entry: SegmentationDataset, ignore: int) -> tf.Tensor:
  """Raw mask values -> label codes (uint8; 0 = ignore, c + 1 = class c). ADE20K's raw values are codes."""
  if entry.reduce_zero_label:
    return raw
  raw = tf.cast(raw, tf.int32)
  return tf.cast(tf.where(raw == ignore, 0, raw + 1), tf.uint8)


def decode_image(data: tf.Tensor, entry: SegmentationDataset) -> tf.Tensor:
  """uint8 HxWx3 RGB from the stored bytes (JPEG; or JPEG or PNG, grayscale expanded to RGB)."""
  if entry.jpeg_images:
    return tf.io.decode_jpeg(data, channels=3)
  return tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), (None, None, 3))


def encoded_image_shape(data: tf.Tensor) -> tf.Tensor:
  """int32 (height, width) of JPEG or PNG bytes from their header, without decoding the pixels.

  PNG: the IHDR chunk, which the PNG format places first (big-endian width and height at bytes 16-23).
  """
  def png():
    width_height = tf.io.decode_raw(tf.strings.substr(data, 16, 8), tf.int32, little_endian=False)
    return tf.stack([width_height[1], width_height[0]])

  return tf.cond(tf.strings.substr(data, 0, 8) == _PNG_SIGNATURE, png,
                 lambda: tf.image.extract_jpeg_shape(data, output_type=tf.int32)[:2])


Decoder = Callable[[tf.Tensor, tf.Tensor], Tuple[tf.Tensor, tf.Tensor]]


def decoder(name: str, builder: tfds.core.DatasetBuilder) -> Decoder:
  """``(image bytes, mask bytes) -> (uint8 HxWx3 RGB, uint8 HxWx1 label codes)`` for dataset ``name``."""
  entry, ignore = get(name), ignore_label(name, builder)

  def decode(image: tf.Tensor, segmentation: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor]:
    return (decode_image(image, entry),
            label_codes(tf.io.decode_png(segmentation, channels=1), entry, ignore))
  return decode
