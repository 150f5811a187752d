"""Semantic segmentation: the Flax network (backbone, optional neck, decode and auxiliary heads) and its
Scenic-style model wrapper (loss, metrics, confusion-matrix based mIoU).

mmseg recipes expressed in ``config.model`` (see ``default_flax_model_config`` for a tiny complete config):

* Semantic FPN: ``neck=dict(out_channels=256, num_outs=4)``,
  ``decode_head=dict(type="semantic_fpn", channels=128, norm="batch", dropout=0.1)``, ``auxiliary_head=None``.
* UPerNet: ``neck=None``, ``decode_head=dict(type="upernet", channels=512, pool_scales=(1, 2, 3, 6), ...)``,
  ``auxiliary_head=dict(channels=256, in_index=2, num_convs=1, loss_weight=0.4, ...)``.
"""

from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heads import valid_region
from heads.fpn import FPN
from heads.layers import Dtype, feature_list, resize_bilinear
from heads.segmentation import FCNHead, FPNHead, UPerHead
from projects import registry
from projects.common.base_model import Batch, BaseModel, MetricFn, param_shapes

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
  def __call__(self, inputs: jnp.ndarray, train: bool = False, debug: bool = False,
               image_size: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
    """Returns ``{"logits": (B, H, W, K) float32}``, plus ``"aux_logits"`` when training with an aux head.

    ``debug`` is part of the Scenic model-call convention; this network has no debug-only behaviour.
    ``image_size`` (B, 2) int: canvas inference (``canvas_logits``).
    """
    del debug
    if image_size is not None:
      return {"logits": self.canvas_logits(inputs, image_size)}
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


  def canvas_logits(self, inputs: jnp.ndarray, image_size: jnp.ndarray) -> jnp.ndarray:
    """Inference logits (B, H, W, K) float32 of images of different sizes in one padded canvas ``inputs``.

    Example i is the image ``inputs[i, :h, :w]`` with ``(h, w) = image_size[i]`` (a size the backbone takes
    as is); its logits in ``[:h, :w]`` are those of the image alone (to float rounding) and zero elsewhere:
    the backbone (``image_size``), the neck and the decode head (``valid_sizes``, ``heads.valid_region``)
    see only each example's valid region, and the final bilinear resize goes from the head's valid size to
    ``(h, w)``. One program then serves every image size the canvas holds. Evaluation only (no aux head).
    """
    canvas = inputs.shape[1:3]
    image_size = jnp.asarray(image_size, jnp.int32).reshape(inputs.shape[0], 2)
    features = self.backbone(inputs.astype(self.dtype), train=False, image_size=image_size)
    sizes = valid_region.level_sizes(image_size, canvas, feature_list(features))
    if self.neck is not None:
      features = self.neck(features, train=False, valid_sizes=sizes)
      sizes = self.neck.output_sizes(sizes)
    logits = self.decode_head(features, train=False, valid_sizes=sizes).astype(jnp.float32)
    (logit_valid,) = valid_region.level_sizes(image_size, canvas, [logits])
    logits = valid_region.resize_bilinear_valid(logits, logit_valid, image_size, canvas)
    return valid_region.zero_outside(logits, image_size)


def split_outputs(outputs: Any) -> Tuple[jnp.ndarray, Optional[jnp.ndarray]]:
  """``(logits, aux_logits or None)`` of a network output: the ``SegmentationNet`` dict or a bare logits
  array (what Scenic's segmentation models return)."""
  if isinstance(outputs, Mapping):
    if "logits" not in outputs:
      raise ValueError(f"segmentation outputs need 'logits' (got keys {sorted(outputs)})")
    return outputs["logits"], outputs.get("aux_logits")
  return outputs, None


def example_weights(labels: jnp.ndarray, batch_mask: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """(B, H, W) float32 weights of ``batch_mask``: per-example (B,) (our pipelines: filler examples 0) or
  per-pixel (B, H, W) (Scenic's segmentation batches: padding and void pixels 0); all ones without one."""
  if batch_mask is None:
    return jnp.ones(labels.shape, jnp.float32)
  batch_mask = jnp.asarray(batch_mask).astype(jnp.float32)
  if batch_mask.shape == labels.shape:
    return batch_mask
  if batch_mask.shape == labels.shape[:1]:
    return jnp.broadcast_to(batch_mask[:, None, None], labels.shape)
  raise ValueError(f"batch_mask must be per example {labels.shape[:1]} or per pixel {labels.shape}, "
                   f"got {batch_mask.shape}")


def pixel_weights(labels: jnp.ndarray, batch_mask: Optional[jnp.ndarray] = None, ignore_label: int = -1,
                  num_classes: Optional[int] = None) -> jnp.ndarray:
  """(B, H, W) float32 weights: ``batch_mask`` (per example or per pixel) times 1 for labelled pixels.

  A pixel is unlabelled when its label equals ``ignore_label`` (e.g. -1 or 255), is negative, or is
  ``>= num_classes`` (when given): such labels never index the logits, so they can never give NaN.
  """
  valid = (labels >= 0) & (labels != ignore_label)
  if num_classes is not None:
    valid &= labels < num_classes
  return example_weights(labels, batch_mask) * valid.astype(jnp.float32)


def pixel_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray, label_smoothing: Optional[float] = None,
                        label_weights: Optional[Any] = None) -> jnp.ndarray:
  """(B, H, W) softmax cross-entropy per pixel against Scenic's targets: the one-hot label, smoothed to
  ``onehot * (1 - ls) + ls / K`` with ``label_smoothing``, times ``label_weights`` (K,) per class.

  Unlabelled pixels (labels outside ``[0, K)``) give finite values that callers weight by 0.
  """
  num_classes = logits.shape[-1]
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  safe_labels = jnp.clip(labels, 0, num_classes - 1)
  picked = jnp.take_along_axis(log_probs, safe_labels[..., None], axis=-1)[..., 0]
  if label_weights is not None:
    label_weights = jnp.asarray(label_weights, jnp.float32)
    picked = picked * label_weights[safe_labels]
  if not label_smoothing:
    return -picked
  weighted = log_probs if label_weights is None else log_probs * label_weights
  return -((1.0 - label_smoothing) * picked + label_smoothing / num_classes * jnp.sum(weighted, axis=-1))


def segmentation_loss(logits: jnp.ndarray, labels: jnp.ndarray, batch_mask: Optional[jnp.ndarray] = None,
                      avg_non_ignore: bool = True, ignore_label: int = -1,
                      label_smoothing: Optional[float] = None, label_weights: Optional[Any] = None) -> jnp.ndarray:
  """Mean pixel cross-entropy of ``logits`` (B, H, W, K) against ``labels`` (B, H, W).

  Scenic's ``weighted_softmax_cross_entropy``: ``sum(ce * w) / (sum(w) + 1e-8)`` with ``w`` = ``batch_mask``
  (per example or per pixel) times the labelled-pixel mask (``pixel_weights``). Without ``avg_non_ignore``
  the denominator counts every pixel of ``batch_mask``, unlabelled ones contributing 0 (mmseg 0.x
  ``CrossEntropyLoss``).
  """
  weights = pixel_weights(labels, batch_mask, ignore_label, logits.shape[-1])
  total = jnp.sum(pixel_cross_entropy(logits, labels, label_smoothing, label_weights) * weights)
  count = jnp.sum(weights) if avg_non_ignore else jnp.sum(example_weights(labels, batch_mask))
  return total / (count + 1e-8)


def confusion_matrix(logits: jnp.ndarray, labels: jnp.ndarray, num_classes: int,
                     batch_mask: Optional[jnp.ndarray] = None, ignore_label: int = -1) -> jnp.ndarray:
  """(K, K) int32 pixel counts, rows = ground truth, columns = argmax prediction; unlabelled pixels and
  pixels with ``batch_mask`` 0 excluded."""
  valid = pixel_weights(labels, batch_mask, ignore_label, num_classes) > 0
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


@registry.register_model("crossformer_segmentation")
class SegmentationModel(BaseModel):
  """Scenic-style semantic segmentation model around ``SegmentationNet``.

  Scenic's ``SegmentationModel`` contract (registered as ``crossformer_segmentation`` in ``projects.registry``):
  ``loss_function(outputs, batch, model_params)``, ``get_metrics_fn`` (pmap, summed over ``"batch"``) /
  ``get_metrics_fn_jit``, ``get_global_metrics_fn``, ``get_label_weights``. ``outputs`` may be the network's
  dict (``logits`` and, training with an auxiliary head, ``aux_logits``) or a bare logits array.

  ``config`` is a job config whose ``model`` field holds ``backbone``, ``neck``, ``decode_head``,
  ``auxiliary_head``, ``dtype`` (and optionally ``norm_axis_name``, ``avg_non_ignore``, ``ignore_label``); the
  top-level Scenic fields ``l2_decay_factor``, ``label_smoothing`` and ``class_rebalancing_factor`` (with
  ``dataset_meta_data["class_proportions"]``) shape the loss. ``dataset_meta_data`` must give ``num_classes``
  (and ``class_names`` for the per-class metrics). ``backbone`` replaces the backbone that
  ``config.model.backbone`` would build (any module returning the stage dict).
  """

  task = "segmentation"

  @classmethod
  def num_classes_from_params(cls, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> int:
    """Classes of the decode head's classifier (``decode_head/.../conv_seg/kernel``, last axis)."""
    del config
    shapes = param_shapes(params, "conv_seg/kernel", "decode_head/")
    if not shapes:
      raise ValueError("the segmentation checkpoint has no decode_head/conv_seg classifier")
    return int(shapes[0][-1])

  def export_fn(self) -> Callable[[Any, jnp.ndarray], Dict[str, jnp.ndarray]]:
    """``f(variables, images) -> {"logits": (B, H, W, K) float32}`` at the input size."""
    net = self.flax_model
    return lambda variables, images: {"logits": net.apply(variables, images, train=False)["logits"]}

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
                          drop_path_rate=0.0, lda_mode="v1", remat=False),
            neck=None,
            decode_head=dict(type="upernet", channels=16, pool_scales=(1, 2, 3, 6), norm="batch", dropout=0.1),
            auxiliary_head=dict(channels=16, in_index=2, num_convs=1, concat_input=False, norm="batch",
                                dropout=0.1, loss_weight=0.4),
            dtype="float32",
            norm_axis_name=None,
            avg_non_ignore=True,
            ignore_label=-1,
        ),
        l2_decay_factor=None,
        label_smoothing=None,
        class_rebalancing_factor=0.0,
    ))

  @property
  def ignore_label(self) -> int:
    """The label of unlabelled pixels (``config.model.ignore_label``, default -1; 255 works too)."""
    return int(self.model_config.get("ignore_label", -1))

  def get_label_weights(self) -> Optional[np.ndarray]:
    """Scenic's class rebalancing: ``None`` unless ``config.class_rebalancing_factor`` w > 0, else the (K,)
    weights ``1 / (w * p + 1 - w)`` (``p`` = ``dataset_meta_data["class_proportions"]`` normalised, at least
    1e-8), rescaled to sum to K."""
    factor = self.config.get("class_rebalancing_factor")
    if not factor:
      return None
    if not 0.0 <= factor <= 1.0:
      raise ValueError(f"config.class_rebalancing_factor must be in [0, 1], got {factor}")
    if "class_proportions" not in self.dataset_meta_data:
      raise ValueError("config.class_rebalancing_factor is set but dataset_meta_data has no "
                       "'class_proportions'")
    proportions = np.asarray(self.dataset_meta_data["class_proportions"], np.float64)
    proportions = np.maximum(proportions / np.sum(proportions), 1e-8)
    weights = 1.0 / (factor * proportions + (1.0 - factor))
    return (weights / np.sum(weights) * len(weights)).astype(np.float32)

  def loss_function(self, outputs: Any, batch: Batch, model_params: Optional[Any] = None) -> jnp.ndarray:
    """The training loss on ``outputs`` (the network's dict or a bare logits array) and a batch with
    ``label`` and optionally ``batch_mask`` (per example or per pixel).

    Decode-head cross-entropy (``segmentation_loss`` with ``config.label_smoothing`` and Scenic's class
    rebalancing) + ``auxiliary_head.loss_weight`` x the same on ``aux_logits`` (training only) + Scenic's
    optional L2 term. On a logits array with Scenic's defaults this is Scenic's
    ``SegmentationModel.loss_function``.
    """
    logits, aux_logits = split_outputs(outputs)
    kwargs = dict(batch_mask=batch.get("batch_mask"), avg_non_ignore=self.model_config.get("avg_non_ignore", True),
                  ignore_label=self.ignore_label, label_smoothing=self.config.get("label_smoothing"),
                  label_weights=self.get_label_weights())
    loss = segmentation_loss(logits, batch["label"], **kwargs)
    if aux_logits is not None:
      aux_cfg = self.model_config.get("auxiliary_head")
      if aux_cfg is None:
        raise ValueError("outputs carry 'aux_logits' but config.model.auxiliary_head is None")
      loss = loss + aux_cfg.get("loss_weight", 0.4) * segmentation_loss(aux_logits, batch["label"], **kwargs)
    return loss + self.l2_regularization(model_params)

  def get_metrics_fn_jit(self, split: Optional[str] = None) -> MetricFn:
    """``fn(outputs, batch) -> {name: (value, normalizer)}`` with Scenic's names and meanings, the same for
    every split (so train and eval ``loss`` mean the same thing):

    * ``accuracy``: (correct labelled pixels, labelled pixels);
    * ``loss``: (mean cross-entropy of the decode head over the labelled pixels, 1) -- no smoothing,
      rebalancing, auxiliary or L2 term, as Scenic's metric; summed over devices under pmap it is
      (sum of the per-device means, number of devices);
    * ``aux_loss``: the same for the auxiliary head, when its logits are present (training).
    """
    del split
    ignore_label = self.ignore_label

    def metrics_fn(outputs: Any, batch: Batch) -> Dict[str, Any]:
      logits, aux_logits = split_outputs(outputs)
      labels = batch["label"]
      weights = pixel_weights(labels, batch.get("batch_mask"), ignore_label, logits.shape[-1])
      count = jnp.sum(weights)
      one = jnp.ones((), jnp.float32)
      correct = (jnp.argmax(logits, axis=-1) == labels).astype(jnp.float32)
      metrics = {
          "accuracy": (jnp.sum(correct * weights), count),
          "loss": (jnp.sum(pixel_cross_entropy(logits, labels) * weights) / (count + 1e-8), one),
      }
      if aux_logits is not None:
        metrics["aux_loss"] = (jnp.sum(pixel_cross_entropy(aux_logits, labels) * weights) / (count + 1e-8), one)
      return metrics

    return metrics_fn

  def confusion_matrix(self, outputs: Any, batch: Batch) -> jnp.ndarray:
    """Jittable per-batch (K, K) int32 confusion matrix of the decode logits (sum it over batches)."""
    logits, _ = split_outputs(outputs)
    return confusion_matrix(logits, batch["label"], self.num_classes, batch.get("batch_mask"), self.ignore_label)

  def global_metrics(self, confusion: Any) -> Dict[str, Any]:
    """mIoU / mAcc / aAcc and per-class IoU/Acc named by ``dataset_meta_data["class_names"]``."""
    return segmentation_metrics_from_confusion(confusion, self.dataset_meta_data.get("class_names"))

  def get_global_metrics_fn(self) -> Callable[[List[Any], Mapping[str, Any]], Dict[str, float]]:
    """Scenic's ``global_metrics_fn(all_confusion_mats, dataset_metadata)``: the list of per-batch confusion
    matrices ((K, K) or Scenic's (n, K, K)) is summed; returns Scenic's ``mean_iou`` and
    ``iou_per_class/NN_name`` plus mmseg's ``mIoU``, ``mAcc``, ``aAcc`` (classes absent from labels and
    predictions are left out of the means in both)."""

    def global_metrics_fn(all_confusion_mats: List[Any], dataset_metadata: Mapping[str, Any]) -> Dict[str, float]:
      if not len(all_confusion_mats):
        raise ValueError("global_metrics_fn needs at least one confusion matrix")
      confusion = np.sum([np.asarray(c, np.float64).reshape((-1,) + np.shape(c)[-2:]).sum(0)
                          for c in all_confusion_mats], axis=0)
      names = dataset_metadata.get("class_names")
      results = segmentation_metrics_from_confusion(confusion, names)
      metrics = {"mean_iou": float(np.nan_to_num(results["mIoU"])), "mIoU": results["mIoU"],
                 "mAcc": results["mAcc"], "aAcc": results["aAcc"]}
      for index in range(confusion.shape[0]):
        name = names[index] if names is not None else f"class_{index}"
        tag = f"iou_per_class/{index:02d}" + (f"_{names[index]}" if names is not None else "")
        metrics[tag] = float(np.nan_to_num(results[f"IoU/{name}"]))
      return metrics

    return global_metrics_fn
