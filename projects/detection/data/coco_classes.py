"""The 80 COCO detection classes in mmdet order, and their COCO category ids (contiguous index -> id).

Used when a model is converted without a prepared dataset at hand (``projects.common.model_io``); a prepared
COCO dataset gives the same values through ``coco_source.dataset_meta_data``.
"""

from typing import Any, Dict, Optional, Tuple

CLASS_NAMES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# COCO 2017 category ids of CLASS_NAMES (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
CATEGORY_IDS: Tuple[int, ...] = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

assert len(CLASS_NAMES) == len(CATEGORY_IDS) == 80


def prepared_meta(config: Any) -> Optional[Dict[str, Any]]:
  """The class facts of the prepared dataset that ``config.dataset`` points at, or None when it is not on
  disk (names are a nicety: a missing dataset is fine)."""
  dataset = config.get("dataset")
  if not dataset or not dataset.get("data_dir"):
    return None
  try:
    from projects.detection.data import coco_source  # pylint: disable=g-import-not-at-top  (TensorFlow)
    from projects.detection.data import input_pipeline  # pylint: disable=g-import-not-at-top
    options = input_pipeline.default_dataset_config()
    options.update(dataset.to_dict())
    builder = coco_source.make_builder(options)
    if not builder.is_prepared():
      return None
    return dict(coco_source.dataset_meta_data(builder, options, options.eval_split))
  except Exception:  # pylint: disable=broad-except
    return None


def dataset_meta(config: Any) -> Dict[str, Any]:
  """The class facts of a COCO-format config: its prepared dataset's when on disk, else COCO's 80 classes."""
  meta = prepared_meta(config)
  if meta is not None:
    return {k: meta[k] for k in ("num_classes", "class_names", "category_ids")}
  return {"num_classes": len(CLASS_NAMES), "class_names": list(CLASS_NAMES), "category_ids": list(CATEGORY_IDS)}
