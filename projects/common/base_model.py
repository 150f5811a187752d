"""Scenic-style base model: a thin wrapper that owns a Flax module, its loss and its metrics.

Mirrors the interface of ``scenic.model_lib.base_models.base_model.BaseModel`` (Scenic itself is not
installable here), so task models plug into the shared trainer the way Scenic projects do.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
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
               dataset_meta_data: Optional[Dict[str, Any]],
               backbone: Optional[nn.Module] = None) -> None:
    """``backbone`` (any module returning the ``stage_*`` dict) replaces the one of
    ``config.model.backbone``."""
    if config is None:
      config = self.default_flax_model_config()
    self.config = config
    self.dataset_meta_data = dict(dataset_meta_data or {})
    self._backbone = backbone
    self.flax_model: nn.Module = self.build_flax_model()

  @property
  def num_classes(self) -> int:
    """Classes of the task, from ``dataset_meta_data['num_classes']``."""
    if "num_classes" not in self.dataset_meta_data:
      raise ValueError(f"{type(self).__name__} needs dataset_meta_data['num_classes']")
    return int(self.dataset_meta_data["num_classes"])

  def build_backbone(self, dtype: Any, out_indices: Tuple[int, ...] = (0, 1, 2, 3)) -> nn.Module:
    """The injected backbone, or the one ``config.model.backbone`` names via ``backbones.create_model``
    (keys ``name``, ``overrides``, ``drop_path_rate``, ``lda_mode``, ``remat``; ``checkpoint`` is read by
    the trainer)."""
    if self._backbone is not None:
      return self._backbone
    import backbones  # pylint: disable=import-outside-toplevel  (only models with a backbone need it)
    cfg = self.config.model.backbone
    overrides = cfg.get("overrides") or {}
    overrides = overrides.to_dict() if isinstance(overrides, ml_collections.ConfigDict) else dict(overrides)
    return backbones.create_model(cfg.name, features_only=True, out_indices=out_indices,
                                  drop_path_rate=cfg.get("drop_path_rate", 0.0),
                                  lda_mode=cfg.get("lda_mode", "v1"), remat=cfg.get("remat", False),
                                  dtype=dtype, **overrides)

  def l2_regularization(self, model_params: Optional[Any]) -> jnp.ndarray:
    """Scenic's optional ``0.5 * config.l2_decay_factor * ||params||^2`` (0 when the factor is unset)."""
    factor = self.config.get("l2_decay_factor")
    if factor is None:
      return jnp.zeros((), jnp.float32)
    if model_params is None:
      raise ValueError("config.l2_decay_factor is set but loss_function got no model_params")
    return 0.5 * factor * sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(model_params))

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
