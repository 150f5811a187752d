"""Scenic-style base model: a thin wrapper that owns a Flax module, its loss and its metrics.

Mirrors the interface of ``scenic.model_lib.base_models.base_model.BaseModel`` (Scenic itself is not
installable here), so task models plug into the shared trainer the way Scenic projects do.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax.numpy as jnp
import ml_collections

Batch = Mapping[str, Any]
MetricFn = Callable[[Any, Batch], Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]]


class BaseModel:
  """Base class of task models.

  Attributes:
    config: the model configuration (``config.model`` of a job config, or the whole config).
    dataset_meta_data: facts about the dataset the model is trained on (``num_classes``,
      ``class_names``, ...), never the data itself.
    flax_model: the ``flax.linen.Module`` built by ``build_flax_model``.
  """

  def __init__(self, config: Optional[ml_collections.ConfigDict],
               dataset_meta_data: Optional[Dict[str, Any]]) -> None:
    if config is None:
      config = self.default_flax_model_config()
    self.config = config
    self.dataset_meta_data = dict(dataset_meta_data or {})
    self.flax_model: nn.Module = self.build_flax_model()

  def build_flax_model(self) -> nn.Module:
    """Returns the Flax module described by ``self.config``."""
    raise NotImplementedError

  def default_flax_model_config(self) -> ml_collections.ConfigDict:
    """Returns a small, complete configuration usable for tests."""
    raise NotImplementedError

  def loss_function(self, outputs: Any, batch: Batch,
                    model_params: Optional[Any] = None) -> Any:
    """Returns the training loss for the model outputs on ``batch``."""
    raise NotImplementedError

  def get_metrics_fn(self, split: Optional[str] = None) -> MetricFn:
    """Returns ``fn(outputs, batch) -> {name: (sum, count)}`` for ``split``."""
    raise NotImplementedError
