"""Image classification with a CrossFormer classifier: Scenic's ``ClassificationModel`` contract.

The network is the backbone registry's classifier, ``backbones.create_model(name, features_only=False,
num_classes=K)`` (backbone, LayerNorm, mean pool, linear ``output_projection``), so its parameters are
``params["backbone"]`` (where ``config.init_from`` loads a pretrained trunk), ``params["norm"]`` and
``params["output_projection"]``, exactly the layout of a converted official ImageNet checkpoint.

Loss and metrics follow Scenic (``model_lib/base_models/classification_model.py`` + ``model_utils.py``):

* targets are one-hot or soft (Mixup/CutMix) ``(B, K)`` labels, or integer ``(B,)`` labels (one-hot encoded
  here; Scenic's ``dataset_meta_data["target_is_onehot"]`` forces the former);
* ``loss_function``: ``sum_b w_b * CE(smooth(t_b), logits_b) / (sum_b w_b + 1e-8)`` with ``w`` =
  ``batch_mask`` and Scenic's smoothing ``t * (1 - ls) + ls / K`` (``config.label_smoothing``; on mixed
  targets this equals timm's Mixup with smoothed one-hots, the smoothing being linear), plus Scenic's L2
  (``BaseModel.l2_regularization``);
* metrics ``accuracy`` (argmax of the logits = argmax of the target), ``top_5_accuracy`` (the target's argmax
  among the 5 largest logits) and ``loss`` (the un-normalised weighted cross-entropy without smoothing), each
  normalised by the number of real examples (``sum w``), ``psum``-ed over the pmap axis by ``get_metrics_fn``.
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heads import official
from backbones.weights import tree
from projects import registry
from projects.common.base_model import Batch, BaseModel, MetricFn, param_shapes

TOP_K = 5


def one_hot_targets(labels: jnp.ndarray, num_classes: int) -> jnp.ndarray:
  """``(B, K)`` float32 targets: integer ``(B,)`` labels one-hot encoded, ``(B, K)`` targets as they are."""
  labels = jnp.asarray(labels)
  if labels.ndim >= 2:
    if labels.shape[-1] != num_classes:
      raise ValueError(f"soft labels have {labels.shape[-1]} classes but the logits {num_classes}")
    return labels.astype(jnp.float32)
  return jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)


def example_weights(targets: jnp.ndarray, batch_mask: Optional[jnp.ndarray]) -> jnp.ndarray:
  """``(B,)`` float32 weights: ``batch_mask`` (per example) or ones."""
  if batch_mask is None:
    return jnp.ones(targets.shape[:1], jnp.float32)
  batch_mask = jnp.asarray(batch_mask, jnp.float32)
  if batch_mask.shape != targets.shape[:1]:
    raise ValueError(f"batch_mask must be per example, shape {targets.shape[:1]}, got {batch_mask.shape}")
  return batch_mask


def smooth(targets: jnp.ndarray, label_smoothing: Optional[float]) -> jnp.ndarray:
  """Scenic's ``apply_label_smoothing``: ``t * (1 - ls) + ls / K`` (no-op for None or 0)."""
  if not label_smoothing:
    return targets
  return targets * (1.0 - label_smoothing) + label_smoothing / targets.shape[-1]


def cross_entropy(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """``(B,)`` softmax cross-entropy of float32 ``logits`` against ``(B, K)`` targets."""
  return -jnp.sum(targets * jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1), axis=-1)


def classification_loss(logits: jnp.ndarray, labels: jnp.ndarray, batch_mask: Optional[jnp.ndarray] = None,
                        label_smoothing: Optional[float] = None) -> jnp.ndarray:
  """Scenic's ``weighted_softmax_cross_entropy`` on classification targets (module docstring)."""
  targets = one_hot_targets(labels, logits.shape[-1])
  weights = example_weights(targets, batch_mask)
  total = jnp.sum(cross_entropy(logits, smooth(targets, label_smoothing)) * weights)
  return total / (jnp.sum(weights) + 1e-8)


def top_k_correct(logits: jnp.ndarray, targets: jnp.ndarray, k: int) -> jnp.ndarray:
  """``(B,)`` float32: 1 where the target's argmax is among the ``k`` largest logits."""
  k = min(k, logits.shape[-1])
  _, top = jax.lax.top_k(logits, k)
  return jnp.any(top == jnp.argmax(targets, axis=-1)[:, None], axis=-1).astype(jnp.float32)


class ClassifierNet(nn.Module):
  """The Scenic call convention (``apply(variables, x, train=..., debug=...)``) around a classifier, sharing
  its scope: the variables are the classifier's own (``backbone``, ``norm``, ``output_projection``)."""
  classifier: nn.Module

  def setup(self) -> None:
    nn.share_scope(self, self.classifier)

  def __call__(self, inputs: jnp.ndarray, train: bool = False, debug: bool = False) -> jnp.ndarray:
    """``(B, K)`` logits; ``debug`` is part of Scenic's convention and changes nothing here."""
    del debug
    return self.classifier(inputs, train=train)


@registry.register_model("crossformer_classification")
class ClassificationModel(BaseModel):
  """Scenic-style image classifier around the backbone registry's CrossFormer classifier.

  ``config.model`` holds ``backbone`` (``name``: a ``backbones.list_models()`` name; ``overrides``;
  ``drop_path_rate``: None = the variant's own, the official recipe's value; ``lda_mode``, ``remat``) and
  ``dtype``; the top-level Scenic fields ``label_smoothing`` and ``l2_decay_factor`` shape the loss.
  ``dataset_meta_data`` gives ``num_classes`` (and ``class_names``). ``flax_model(images, train)`` returns
  the ``(B, K)`` logits (Scenic's classification trainers expect a bare array).
  """

  task = "classification"

  @classmethod
  def num_classes_from_params(cls, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> int:
    """Classes of the classifier head (``output_projection/kernel``, last axis)."""
    del config
    shapes = param_shapes(params, "output_projection/kernel")
    if not shapes:
      raise ValueError("the classification checkpoint has no output_projection (classifier head) kernel")
    return int(shapes[0][-1])

  @classmethod
  def convert_official(cls, state_dict: Mapping[str, Any], expected: Mapping[str, Any]) -> Tuple[Any, Any]:
    """An official ImageNet classifier state dict (``{"model": sd}`` as released, or ``sd``) -> our
    variables, with the backbone package's key mapping (``head`` -> ``output_projection``, the trunk under
    ``backbone``); the DPB buffers are dropped. Returns ``(variables, heads.official.ConversionReport)``."""
    from backbones.crossformer import convert  # pylint: disable=import-outside-toplevel
    flat_expected = {p: tree.shape_of(v) for p, v in tree.flatten(expected["params"], sep=None).items()}
    report, params = official.ConversionReport(), {}
    for key, value in sorted(convert.unwrap_state_dict(state_dict).items()):
      if key.endswith(convert.BUFFER_SUFFIXES):
        report.dropped.append(key)
        continue
      path, leaf = convert.flax_path(key)
      if path[0] not in ("norm", "output_projection"):
        path = ("backbone",) + path
      try:
        name, converted = convert.convert_leaf(leaf, value)
      except KeyError:
        report.unexpected.append(key)
        continue
      full = path + (name,)
      if full not in flat_expected:
        report.unexpected.append(key)
      elif tuple(converted.shape) != flat_expected[full]:
        report.mismatched.append(f"{key} {tuple(value.shape)} (model params/{'/'.join(full)} "
                                 f"{flat_expected[full]})")
      else:
        params[full] = np.asarray(converted, np.float32)
        report.used.append(key)
    report.missing = ["params/" + "/".join(p) for p in sorted(flat_expected) if p not in params
                      and not any(f"params/{'/'.join(p)} " in m for m in report.mismatched)]
    return {"params": tree.unflatten(params, sep=None)}, report

  def export_fn(self) -> Callable[[Any, jnp.ndarray], Dict[str, jnp.ndarray]]:
    """``f(variables, images) -> {"logits": (B, K) float32}``."""
    net = self.flax_model
    return lambda variables, images: {"logits": net.apply(variables, images, train=False).astype(jnp.float32)}

  @property
  def model_config(self) -> ml_collections.ConfigDict:
    if "model" not in self.config:
      raise ValueError("the classification config needs a 'model' field (see default_flax_model_config)")
    return self.config.model

  def build_flax_model(self) -> Any:
    import backbones  # pylint: disable=import-outside-toplevel
    cfg = self.model_config.backbone
    overrides = cfg.get("overrides") or {}
    overrides = overrides.to_dict() if isinstance(overrides, ml_collections.ConfigDict) else dict(overrides)
    if cfg.get("drop_path_rate") is not None:
      overrides["drop_path_rate"] = float(cfg.drop_path_rate)
    for key in ("lda_mode", "remat"):
      if cfg.get(key) is not None:
        overrides[key] = cfg.get(key)
    dtype = jnp.dtype(self.model_config.get("dtype", "float32"))
    return ClassifierNet(backbones.create_model(cfg.name, features_only=False, num_classes=self.num_classes,
                                                dtype=dtype, **overrides))

  def default_flax_model_config(self) -> ml_collections.ConfigDict:
    """A tiny CrossFormer classifier config (the structure of the real recipes, small widths)."""
    return ml_collections.ConfigDict(dict(
        model=dict(
            backbone=dict(name="crossformer_s", overrides=dict(embed_dim=16, depths=(1, 1, 1, 1),
                                                               num_heads=(1, 1, 2, 2)),
                          drop_path_rate=0.0, lda_mode="v1", remat=False),
            dtype="float32",
        ),
        l2_decay_factor=None,
        label_smoothing=None,
    ))

  def _targets(self, logits: jnp.ndarray, batch: Batch) -> jnp.ndarray:
    labels = batch["label"]
    if self.dataset_meta_data.get("target_is_onehot", False) and jnp.ndim(labels) < 2:
      raise ValueError("dataset_meta_data['target_is_onehot'] is set but the batch labels are integers")
    return one_hot_targets(labels, logits.shape[-1])

  def loss_function(self, logits: jnp.ndarray, batch: Batch, model_params: Optional[Any] = None) -> jnp.ndarray:
    """Scenic's classification loss (module docstring) + its optional L2 term."""
    loss = classification_loss(logits, self._targets(logits, batch), batch.get("batch_mask"),
                               self.config.get("label_smoothing"))
    return loss + self.l2_regularization(model_params)

  def get_metrics_fn_jit(self, split: Optional[str] = None) -> MetricFn:
    """``fn(logits, batch) -> {"accuracy", "top_5_accuracy", "loss": (sum, number of examples)}`` (Scenic's
    names and normalisers; the same in every split)."""
    del split

    def metrics_fn(logits: jnp.ndarray, batch: Batch) -> Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]:
      targets = self._targets(logits, batch)
      weights = example_weights(targets, batch.get("batch_mask"))
      count = jnp.sum(weights)
      correct = (jnp.argmax(logits, axis=-1) == jnp.argmax(targets, axis=-1)).astype(jnp.float32)
      return {
          "accuracy": (jnp.sum(correct * weights), count),
          f"top_{TOP_K}_accuracy": (jnp.sum(top_k_correct(logits, targets, TOP_K) * weights), count),
          "loss": (jnp.sum(cross_entropy(logits, targets) * weights), count),
      }

    return metrics_fn
