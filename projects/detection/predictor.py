"""Object detection on single images with the mmdet test pipeline: ``Detector``.

    detector = Detector.from_checkpoint("configs/retinanet_crossformer_s_coco.py", "retinanet_s.msgpack")
    result = detector("photo.jpg")   # boxes (N, 4) xyxy in the photo's pixels, scores, labels, category_ids

Per image (mmdet 2.x ``MultiScaleFlipAug(img_scale=(1333, 800))`` test pipeline): keep-ratio ``Resize`` to
``config.dataset.image_scale`` (mmcv ``rescale_size``; the training pipeline's TensorFlow resize), Normalize,
``Pad`` to a multiple of ``size_divisor`` (32), the network and the model's post-processing
(``config.model.test_cfg``), boxes divided by the resize factors back to the original image and clamped to
it. The network is jitted once per padded shape; ``pad_to_buckets=True`` pads into the dataset's few
aspect-ratio buckets instead (fewer programs for folders of mixed sizes; the network then sees more padding
than mmdet's test pipeline gives it).
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from projects.common import images as images_lib
from projects.common import restore


@dataclasses.dataclass
class Detections:
  """Detections of one image, best first.

  Attributes:
    boxes: (N, 4) float32 xyxy in original-image pixels (inside the image).
    scores: (N,) float32.
    labels: (N,) int32 contiguous class indices.
    category_ids: (N,) int64 dataset (COCO) category ids.
    class_names: (N,) names.
    image_size: (height, width) of the image.
  """
  boxes: np.ndarray
  scores: np.ndarray
  labels: np.ndarray
  category_ids: np.ndarray
  class_names: List[str]
  image_size: Tuple[int, int]

  def to_coco(self, image_id: int = 0) -> List[Dict[str, Any]]:
    """COCO results entries (``bbox`` = [x, y, w, h], ``score``, ``category_id``, ``image_id``)."""
    from projects.detection.coco_evaluator import detections_to_coco  # pylint: disable=g-import-not-at-top
    ids = [int(c) for c in self.category_ids]
    return detections_to_coco(self.boxes, self.scores, np.arange(len(ids)), image_id, ids)


class Detector:
  """A detection model with its variables, applied to one image at a time."""

  def __init__(self, model: Any, variables: Mapping[str, Any], pad_to_buckets: bool = False) -> None:
    """``model`` is a ``RetinaNetModel``; see ``from_checkpoint`` for the usual construction."""
    from projects.detection.data import input_pipeline  # pylint: disable=g-import-not-at-top
    from projects.detection.data import schedule  # pylint: disable=g-import-not-at-top
    self.model = model
    self.variables = jax.device_put(dict(variables))
    options = input_pipeline.default_dataset_config()
    options.update(dict(model.config.get("dataset") or {}))
    self.image_scale = tuple(int(v) for v in options.image_scale)
    self.size_divisor = int(options.size_divisor)
    self.buckets = (schedule.make_buckets(self.image_scale, self.size_divisor,
                                          tuple(options.bucket_aspect_ratios)) if pad_to_buckets else None)
    meta = model.dataset_meta_data
    self.class_names = list(meta.get("class_names") or [f"class_{i}" for i in range(model.num_classes)])
    self.category_ids = [int(c) for c in (meta.get("category_ids") or range(1, model.num_classes + 1))]
    self._predict = jax.jit(self._detect)

  @classmethod
  def from_checkpoint(cls, config: restore.ConfigOrPath, checkpoint: str, **kwargs: Any) -> "Detector":
    """Restores ``checkpoint`` (workdir, converted file or official .pth/.npz; ``restore.restore_model``)."""
    model, variables = restore.restore_model(config, checkpoint)
    if model.task != "detection":
      raise ValueError(f"{checkpoint} is a {model.task} model ({model.name}), not a detection one")
    return cls(model, variables, **kwargs)

  def _detect(self, variables, inputs, image_size, scale):
    outputs = self.model.flax_model.apply(variables, inputs, train=False)
    return self.model.predict(outputs, {"label": {"image_size": image_size, "scale": scale}})

  def _padded_shape(self, size: Tuple[int, int]) -> Tuple[int, int]:
    if self.buckets is not None:
      fitting = [b for b in self.buckets if b[0] >= size[0] and b[1] >= size[1]]
      if fitting:
        return min(fitting, key=lambda b: b[0] * b[1])
    d = self.size_divisor
    return tuple(-(-int(s) // d) * d for s in size)

  def preprocess(self, rgb: np.ndarray) -> Tuple[np.ndarray, Tuple[int, int]]:
    """``(padded normalised (1, H, W, 3) input, resized (h, w))`` of a uint8 RGB image."""
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    from projects.detection.data import schedule  # pylint: disable=g-import-not-at-top
    from projects.detection.data import transforms  # pylint: disable=g-import-not-at-top
    new_h, new_w = schedule.rescale_sizes(np.array([rgb.shape[0]]), np.array([rgb.shape[1]]), self.image_scale)
    resized = (int(new_h[0]), int(new_w[0]))
    x = transforms.normalize_image(transforms.resize_image(tf.constant(rgb), tf.constant(resized))).numpy()
    ph, pw = self._padded_shape(resized)
    return np.pad(x, ((0, ph - resized[0]), (0, pw - resized[1]), (0, 0)))[None], resized

  def __call__(self, image: images_lib.ImageLike) -> Detections:
    """Detections of an image (path, PIL image or array of any mode) in its own pixel coordinates."""
    rgb = images_lib.load_image(image)
    height, width = rgb.shape[:2]
    inputs, resized = self.preprocess(rgb)
    scale = np.asarray([[resized[0] / height, resized[1] / width]], np.float32)
    out = jax.device_get(self._predict(self.variables, jnp.asarray(inputs), np.asarray([resized], np.int32),
                                       scale))
    valid = np.asarray(out["valid"][0]).astype(bool) & (np.asarray(out["labels"][0]) >= 0)
    boxes = np.asarray(out["boxes"][0], np.float32)[valid]
    boxes = np.clip(boxes, 0.0, np.asarray([width, height, width, height], np.float32))
    labels = np.asarray(out["labels"][0], np.int32)[valid]
    return Detections(boxes=boxes, scores=np.asarray(out["scores"][0], np.float32)[valid], labels=labels,
                      category_ids=np.asarray([self.category_ids[l] for l in labels], np.int64),
                      class_names=[self.class_names[l] for l in labels], image_size=(height, width))
