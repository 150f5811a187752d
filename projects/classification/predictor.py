"""Classify single images with the official evaluation transform: ``Classifier``.

    classifier = Classifier.from_checkpoint(None, "workdirs/tiny_cls")      # or a model file, or .pth + config
    top = classifier.top_k("photo.jpg", k=5)   # [(class index, class name, probability), ...] best first

Each image is resized (shorter side ``int(crop / crop_pct)``, bicubic) and centre-cropped to
``config.dataset.crop_size`` exactly as the official evaluation (``data.eval_transform``), normalised, and run
through the network (one compiled program for every image: the input size is fixed).
"""

from typing import Any, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from projects.classification.data import eval_transform
from projects.common import images as images_lib
from projects.common import restore


class Classifier:
  """A classification model with its variables, applied to one image at a time."""

  def __init__(self, model: Any, variables: Mapping[str, Any]) -> None:
    self.model = model
    self.variables = jax.device_put(dict(variables))
    dataset = model.config.get("dataset") or {}
    self.crop_size = int(dataset.get("crop_size", 224))
    self.resize_size = eval_transform.resize_size_for_crop(
        self.crop_size, float(dataset.get("crop_pct", eval_transform.DEFAULT_CROP_PCT)))
    self.class_names = list(model.dataset_meta_data.get("class_names")
                            or [f"class_{i}" for i in range(model.num_classes)])
    net = model.flax_model
    self._probabilities = jax.jit(lambda v, x: jax.nn.softmax(net.apply(v, x, train=False).astype(jnp.float32)))

  @classmethod
  def from_checkpoint(cls, config: restore.ConfigOrPath, checkpoint: str) -> "Classifier":
    """Restores ``checkpoint`` (workdir, converted model file or official .pth/.npz; ``restore.restore_model``)."""
    model, variables = restore.restore_model(config, checkpoint)
    if model.task != "classification":
      raise ValueError(f"{checkpoint} is a {model.task} model ({model.name}), not a classification one")
    return cls(model, variables)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  def inputs(self, image: images_lib.ImageLike) -> np.ndarray:
    """The normalised (crop, crop, 3) model input of an image (path, PIL image or array)."""
    return eval_transform.eval_input(images_lib.load_image(image), self.crop_size, self.resize_size)

  def probabilities(self, inputs: np.ndarray) -> np.ndarray:
    """(K,) float32 class probabilities of one normalised input (``inputs``)."""
    return np.asarray(self._probabilities(self.variables, jnp.asarray(inputs, jnp.float32)[None]))[0]

  def __call__(self, image: images_lib.ImageLike) -> np.ndarray:
    """(K,) float32 class probabilities of one image."""
    return self.probabilities(self.inputs(image))

  def top_k(self, image: images_lib.ImageLike, k: int = 5) -> List[Tuple[int, str, float]]:
    """The ``k`` most probable classes of an image: ``[(index, name, probability)]``, best first."""
    return self.ranked(self(image), k)

  def ranked(self, probabilities: np.ndarray, k: int = 5) -> List[Tuple[int, str, float]]:
    """The ``k`` largest of ``probabilities`` as ``[(index, name, probability)]``, best first."""
    order = np.argsort(-probabilities, kind="stable")[:min(k, len(probabilities))]
    return [(int(i), self.class_names[int(i)], float(probabilities[i])) for i in order]
