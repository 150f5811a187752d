"""Scenic-style base model: a thin wrapper that owns a Flax module, its loss and its metrics.

Follows the contract of ``scenic.model_lib.base_models.base_model.BaseModel`` (Scenic itself is not
installable here), so a Scenic project can select our models by ``config.model_name`` (``projects.registry``)
and train them with Scenic's own trainers, and our trainer runs them the same way:

* ``loss_function(outputs, batch, model_params=None)`` -> the scalar training loss, or
  ``(loss, metrics)`` where ``metrics`` are the split's ``{name: (sum, count)}`` (Scenic's detection
  convention): a trainer then uses those metrics instead of calling the metrics function again.
* ``get_metrics_fn(split)`` -> ``fn(outputs, batch)`` for Scenic's **pmap** trainers: every
  ``(sum, count)`` is ``psum``-ed over the mapped axis ``axis_name`` (Scenic's ``"batch"``).
* ``get_metrics_fn_jit(split)`` -> the same function for **jit** trainers over global arrays (ours): plain
  sums, no collective.
* ``init_from_train_state(train_state, restored_train_state, restored_model_cfg=None)`` -> ``train_state``
  with ``params["backbone"]`` taken from a restored (Scenic) train state.

Beyond Scenic, a model class declares what the task-free core (restore, model files, convert, export,
predict) asks of it, so that a model is one file (``projects.registry``):

* ``name`` (set by ``registry.register_model``) and ``task``: the commands a model belongs to (each task's
  predict/evaluate refuse another task's model).
* ``num_classes_from_params(params, config)``: the class count read off a checkpoint's classifier.
* ``convert_official(state_dict, expected)``: an official mmseg/mmdet state dict -> our variables (the
  ``heads.official`` prefix mapping by default).
* ``export_fn()``: ``f(variables, images) -> outputs`` for export and serving.

The L2 term follows Scenic: ``0.5 * config.l2_decay_factor * sum of squares of the params with ndim > 1``
(``config.l2_on_all_params=True``, ours, also counts 1-D params: biases and norm scales).
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from backbones.weights import tree

Batch = Mapping[str, Any]
MetricFn = Callable[[Any, Batch], Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]]


def psum_metrics(metrics: Mapping[str, Tuple[Any, Any]], axis_name: Any) -> Dict[str, Tuple[Any, Any]]:
  """Scenic's ``psum_metric_normalizer`` on every ``(value, normalizer)``: each is summed and ``psum``-ed."""
  return {k: (jax.lax.psum(jnp.sum(v), axis_name), jax.lax.psum(jnp.sum(n), axis_name))
          for k, (v, n) in metrics.items()}


def param_shapes(params: Mapping[str, Any], suffix: str, prefix: str = "") -> list:
  """Shapes of the parameters whose ``/``-joined path starts with ``prefix`` and ends with ``suffix`` (for
  class-count readers: ``param_shapes(params, "conv_seg/kernel", "decode_head/")``)."""
  flat = tree.flatten(params)
  return [tuple(jnp.shape(v)) for k, v in flat.items() if k.startswith(prefix) and k.endswith(suffix)]


def l2_norm_squared(params: Any, all_params: bool = False) -> jnp.ndarray:
  """Sum of squares of the params with ``ndim > 1`` (Scenic's ``l2_regularization``), or of all params."""
  leaves = [p for p in jax.tree.leaves(params) if all_params or jnp.ndim(p) > 1]
  return sum((jnp.sum(jnp.square(p.astype(jnp.float32))) for p in leaves), jnp.zeros((), jnp.float32))


class BaseModel:
  """Base class of task models.

  Attributes:
    config: the job config (``config.model`` holds the architecture).
    dataset_meta_data: facts about the dataset the model is trained on (``num_classes``,
      ``class_names``, ...), never the data itself.
    flax_model: the ``flax.linen.Module`` built by ``build_flax_model``.
    axis_name: the pmap axis that ``get_metrics_fn`` sums over (Scenic's trainers map over ``"batch"``).
  """

  axis_name: Any = "batch"
  # The registry name (set by ``projects.registry.register_model``) and the task whose commands serve it.
  name: str = ""
  task: str = ""

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
    """The injected backbone, or the one ``config.model.backbone`` describes: ``backbones.build_from_config``
    hands the block (``name`` plus the family's own keys) to the named variant's family. The weights come
    from ``config.init_from.checkpoint_path``, read by the trainer."""
    if self._backbone is not None:
      return self._backbone
    import backbones  # pylint: disable=import-outside-toplevel  (only models with a backbone need it)
    cfg = self.config.model.backbone
    cfg = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
    return backbones.build_from_config(cfg, out_indices=out_indices, dtype=dtype)

  @classmethod
  def num_classes_from_params(cls, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> int:
    """The number of classes of a checkpoint's ``params`` (read off its classifier's shape)."""
    raise NotImplementedError(f"{cls.__name__} does not say how to read its class count from parameters; "
                              "set config.dataset_meta.num_classes")

  @classmethod
  def generic_meta_data(cls, num_classes: int) -> Dict[str, Any]:
    """Dataset facts for ``num_classes`` classes when the dataset names none (``class_<i>``)."""
    return {"class_names": [f"class_{i}" for i in range(num_classes)]}

  @classmethod
  def convert_official(cls, state_dict: Mapping[str, Any], expected: Mapping[str, Any]) -> Tuple[Any, Any]:
    """``(variables, report)`` from an official mmseg/mmdet state dict for a model whose variables have the
    shapes ``expected``; ``report.ok`` / ``report.problems()`` say what did not fit."""
    from heads import official  # pylint: disable=import-outside-toplevel  (only conversion needs it)
    return official.convert_state_dict(state_dict, expected, strict=False)

  def export_fn(self) -> Callable[[Any, jnp.ndarray], Dict[str, Any]]:
    """``f(variables, images) -> {name: array}``: what an exported program of this model returns for a batch
    of normalised NHWC images (fixed-size arrays only)."""
    raise NotImplementedError(f"{type(self).__name__} declares no export function")

  def l2_regularization(self, model_params: Optional[Any]) -> jnp.ndarray:
    """Scenic's optional ``0.5 * config.l2_decay_factor * ||params||^2`` (0 when the factor is unset)."""
    factor = self.config.get("l2_decay_factor")
    if factor is None:
      return jnp.zeros((), jnp.float32)
    if model_params is None:
      raise ValueError("config.l2_decay_factor is set but loss_function got no model_params")
    return 0.5 * factor * l2_norm_squared(model_params, bool(self.config.get("l2_on_all_params", False)))

  def build_flax_model(self) -> nn.Module:
    """Returns the Flax module described by ``self.config``."""
    raise NotImplementedError

  def default_flax_model_config(self) -> ml_collections.ConfigDict:
    """Returns a small, complete configuration usable for tests."""
    raise NotImplementedError

  def loss_function(self, outputs: Any, batch: Batch, model_params: Optional[Any] = None) -> Any:
    """Returns the training loss (or ``(loss, metrics)``) for the model outputs on ``batch``."""
    raise NotImplementedError

  def get_metrics_fn_jit(self, split: Optional[str] = None) -> MetricFn:
    """Returns ``fn(outputs, batch) -> {name: (sum, count)}`` over the (global) batch, for jit trainers."""
    raise NotImplementedError

  def get_metrics_fn(self, split: Optional[str] = None) -> MetricFn:
    """``get_metrics_fn_jit(split)`` with every ``(sum, count)`` ``psum``-ed over ``self.axis_name``: for
    Scenic's pmap trainers (each device sees a shard of the batch)."""
    metrics_fn = self.get_metrics_fn_jit(split)

    def pmap_metrics_fn(outputs: Any, batch: Batch) -> Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]:
      return psum_metrics(metrics_fn(outputs, batch), self.axis_name)

    return pmap_metrics_fn

  def init_from_train_state(self, train_state: Any, restored_train_state: Any,
                            restored_model_cfg: Optional[ml_collections.ConfigDict] = None) -> Any:
    """Scenic's model hook for ``config.init_from``: ``train_state`` (any object with ``params`` and
    ``replace``) with ``params["backbone"]`` from ``restored_train_state["params"]["backbone"]``; shapes are
    checked (a ``ValueError`` names what does not fit). The heads keep their fresh initialisation."""
    del restored_model_cfg
    from projects.common import pretrained  # pylint: disable=import-outside-toplevel
    restored = restored_train_state["params"] if not hasattr(restored_train_state, "params") else (
        restored_train_state.params)
    restored = flax.core.unfreeze(restored)
    if "backbone" not in restored:
      raise ValueError(f"the restored train state has no params['backbone'] (top-level keys: {sorted(restored)})")
    params = pretrained.merge_backbone_params(dict(flax.core.unfreeze(train_state.params)), restored["backbone"],
                                              source="the restored train state")
    return train_state.replace(params=params)
