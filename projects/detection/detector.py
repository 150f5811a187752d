"""``Detector``: what every detection model declares to the task-free core, shared by RetinaNet and Mask R-CNN.

A detection model subclasses ``Detector`` and implements ``predict(outputs, batch)`` (fixed-size detections:
``boxes`` xyxy in input pixels, ``scores``, ``labels`` with -1 for padding, ``valid``, and for models with
masks ``masks``); the detection job, its evaluator, the predict/evaluate commands and export then serve it.
"""

from typing import Any, Callable, Dict, Mapping, Tuple

import jax.numpy as jnp

from projects.common.base_model import BaseModel


class Detector(BaseModel):
  """Base of the detection models (``task = "detection"``)."""

  task = "detection"
  iou_types: Tuple[str, ...] = ("bbox",)  # what COCO evaluation scores for this model
  with_masks = False  # whether the data pipeline decodes instance masks for it

  @classmethod
  def generic_meta_data(cls, num_classes: int) -> Dict[str, Any]:
    """``class_<i>`` names and COCO category ids ``1..K`` (what evaluation writes into detections)."""
    return {**super().generic_meta_data(num_classes), "category_ids": list(range(1, num_classes + 1))}

  def predict(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> Dict[str, jnp.ndarray]:
    """Fixed-size detections from the network's outputs; ``batch["label"]`` gives ``image_size`` (B, 2) and
    ``scale`` (B, 2)."""
    raise NotImplementedError

  def export_fn(self) -> Callable[[Any, jnp.ndarray], Dict[str, jnp.ndarray]]:
    """``f(variables, images)`` -> the detections of images that fill their whole, unscaled frame."""
    net = self.flax_model
    apply_kwargs = getattr(self, "apply_kwargs", None)

    def detect(variables: Any, images: jnp.ndarray) -> Dict[str, jnp.ndarray]:
      b, h, w = images.shape[:3]
      label = {"image_size": jnp.tile(jnp.asarray([[h, w]], jnp.int32), (b, 1)),
               "scale": jnp.ones((b, 2), jnp.float32)}
      kwargs = apply_kwargs({"inputs": images, "label": label}, train=False) if apply_kwargs else {}
      outputs = net.apply(variables, images, train=False, **kwargs)
      return self.predict(outputs, {"label": label})

    return detect
