"""RetinaNet with a CrossFormer backbone and an FPN neck (mmdet 2.x RetinaNet semantics), Scenic style.

``RetinaNet`` is the Flax network (sub-modules ``backbone``, ``neck``, ``bbox_head``); ``RetinaNetModel`` is the
``BaseModel`` wrapper with the training loss (MaxIoU assignment on padded ground truth inside ``jit``, sigmoid
focal loss + L1 on deltas, normalised by the number of positive anchors), metrics and ``predict``.

Network outputs (``RetinaNet.__call__``):
  ``cls_logits``: per level ``(B, H_l * W_l * A, C)`` logits; ``box_deltas``: per level ``(B, H_l * W_l * A, 4)``;
  ``anchors``: per level ``(H_l, W_l, A, 4)`` xyxy anchors in input pixels, shared by the batch. Logits, deltas
  and ``anchors[l].reshape(-1, 4)`` are aligned (location-major, then anchor).
"""

from typing import Any, Callable, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from heads.detection import losses
from heads.detection.anchors import AnchorGenerator, anchor_inside_flags, padded_image_shape
from heads.detection.assigner import MaxIoUAssigner
from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.retinanet_head import RetinaHead
from heads.detection.retinanet_postprocess import TestConfig, retinanet_detections
from heads.fpn import FPN
from projects import registry
from projects.common.base_model import param_shapes
from projects.detection.detector import Detector

Batch = Mapping[str, Any]
Metrics = Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]

# Backbone stages fed to the FPN: all four, as mmdet's RetinaNet (its FPN then starts at level 1).
BACKBONE_OUT_INDICES = (0, 1, 2, 3)


class RetinaNet(nn.Module):
  """Backbone -> FPN -> shared RetinaNet head, plus the anchors of the produced pyramid.

  Attributes:
    backbone: a module mapping NHWC images to ``{"stage_<n>": map}`` (or a fine-to-coarse sequence).
    neck: the FPN producing one map per anchor level.
    bbox_head: the ``RetinaHead``.
    anchor_generator: anchors for the neck's levels (``num_base_anchors`` must match the head's).
  """
  backbone: nn.Module
  neck: nn.Module
  bbox_head: nn.Module
  anchor_generator: AnchorGenerator

  def __call__(self, inputs: jnp.ndarray, train: bool = False, debug: bool = False) -> Dict[str, Any]:
    """Runs the detector on NHWC ``inputs``; see the module docstring for the outputs."""
    del debug  # Scenic's signature; nothing to report.
    features = self.backbone(inputs, train=train)
    pyramid = self.neck(features, train=train)
    if len(pyramid) != self.anchor_generator.num_levels:
      raise ValueError(f"the neck produced {len(pyramid)} levels but the anchor generator has "
                       f"{self.anchor_generator.num_levels} (strides {self.anchor_generator.strides})")
    cls_logits, box_deltas = self.bbox_head(pyramid, train=train)
    sizes = [tuple(p.shape[1:3]) for p in pyramid]
    num_anchors = self.anchor_generator.num_base_anchors
    anchors = tuple(a.reshape(h, w, num_anchors, 4)
                    for a, (h, w) in zip(self.anchor_generator.grid_anchors(sizes), sizes))
    return {"cls_logits": tuple(cls_logits), "box_deltas": tuple(box_deltas), "anchors": anchors}


@registry.register_model("crossformer_retinanet")
class RetinaNetModel(Detector):
  """Scenic-style RetinaNet model: network, loss, metrics and COCO-ready predictions.

  ``config.model`` keys (see ``default_flax_model_config`` for a complete tiny example; the values given here
  are the official RetinaNet-CrossFormer-S recipe):
    dtype: compute dtype of the network ("float32" or "bfloat16"); losses are computed in float32.
    backbone: ``name`` ("crossformer_s"), ``drop_path_rate`` (0.2), ``lda_mode`` ("v1"), ``remat`` (False),
      ``overrides`` (architecture overrides for ``create_model``); weights from ``config.init_from``.
    neck: ``out_channels`` (256), ``start_level`` (1), ``add_extra_convs`` ("on_input"), ``num_outs`` (5),
      ``relu_before_extra_convs`` (False).
    bbox_head: ``feat_channels`` (256), ``stacked_convs`` (4), ``prior_prob`` (0.01), ``norm`` ("none").
    anchor: ``strides`` (8..128), ``ratios`` (0.5, 1, 2), ``octave_base_scale`` (4), ``scales_per_octave`` (3).
    box_coder: ``target_means`` (0s), ``target_stds`` (1s).
    train_cfg: ``pos_iou_thr`` (0.5), ``neg_iou_thr`` (0.4), ``min_pos_iou`` (0), ``allowed_border`` (-1),
      ``pad_size_divisor`` (32: the per-image padding that defines mmdet's valid anchors).
    loss: ``focal_gamma`` (2), ``focal_alpha`` (0.25), ``cls_weight`` (1), ``box_loss`` ("l1" or
      "smooth_l1"), ``smooth_l1_beta`` (1/9 when used), ``box_weight`` (1).
    test_cfg: ``nms_pre`` (1000), ``score_thr`` (0.05), ``iou_threshold`` (0.5), ``max_per_img`` (100).
  ``config.l2_decay_factor`` (optional, Scenic's) adds ``0.5 * factor * ||params (ndim > 1)||^2`` to the loss.
  Registered as ``crossformer_retinanet`` in ``projects.registry``; ``get_metrics_fn`` (BaseModel) sums the
  metrics over Scenic's pmap axis, ``get_metrics_fn_jit`` serves jit trainers.
  ``dataset_meta_data["num_classes"]`` sets the number of foreground classes.
  """

  @classmethod
  def num_classes_from_params(cls, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> int:
    """Foreground classes of the classification branch (``retina_cls`` outputs / anchors per position)."""
    shapes = param_shapes(params, "retina_cls/kernel")
    if not shapes:
      raise ValueError("the RetinaNet checkpoint has no retina_cls classifier")
    anchor = config.model.anchor
    return int(shapes[0][-1]) // (len(anchor.ratios) * int(anchor.scales_per_octave))

  @property
  def anchor_generator(self) -> AnchorGenerator:
    """The anchor generator of ``config.model.anchor``."""
    a = self.config.model.anchor
    return AnchorGenerator(strides=tuple(a.strides), ratios=tuple(a.ratios),
                           octave_base_scale=a.octave_base_scale, scales_per_octave=a.scales_per_octave)

  @property
  def box_coder(self) -> DeltaXYWHBBoxCoder:
    """The box coder of ``config.model.box_coder``."""
    c = self.config.model.box_coder
    return DeltaXYWHBBoxCoder(target_means=tuple(c.target_means), target_stds=tuple(c.target_stds))

  @property
  def assigner(self) -> MaxIoUAssigner:
    """The anchor assigner of ``config.model.train_cfg``."""
    t = self.config.model.train_cfg
    return MaxIoUAssigner(pos_iou_thr=t.pos_iou_thr, neg_iou_thr=t.neg_iou_thr, min_pos_iou=t.min_pos_iou)

  @property
  def test_cfg(self) -> TestConfig:
    """Inference post-processing settings of ``config.model.test_cfg``."""
    return TestConfig(**self.config.model.test_cfg.to_dict())

  def build_flax_model(self) -> nn.Module:
    """Returns the ``RetinaNet`` network described by ``config.model``."""
    m = self.config.model
    dtype = jnp.dtype(m.dtype)
    backbone = self.build_backbone(dtype, BACKBONE_OUT_INDICES)
    anchor_generator = self.anchor_generator
    neck = FPN(out_channels=m.neck.out_channels, num_outs=m.neck.num_outs, start_level=m.neck.start_level,
               add_extra_convs=m.neck.add_extra_convs, relu_before_extra_convs=m.neck.relu_before_extra_convs,
               no_norm_on_lateral=m.neck.get("no_norm_on_lateral", False), norm=m.neck.get("norm", "none"),
               dtype=dtype)
    head = RetinaHead(num_classes=self.num_classes, num_anchors=anchor_generator.num_base_anchors,
                      feat_channels=m.bbox_head.feat_channels, stacked_convs=m.bbox_head.stacked_convs,
                      prior_prob=m.bbox_head.prior_prob, norm=m.bbox_head.norm, dtype=dtype)
    return RetinaNet(backbone=backbone, neck=neck, bbox_head=head, anchor_generator=anchor_generator)

  def default_flax_model_config(self) -> ml_collections.ConfigDict:
    """A tiny but complete RetinaNet config (CrossFormer-S layout at width 16, 32-channel FPN/head)."""
    return ml_collections.ConfigDict({
        "model": {
            "dtype": "float32",
            "backbone": {
                "name": "crossformer_s", "drop_path_rate": 0.0, "lda_mode": "v1", "remat": False,
                "overrides": {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)},
            },
            "neck": {"out_channels": 32, "start_level": 1, "add_extra_convs": "on_input", "num_outs": 5,
                     "relu_before_extra_convs": False},
            "bbox_head": {"feat_channels": 32, "stacked_convs": 2, "prior_prob": 0.01, "norm": "none"},
            "anchor": {"strides": (8, 16, 32, 64, 128), "ratios": (0.5, 1.0, 2.0), "octave_base_scale": 4.0,
                       "scales_per_octave": 3},
            "box_coder": {"target_means": (0.0, 0.0, 0.0, 0.0), "target_stds": (1.0, 1.0, 1.0, 1.0)},
            "train_cfg": {"pos_iou_thr": 0.5, "neg_iou_thr": 0.4, "min_pos_iou": 0.0, "allowed_border": -1,
                          "pad_size_divisor": 32},
            "loss": {"focal_gamma": 2.0, "focal_alpha": 0.25, "cls_weight": 1.0, "box_loss": "l1",
                     "smooth_l1_beta": 1.0 / 9.0, "box_weight": 1.0},
            "test_cfg": {"nms_pre": 1000, "score_thr": 0.05, "iou_threshold": 0.5, "max_per_img": 100},
        },
    })

  def anchor_targets(self, anchors: jnp.ndarray, anchor_mask: jnp.ndarray, gt_boxes: jnp.ndarray,
                     gt_labels: jnp.ndarray) -> Dict[str, jnp.ndarray]:
    """Training targets of one image (mmdet ``AnchorHead._get_targets_single`` with a pseudo sampler).

    Args:
      anchors: ``(N, 4)`` anchors of all levels.
      anchor_mask: ``(N,)`` bool, the anchors used for training (mmdet's ``inside_flags``).
      gt_boxes: ``(M, 4)`` padded ground truth, xyxy in input pixels.
      gt_labels: ``(M,)`` int classes, ``-1`` = padding.

    Returns:
      ``cls_targets (N, C)`` one-hot (zeros for background), ``cls_weights (N,)`` (1 for positives and
      negatives, 0 for ignored and unused anchors), ``box_targets (N, 4)`` encoded deltas, ``box_weights (N,)``
      (1 for positives), ``num_pos`` ().
    """
    result = self.assigner.assign(anchors, gt_boxes, gt_labels, anchor_mask)
    pos = (result.gt_inds > 0) & anchor_mask
    neg = (result.gt_inds == 0) & anchor_mask
    matched = gt_boxes[jnp.maximum(result.gt_inds - 1, 0)].astype(jnp.float32)
    # Non-positive anchors encode against themselves so that their (zero-weight) targets stay finite.
    box_targets = self.box_coder.encode(anchors, jnp.where(pos[:, None], matched, anchors))
    cls_targets = jax.nn.one_hot(jnp.where(pos, result.labels, -1), self.num_classes, dtype=jnp.float32)
    return {"cls_targets": cls_targets, "cls_weights": (pos | neg).astype(jnp.float32),
            "box_targets": box_targets, "box_weights": pos.astype(jnp.float32),
            "num_pos": pos.sum().astype(jnp.float32)}

  def _loss_terms(self, outputs: Mapping[str, Any], batch: Batch) -> Metrics:
    """Summed, weighted loss terms with their normaliser, as ``{name: (sum, count)}``."""
    m = self.config.model
    label = batch["label"]
    cls_logits = jnp.concatenate(outputs["cls_logits"], axis=1).astype(jnp.float32)
    box_deltas = jnp.concatenate(outputs["box_deltas"], axis=1).astype(jnp.float32)
    sizes = [tuple(a.shape[:2]) for a in outputs["anchors"]]
    anchors = jnp.concatenate([a.reshape(-1, 4) for a in outputs["anchors"]], axis=0).astype(jnp.float32)
    batch_size = cls_logits.shape[0]
    batch_mask = jnp.asarray(batch.get("batch_mask", jnp.ones((batch_size,))), jnp.float32)

    image_size = jnp.asarray(label["image_size"], jnp.int32)
    pad_shape = padded_image_shape(image_size, m.train_cfg.pad_size_divisor)
    valid = jnp.concatenate(self.anchor_generator.valid_flags(sizes, pad_shape), axis=-1)
    anchor_mask = anchor_inside_flags(anchors[None], valid, image_size, m.train_cfg.allowed_border)
    anchor_mask &= (batch_mask > 0)[:, None]
    gt_labels = jnp.where((batch_mask > 0)[:, None], jnp.asarray(label["labels"], jnp.int32), -1)
    targets = jax.vmap(self.anchor_targets, in_axes=(None, 0, 0, 0))(
        anchors, anchor_mask, jnp.asarray(label["boxes"], jnp.float32), gt_labels)
    targets = jax.lax.stop_gradient(targets)

    # mmdet: avg_factor = sum over images of max(num_pos, 1); filler examples count for nothing.
    avg_factor = (jnp.maximum(targets["num_pos"], 1.0) * batch_mask).sum()
    focal = losses.sigmoid_focal_loss(cls_logits, targets["cls_targets"], m.loss.focal_gamma, m.loss.focal_alpha)
    cls_sum = m.loss.cls_weight * losses.weighted_sum(focal, targets["cls_weights"])
    box = losses.box_regression_loss(box_deltas, targets["box_targets"], m.loss.box_loss, m.loss.smooth_l1_beta)
    box_sum = m.loss.box_weight * losses.weighted_sum(box, targets["box_weights"])
    return {
        "loss_cls": (cls_sum, avg_factor),
        "loss_bbox": (box_sum, avg_factor),
        "loss": (cls_sum + box_sum, avg_factor),
        "num_pos": ((targets["num_pos"] * batch_mask).sum(), batch_mask.sum()),
    }

  def loss_function(self, outputs: Mapping[str, Any], batch: Batch,
                    model_params: Optional[Any] = None) -> Tuple[jnp.ndarray, Metrics]:
    """RetinaNet training loss on a (padded) batch, with its metrics (Scenic's detection convention).

    Returns:
      ``(total_loss, metrics)``: the scalar ``loss_cls + loss_bbox`` (normalised by the batch's
      ``sum(max(num_pos_i, 1))``, plus Scenic's optional L2 term), and the metrics of
      ``get_metrics_fn_jit`` computed from the same anchor assignment: trainers use them instead of calling
      the metrics function again, so the targets are assigned once per train step.
    """
    metrics = self._loss_terms(outputs, batch)
    total_sum, avg_factor = metrics["loss"]
    total_loss = total_sum / jnp.maximum(avg_factor, 1.0)
    return total_loss + self.l2_regularization(model_params), metrics

  def get_metrics_fn_jit(self, split: Optional[str] = None) -> Callable[[Mapping[str, Any], Batch], Metrics]:
    """Returns ``fn(outputs, batch) -> {name: (sum, count)}``, the same for every split: ``loss`` (``loss_cls
    + loss_bbox``, normalised by mmdet's ``avg_factor``: the training loss without the L2 term),
    ``loss_cls``, ``loss_bbox`` and ``num_pos`` (positive anchors per image)."""
    del split
    return self._loss_terms

  def predict(self, outputs: Mapping[str, Any], batch: Batch) -> Dict[str, jnp.ndarray]:
    """Padded detections in original-image coordinates, ready for COCO JSON.

    Returns ``boxes (B, K, 4)`` xyxy (original pixels), ``scores (B, K)``, ``labels (B, K)`` contiguous class
    indices (``-1`` padding), ``valid (B, K)`` (False for padding and for ``batch_mask == 0`` examples).
    """
    label = batch["label"]
    anchors = [a.reshape(-1, 4) for a in outputs["anchors"]]
    dets = retinanet_detections(outputs["cls_logits"], outputs["box_deltas"], anchors, label["image_size"],
                                label["scale"], self.box_coder, self.test_cfg)
    if "batch_mask" in batch:
      keep = jnp.asarray(batch["batch_mask"]) > 0
      dets["valid"] = dets["valid"] & keep[:, None]
      dets["scores"] = jnp.where(dets["valid"], dets["scores"], 0.0)
      dets["labels"] = jnp.where(dets["valid"], dets["labels"], -1)
    return dets
