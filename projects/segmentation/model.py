"""Semantic segmentation: the Flax network (backbone, optional neck, decode and auxiliary heads) and its
Scenic-style model wrapper (loss, metrics, confusion-matrix based mIoU).

mmseg recipes expressed in ``config.model`` (see ``default_flax_model_config`` for a tiny complete config):

* Semantic FPN: ``neck=dict(out_channels=256, num_outs=4)``,
  ``decode_head=dict(type="semantic_fpn", channels=128, norm="batch", dropout=0.1)``, ``auxiliary_head=None``.
* UPerNet: ``neck=None``, ``decode_head=dict(type="upernet", channels=512, pool_scales=(1, 2, 3, 6), ...)``,
  ``auxiliary_head=dict(channels=256, in_index=2, num_convs=1, loss_weight=0.4, ...)``.
"""

from typing import Any, Dict, Mapping, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heads.fpn import FPN
from heads.layers import Dtype, resize_bilinear
from heads.segmentation import FCNHead, FPNHead, UPerHead
from projects.common.base_model import Batch, BaseModel, MetricFn

DECODE_HEADS = ("semantic_fpn", "upernet")


class SegmentationNet(nn.Module):
  """Encoder-decoder segmentation network (mmseg ``EncoderDecoder``).

  The backbone maps NHWC images to a feature dict / sequence, the optional neck refines it, and both heads read
  the (neck) features. Logits are cast to float32 and bilinearly upsampled (``align_corners=False``) to the
  input size.

  Attributes:
    backbone: module called as ``backbone(images, train=...)``; it becomes ``params["backbone"]``.
    decode_head: module called as ``decode_head(features, train=...)`` returning logits.
    neck: optional module between backbone and heads.
    auxiliary_head: optional head whose logits are returned (as ``aux_logits``) in training only.
    dtype: compute dtype of the inputs (sub-modules carry their own compute dtype).
  """
  backbone: nn.Module
  decode_head: nn.Module
  neck: Optional[nn.Module] = None
  auxiliary_head: Optional[nn.Module] = None
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, inputs: jnp.ndarray, train: bool = False, debug: bool = False) -> Dict[str, jnp.ndarray]:
    """Returns ``{"logits": (B, H, W, K) float32}``, plus ``"aux_logits"`` when training with an aux head.

    ``debug`` is part of the Scenic model-call convention; this network has no debug-only behaviour.
    """
    del debug
    size = inputs.shape[1:3]
    features = self.backbone(inputs.astype(self.dtype), train=train)
    if self.neck is not None:
      features = self.neck(features, train=train)
    outputs = {"logits": resize_bilinear(self.decode_head(features, train=train).astype(jnp.float32), size)}
    # The auxiliary head also runs at init so that its parameters exist whatever ``train`` init is called with.
    if self.auxiliary_head is not None and (train or self.is_initializing()):
      aux_logits = self.auxiliary_head(features, train=train).astype(jnp.float32)
      if train:
        outputs["aux_logits"] = resize_bilinear(aux_logits, size)
    return outputs


def pixel_weights(labels: jnp.ndarray, batch_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """(B, H, W) float32 weights: 1 for labelled pixels (label >= 0) of real examples, else 0."""
  weights = (labels >= 0).astype(jnp.float32)
  if batch_mask is not None:
    weights = weights * batch_mask.astype(jnp.float32)[:, None, None]
  return weights


def pixel_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """(B, H, W) softmax cross-entropy per pixel; ignored pixels (label < 0) give finite, meaningless values."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe_labels = jnp.maximum(labels, 0)
  return -jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]


def segmentation_loss(logits: jnp.ndarray, labels: jnp.ndarray, batch_mask: Optional[jnp.ndarray] = None,
                      avg_non_ignore: bool = True) -> jnp.ndarray:
  """Mean pixel cross-entropy of ``logits`` (B, H, W, K) against ``labels`` (B, H, W), -1 = ignore.

  With ``avg_non_ignore`` the mean is over labelled pixels of real examples (``batch_mask`` > 0); without it,
  over all pixels of real examples, ignored ones counting as 0 (mmseg 0.x ``CrossEntropyLoss`` default).
  """
  weights = pixel_weights(labels, batch_mask)
  total = jnp.sum(pixel_cross_entropy(logits, labels) * weights)
  if avg_non_ignore:
    count = jnp.sum(weights)
  else:
    example_weights = jnp.ones(labels.shape[0]) if batch_mask is None else batch_mask.astype(jnp.float32)
    count = jnp.sum(example_weights) * labels.shape[1] * labels.shape[2]
  return total / jnp.maximum(count, 1.0)


def confusion_matrix(logits: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
                     batch_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """(K, K) int32 pixel counts, rows = ground truth, columns = argmax prediction; ignored pixels excluded."""
  valid = pixel_weights(labels, batch_mask) > 0
  predictions = jnp.argmax(logits, axis=-1)
  index = jnp.where(valid, labels * num_classes + predictions, 0)
  counts = jax.ops.segment_sum(valid.astype(jnp.int32).ravel(), index.ravel(), num_segments=num_classes ** 2)
  return counts.reshape(num_classes, num_classes)


def segmentation_metrics_from_confusion(confusion: Any,
                                        class_names: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """mmseg's ``mIoU``, ``mAcc`` and ``aAcc`` (fractions, not percent) from a summed confusion matrix.

  A class absent from both ground truth and predictions has IoU NaN; a class absent from the ground truth has
  Acc NaN; NaNs are excluded from the means (``np.nanmean``), as in mmseg. Per-class values are returned as
  ``IoU/<name>`` and ``Acc/<name>`` (names from ``class_names``, else ``class_<i>``).
  """
  confusion = np.asarray(confusion, dtype=np.float64)
  if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
    raise ValueError(f"confusion matrix must be square (K, K), got shape {confusion.shape}")
  num_classes = confusion.shape[0]
  if class_names is None:
    class_names = [f"class_{i}" for i in range(num_classes)]
  if len(class_names) != num_classes:
    raise ValueError(f"{len(class_names)} class names for a {num_classes}-class confusion matrix")
  intersect = np.diag(confusion)
  label_area = confusion.sum(axis=1)
  union = label_area + confusion.sum(axis=0) - intersect
  with np.errstate(divide="ignore", invalid="ignore"):
    iou = intersect / union
    acc = intersect / label_area
  with np.errstate(invalid="ignore"):
    a_acc = intersect.sum() / label_area.sum() if label_area.sum() > 0 else float("nan")
  results: Dict[str, Any] = {
      "mIoU": float(np.nanmean(iou)) if np.any(~np.isnan(iou)) else float("nan"),
      "mAcc": float(np.nanmean(acc)) if np.any(~np.isnan(acc)) else float("nan"),
      "aAcc": float(a_acc),
  }
  for name, class_iou, class_acc in zip(class_names, iou, acc):
    results[f"IoU/{name}"] = float(class_iou)
    results[f"Acc/{name}"] = float(class_acc)
  return results


class SegmentationModel(BaseModel):
  """Scenic-style semantic segmentation model around ``SegmentationNet``.

  ``config`` is a job config whose ``model`` field holds ``backbone``, ``neck``, ``decode_head``,
  ``auxiliary_head``, ``dtype`` (and optionally ``norm_axis_name``, ``avg_non_ignore``); a top-level
  ``l2_decay_factor`` adds ``0.5 * factor * ||params||^2`` to the loss. ``dataset_meta_data`` must give
  ``num_classes`` (and ``class_names`` for the per-class metrics). ``backbone`` replaces the backbone that
  ``config.model.backbone`` would build (any module returning the stage dict).
  """

  @property
  def model_config(self) -> ml_collections.ConfigDict:
    if "model" not in self.config:
      raise ValueError("the segmentation config needs a 'model' field (see default_flax_model_config)")
    return self.config.model

  def build_flax_model(self) -> SegmentationNet:
    cfg = self.model_config
    dtype = jnp.dtype(cfg.get("dtype", "float32"))
    axis_name = cfg.get("norm_axis_name")
    backbone = self.build_backbone(dtype)

    neck = None
    if cfg.get("neck") is not None:
      neck = FPN(out_channels=cfg.neck.out_channels, num_outs=cfg.neck.get("num_outs", 4),
                 start_level=cfg.neck.get("start_level", 0), norm=cfg.neck.get("norm", "none"),
                 add_extra_convs=cfg.neck.get("add_extra_convs", False),
                 relu_before_extra_convs=cfg.neck.get("relu_before_extra_convs", False),
                 no_norm_on_lateral=cfg.neck.get("no_norm_on_lateral", False),
                 norm_axis_name=axis_name, dtype=dtype)

    head_cfg = cfg.decode_head
    in_index = head_cfg.get("in_index")
    common = dict(num_classes=self.num_classes, channels=head_cfg.channels, dropout=head_cfg.get("dropout", 0.1),
                  in_index=None if in_index is None else tuple(in_index),
                  norm=head_cfg.get("norm", "batch"), norm_axis_name=axis_name, dtype=dtype)
    if head_cfg.type == "semantic_fpn":
      decode_head = FPNHead(feature_strides=tuple(head_cfg.get("feature_strides", (4, 8, 16, 32))), **common)
    elif head_cfg.type == "upernet":
      decode_head = UPerHead(pool_scales=tuple(head_cfg.get("pool_scales", (1, 2, 3, 6))), **common)
    else:
      raise ValueError(f"unknown decode_head.type {head_cfg.type!r}; expected one of {DECODE_HEADS}")

    auxiliary_head = None
    aux_cfg = cfg.get("auxiliary_head")
    if aux_cfg is not None:
      auxiliary_head = FCNHead(num_classes=self.num_classes, channels=aux_cfg.channels,
                               in_index=aux_cfg.get("in_index", 2), num_convs=aux_cfg.get("num_convs", 1),
                               concat_input=aux_cfg.get("concat_input", False),
                               dropout=aux_cfg.get("dropout", 0.1), norm=aux_cfg.get("norm", "batch"),
                               norm_axis_name=axis_name, dtype=dtype)
    return SegmentationNet(backbone=backbone, neck=neck, decode_head=decode_head,
                           auxiliary_head=auxiliary_head, dtype=dtype)

  def default_flax_model_config(self) -> ml_collections.ConfigDict:
    """A tiny UPerNet + FCN-auxiliary CrossFormer config (the structure of the real recipes, small widths)."""
    return ml_collections.ConfigDict(dict(
        model=dict(
            backbone=dict(name="crossformer_s", overrides=dict(embed_dim=16, depths=(1, 1, 1, 1),
                                                               num_heads=(1, 1, 2, 2)),
                          drop_path_rate=0.0, lda_mode="v1", checkpoint=None, remat=False),
            neck=None,
            decode_head=dict(type="upernet", channels=16, pool_scales=(1, 2, 3, 6), norm="batch", dropout=0.1),
            auxiliary_head=dict(channels=16, in_index=2, num_convs=1, concat_input=False, norm="batch",
                                dropout=0.1, loss_weight=0.4),
            dtype="float32",
            norm_axis_name=None,
            avg_non_ignore=True,
        ),
        l2_decay_factor=None,
    ))

  def loss_function(self, outputs: Mapping[str, jnp.ndarray], batch: Batch,
                    model_params: Optional[Any] = None) -> jnp.ndarray:
    """Decode-head pixel cross-entropy + ``loss_weight`` x auxiliary cross-entropy (+ optional L2)."""
    avg_non_ignore = self.model_config.get("avg_non_ignore", True)
    batch_mask = batch.get("batch_mask")
    loss = segmentation_loss(outputs["logits"], batch["label"], batch_mask, avg_non_ignore)
    if "aux_logits" in outputs:
      aux_cfg = self.model_config.get("auxiliary_head")
      if aux_cfg is None:
        raise ValueError("outputs carry 'aux_logits' but config.model.auxiliary_head is None")
      loss = loss + aux_cfg.get("loss_weight", 0.4) * segmentation_loss(
          outputs["aux_logits"], batch["label"], batch_mask, avg_non_ignore)
    return loss + self.l2_regularization(model_params)

  def get_metrics_fn(self, split: Optional[str] = None) -> MetricFn:
    """``fn(outputs, batch) -> {"loss": (sum, count), "pixel_accuracy": (sum, count)}`` over labelled pixels.

    ``loss`` is the decode-head cross-entropy (``aux_loss`` is added when aux logits are present). The
    same metrics serve every split.
    """
    del split

    def metrics_fn(outputs: Mapping[str, jnp.ndarray], batch: Batch) -> Dict[str, Any]:
      labels = batch["label"]
      weights = pixel_weights(labels, batch.get("batch_mask"))
      count = jnp.sum(weights)
      correct = (jnp.argmax(outputs["logits"], axis=-1) == labels).astype(jnp.float32)
      metrics = {
          "loss": (jnp.sum(pixel_cross_entropy(outputs["logits"], labels) * weights), count),
          "pixel_accuracy": (jnp.sum(correct * weights), count),
      }
      if "aux_logits" in outputs:
        metrics["aux_loss"] = (jnp.sum(pixel_cross_entropy(outputs["aux_logits"], labels) * weights), count)
      return metrics

    return metrics_fn

  def confusion_matrix(self, outputs: Mapping[str, jnp.ndarray], batch: Batch) -> jnp.ndarray:
    """Jittable per-batch (K, K) int32 confusion matrix of ``outputs["logits"]`` (sum it over batches)."""
    return confusion_matrix(outputs["logits"], batch["label"], self.num_classes, batch.get("batch_mask"))

  def global_metrics(self, confusion: Any) -> Dict[str, Any]:
    """mIoU / mAcc / aAcc and per-class IoU/Acc named by ``dataset_meta_data["class_names"]``."""
    return segmentation_metrics_from_confusion(confusion, self.dataset_meta_data.get("class_names"))
