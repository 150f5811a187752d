"""The classification datasets, by ``config.dataset_name``: tfds's ``imagenet2012`` and your ``image_folder``.

Both are tfds builders whose examples hold ``image`` (encoded bytes) and ``label`` (int64), so one pipeline
(``pipeline.get_dataset``) serves both:

* ``imagenet2012``: tfds's own builder. Put the official ``ILSVRC2012_img_train.tar`` and
  ``ILSVRC2012_img_val.tar`` in a manual dir and run ``python -m projects.classification.data.prepare
  --dataset imagenet2012 --manual_dir DIR --data_dir TFDS_DIR``. Class names are the WordNet ids tfds ships
  (``n01440764``, ...), in the order of the official checkpoints' 1000 outputs.
* ``image_folder`` (``folder_builder``): your classes, one sub-folder each; a job prepares it on first use
  from ``config.dataset.manual_dir`` (and ``val_fraction``).
"""

from typing import Any, Dict, Optional, Tuple

import ml_collections
import tensorflow_datasets as tfds

from projects.classification.data import folder_builder

DATASET_NAMES = ("imagenet2012", "image_folder")
IMAGENET_NUM_CLASSES = 1000


def prepare_command(name: str, data_dir: Optional[str]) -> str:
  line = f"python -m projects.classification.data.prepare --dataset {name} --manual_dir MANUAL_DIR"
  return line + (f" --data_dir {data_dir}" if data_dir else "")


def _settings(config: ml_collections.ConfigDict) -> Tuple[str, Dict[str, Any]]:
  name = config.get("dataset_name") or "image_folder"
  if name not in DATASET_NAMES:
    raise ValueError(f"config.dataset_name {name!r} is not a classification dataset; known: {DATASET_NAMES}")
  dataset = config.get("dataset") or {}
  return name, {k: dataset.get(k) for k in ("data_dir", "manual_dir", "val_fraction")}


def load_builder(config: ml_collections.ConfigDict, prepare: bool = True) -> tfds.core.DatasetBuilder:
  """The prepared builder of ``config.dataset_name``. ``image_folder`` with ``config.dataset.manual_dir`` is
  prepared here when needed (``prepare``); otherwise ``FileNotFoundError`` gives the command that prepares it."""
  name, cfg = _settings(config)
  if name == "image_folder":
    builder = folder_builder.ClassificationFolder(data_dir=cfg["data_dir"], val_fraction=cfg["val_fraction"] or 0.0)
    if builder.is_prepared():
      folder_builder.check_prepared(builder, cfg["manual_dir"], cfg["val_fraction"] or 0.0)
      return builder
    if prepare and cfg["manual_dir"]:
      return folder_builder.prepare(cfg["manual_dir"], cfg["data_dir"], cfg["val_fraction"] or 0.0)
    help_text = "Set config.dataset.manual_dir to your folder (train/<class>/ and val/<class>/), or run"
  else:
    builder = tfds.builder("imagenet2012", data_dir=cfg["data_dir"])
    if builder.is_prepared():
      return builder
    help_text = ("Put the official ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar in a MANUAL_DIR and "
                 "run")
  raise FileNotFoundError(f"the {name} dataset is not prepared in {builder.data_dir_root}. {help_text}: "
                          f"{prepare_command(name, cfg['data_dir'] or builder.data_dir_root)}")


def class_names(builder: tfds.core.DatasetBuilder) -> Tuple[str, ...]:
  """Class names (index i = class i) of a builder: the folder metadata, or the ``label`` feature's names."""
  names = (builder.info.metadata or {}).get("class_names")
  if not names and "label" in builder.info.features and hasattr(builder.info.features["label"], "names"):
    names = builder.info.features["label"].names
  if not names:
    raise ValueError(f"the dataset in {builder.data_dir} has no class names; prepare it again")
  return tuple(str(n) for n in names)


def dataset_meta(config: ml_collections.ConfigDict) -> Optional[Dict[str, Any]]:
  """``registry.DATASET_META``: the class facts without reading the data (ImageNet: tfds's 1000 WordNet ids;
  a folder: those of its prepared build, else None)."""
  name, _ = _settings(config)
  if name == "imagenet2012":
    names = class_names(tfds.builder("imagenet2012", data_dir=(config.get("dataset") or {}).get("data_dir")))
    return {"num_classes": len(names), "class_names": list(names)}
  try:
    builder = load_builder(config, prepare=False)
  except (FileNotFoundError, ValueError):
    return None
  names = class_names(builder)
  return {"num_classes": len(names), "class_names": list(names)}
