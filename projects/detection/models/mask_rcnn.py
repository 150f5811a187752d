"""Mask R-CNN with a CrossFormer backbone and an FPN neck (mmdet semantics, official 1x settings), Scenic style.

``MaskRCNN`` is the Flax network (sub-modules ``backbone``, ``neck``, ``rpn_head``, ``bbox_head``,
``mask_head``); ``MaskRCNNModel`` is the ``BaseModel`` wrapper (loss, metrics, ``predict``).

Batches: the detection batches of ``docs/CONTRACTS.md`` plus instance masks:
  ``inputs`` float32 (B, H, W, 3); ``label`` = dict(``boxes`` float32 (B, M, 4) xyxy pixels in the network-input
  frame, ``labels`` int32 (B, M) with -1 = padding, ``masks`` uint8 (B, M, H, W) {0, 1} instance bitmaps in the
  network-input frame (resized, flipped and padded with the image; zeros in padding rows and padded
  instances), ``image_size`` int32 (B, 2) valid (h, w), ``orig_size``, ``scale`` float32 (B, 2) resized / original
  (h, w), ``image/id``); ``batch_mask`` float32 (B,).

Two-stage detectors need the image sizes (proposals are clipped to each image) and, in training, the ground
truth inside the forward pass (RoI sampling). ``MaskRCNNModel.apply_kwargs(batch, train)`` returns the keyword
arguments for ``flax_model.apply(variables, inputs, train=..., **model.apply_kwargs(batch, train))``:
``image_size`` always, and ``gt_boxes``, ``gt_labels``, ``gt_masks`` in training. Without ``image_size`` the
whole input is taken as the image. The sampler draws from the ``"dropout"`` RNG stream.

Outputs of ``MaskRCNN.__call__``:
  always: ``rpn_logits`` / ``rpn_deltas`` per level (B, N_l) / (B, N_l, 4), ``anchors`` per level (N_l, 4);
  ``train=True``: the sampled targets and predictions the loss reduces (``rpn_*``, ``rcnn_*``, ``mask_*``);
  ``train=False``: ``detections`` = dict(``boxes`` (B, D, 4) network-input frame, ``scores`` (B, D),
  ``labels`` (B, D) int32 (-1 padding), ``valid`` (B, D), ``mask_logits`` (B, D, 28, 28) of each detection's
  label), ``D = test_cfg.rcnn max_per_img`` (100).

``MaskRCNNModel.predict(outputs, batch)`` -> ``boxes`` (original pixels), ``scores``, ``labels``, ``valid``,
``mask_probs`` (B, D, 28, 28) and ``input_boxes`` (network frame). ``heads.detection.mask_ops.paste_masks``
turns them into image masks: ``paste_masks(mask_probs[b], boxes[b], orig_size, threshold=0.5)`` at the original
size (mmdet pastes the 28x28 maps with the rescaled boxes at ``ori_shape``).

``config.model.test_cfg.version`` (``heads.detection.versions``): ``"mmdet2"`` (default, the official repository's
proposal selection, which keeps zero-size boxes) or ``"mmdet3"`` (drops them before the RPN NMS).
"""

import dataclasses
from typing import Any, Callable, Dict, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from heads.detection import losses
from heads.detection.anchors import AnchorGenerator, padded_image_shape
from heads.detection.assigner import MaxIoUAssigner
from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.mask_ops import mask_targets
from heads.detection.proposals import ProposalConfig, batch_proposals
from heads.detection.rcnn_postprocess import RCNNTestConfig, rcnn_detections
from heads.detection.roi_align import FINEST_SCALE, roi_align, roi_levels
from heads.detection.roi_heads import FCNMaskHead, Shared2FCBBoxHead
from heads.detection.rpn_head import RPNHead
from heads.detection.sampler import SamplerConfig, random_sample
from heads.detection.versions import DEFAULT_VERSION
from heads.fpn import FPN
from projects import registry
from projects.common.base_model import param_shapes
from projects.detection.detector import Detector

Batch = Mapping[str, Any]
Metrics = Dict[str, Tuple[jnp.ndarray, jnp.ndarray]]

BACKBONE_OUT_INDICES = (0, 1, 2, 3)


@dataclasses.dataclass(frozen=True)
class MaskRCNNSettings:
  """Every static setting of the two stages (mmdet's anchor generator, coders, train_cfg and test_cfg).

  Attributes:
    anchor_generator: RPN anchors (strides 4..64, scale 8, ratios 0.5, 1, 2).
    rpn_coder, rcnn_coder: DeltaXYWH coders (stds 1 and 0.1, 0.1, 0.2, 0.2).
    rpn_assigner, rcnn_assigner: MaxIoU assigners (0.7/0.3/0.3 and 0.5/0.5/0.5).
    rpn_sampler, rcnn_sampler: random samplers (256/0.5 and 512/0.25).
    rpn_train, rpn_test: proposal settings (nms_pre 2000 and 1000).
    rcnn_test: detection settings.
    roi_strides: strides of the RoI extractor levels (4..32).
    finest_scale: RoI level mapping scale (56).
    bbox_roi_size, mask_roi_size, mask_size: 7, 14, 28.
    roi_max_samples, mask_roi_max_samples: bounds on RoIAlign's adaptive samples per bin and axis of the
      7x7 and 14x14 extractors (see ``roi_align``: exact up to ``7 * 8 = 56`` and ``14 * 4 = 56`` map pixels
      per side, i.e. every RoI up to 224 px wide at its level-0 mapping, 1792 px at level 3).
    pad_size_divisor: per-image padding that defines mmdet's valid anchors (32).
  """
  anchor_generator: AnchorGenerator = AnchorGenerator(strides=(4, 8, 16, 32, 64), ratios=(0.5, 1.0, 2.0),
                                                      octave_base_scale=8.0, scales_per_octave=1)
  rpn_coder: DeltaXYWHBBoxCoder = DeltaXYWHBBoxCoder()
  rcnn_coder: DeltaXYWHBBoxCoder = DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
  rpn_assigner: MaxIoUAssigner = MaxIoUAssigner(pos_iou_thr=0.7, neg_iou_thr=0.3, min_pos_iou=0.3)
  rcnn_assigner: MaxIoUAssigner = MaxIoUAssigner(pos_iou_thr=0.5, neg_iou_thr=0.5, min_pos_iou=0.5)
  rpn_sampler: SamplerConfig = SamplerConfig(num=256, pos_fraction=0.5)
  rcnn_sampler: SamplerConfig = SamplerConfig(num=512, pos_fraction=0.25)
  rpn_train: ProposalConfig = ProposalConfig(nms_pre=2000, max_per_img=1000, iou_threshold=0.7)
  rpn_test: ProposalConfig = ProposalConfig(nms_pre=1000, max_per_img=1000, iou_threshold=0.7)
  rcnn_test: RCNNTestConfig = RCNNTestConfig()
  roi_strides: Tuple[int, ...] = (4, 8, 16, 32)
  finest_scale: float = FINEST_SCALE
  bbox_roi_size: int = 7
  mask_roi_size: int = 14
  mask_size: int = 28
  roi_max_samples: int = 8
  mask_roi_max_samples: int = 4
  pad_size_divisor: int = 32


class MaskRCNN(nn.Module):
  """Backbone -> FPN (P2-P6) -> RPN -> proposals -> RoIAlign -> box head / mask head.

  Attributes:
    backbone: a module mapping NHWC images to ``{"stage_<n>": map}``.
    neck: the FPN (5 outputs, P6 by max-pool).
    rpn_head: the ``RPNHead``.
    bbox_head: the ``Shared2FCBBoxHead``.
    mask_head: the ``FCNMaskHead``.
    settings: the static two-stage settings.
  """
  backbone: nn.Module
  neck: nn.Module
  rpn_head: nn.Module
  bbox_head: nn.Module
  mask_head: nn.Module
  settings: MaskRCNNSettings = MaskRCNNSettings()

  # ---- stages (also applied one by one by projects.parity through ``method=``) ----

  def pyramid_forward(self, features: Any, train: bool = False) -> Dict[str, Any]:
    """Neck and RPN on backbone features: ``pyramid`` (P2..P6), ``rpn_logits``, ``rpn_deltas``, ``anchors``."""
    pyramid = self.neck(features, train=train)
    s = self.settings
    if len(pyramid) != s.anchor_generator.num_levels:
      raise ValueError(f"the neck produced {len(pyramid)} levels but the anchor generator has "
                       f"{s.anchor_generator.num_levels}")
    logits, deltas = self.rpn_head(pyramid, train=train)
    sizes = [tuple(p.shape[1:3]) for p in pyramid]
    anchors = tuple(s.anchor_generator.grid_anchors(sizes))
    return {"pyramid": tuple(pyramid), "rpn_logits": logits, "rpn_deltas": deltas, "anchors": anchors}

  def roi_features(self, pyramid: Sequence[jnp.ndarray], boxes: jnp.ndarray, batch_index: jnp.ndarray,
                   output_size: int, max_samples: int) -> jnp.ndarray:
    """RoIAlign features ``(R, S, S, C)`` of xyxy ``boxes`` (R, 4) on P2..P5 at their mapped levels."""
    s = self.settings
    levels = roi_levels(boxes, len(s.roi_strides), s.finest_scale)
    return roi_align(pyramid[:len(s.roi_strides)], boxes, batch_index, levels, s.roi_strides, output_size,
                     max_samples=max_samples)

  def bbox_forward(self, pyramid: Sequence[jnp.ndarray], boxes: jnp.ndarray, batch_index: jnp.ndarray,
                   train: bool = False) -> Dict[str, jnp.ndarray]:
    """Box head on RoIs: ``cls_logits (R, K + 1)``, ``deltas (R, 4 K)``, ``shared_fc_out``, ``roi_feats``."""
    feats = self.roi_features(pyramid, boxes, batch_index, self.settings.bbox_roi_size,
                              self.settings.roi_max_samples)
    cls, deltas, shared = self.bbox_head(feats, train=train)
    return {"cls_logits": cls, "deltas": deltas, "shared_fc_out": shared, "roi_feats": feats}

  def mask_forward(self, pyramid: Sequence[jnp.ndarray], boxes: jnp.ndarray, batch_index: jnp.ndarray,
                   train: bool = False) -> Dict[str, jnp.ndarray]:
    """Mask head on RoIs: ``logits (R, 28, 28, K)`` and the 14x14 ``roi_feats``."""
    feats = self.roi_features(pyramid, boxes, batch_index, self.settings.mask_roi_size,
                              self.settings.mask_roi_max_samples)
    return {"logits": self.mask_head(feats, train=train), "roi_feats": feats}

  # ---- full forward ----

  def __call__(self, inputs: jnp.ndarray, train: bool = False, debug: bool = False, *,
               image_size: Optional[jnp.ndarray] = None, gt_boxes: Optional[jnp.ndarray] = None,
               gt_labels: Optional[jnp.ndarray] = None, gt_masks: Optional[jnp.ndarray] = None,
               proposal_version: Optional[str] = None) -> Dict[str, Any]:
    """Runs Mask R-CNN on NHWC ``inputs``; see the module docstring for the arguments and outputs."""
    del debug
    batch, height, width = inputs.shape[:3]
    if image_size is None:
      image_size = jnp.tile(jnp.asarray([[height, width]], jnp.int32), (batch, 1))
    features = self.backbone(inputs, train=train)
    return self.forward_features(features, train, image_size=image_size, gt_boxes=gt_boxes,
                                 gt_labels=gt_labels, gt_masks=gt_masks, proposal_version=proposal_version)

  def forward_features(self, features: Any, train: bool = False, *, image_size: jnp.ndarray,
                       gt_boxes: Optional[jnp.ndarray] = None, gt_labels: Optional[jnp.ndarray] = None,
                       gt_masks: Optional[jnp.ndarray] = None, proposal_version: Optional[str] = None
                       ) -> Dict[str, Any]:
    """Everything after the backbone (``__call__`` without the backbone; the parity runner starts here)."""
    image_size = jnp.asarray(image_size, jnp.int32)
    out = self.pyramid_forward(features, train=train)
    if train:
      if gt_boxes is None or gt_labels is None or gt_masks is None:
        raise ValueError("MaskRCNN training needs gt_boxes, gt_labels and gt_masks "
                         "(pass **MaskRCNNModel.apply_kwargs(batch, train=True) to apply)")
      key = self.make_rng("dropout") if self.has_rng("dropout") else jax.random.PRNGKey(0)
      out.update(self.train_forward(out, image_size, gt_boxes, gt_labels, gt_masks, key))
    else:
      out["detections"] = self.predict_forward(out, image_size, proposal_version)
    del out["pyramid"]
    return out

  def predict_forward(self, out: Mapping[str, Any], image_size: jnp.ndarray,
                      proposal_version: Optional[str] = None) -> Dict[str, jnp.ndarray]:
    """Test-time proposals, detections and the label channel of their mask logits."""
    s = self.settings
    cfg = s.rpn_test if proposal_version is None else dataclasses.replace(s.rpn_test, version=proposal_version)
    props = batch_proposals(out["rpn_logits"], out["rpn_deltas"], out["anchors"], image_size, s.rpn_coder, cfg)
    props = jax.lax.stop_gradient(props)
    batch, num = props["valid"].shape
    batch_index = jnp.repeat(jnp.arange(batch), num)
    head = self.bbox_forward(out["pyramid"], props["boxes"].reshape(-1, 4), batch_index)
    cls = head["cls_logits"].reshape(batch, num, -1)
    deltas = head["deltas"].reshape(batch, num, -1)
    dets = jax.vmap(lambda c, d, r, v, sz: rcnn_detections(c, d, r, v, sz, s.rcnn_coder, s.rcnn_test))(
        cls, deltas, props["boxes"], props["valid"], image_size)
    d = dets["boxes"].shape[1]
    masks = self.mask_forward(out["pyramid"], dets["boxes"].reshape(-1, 4), jnp.repeat(jnp.arange(batch), d))
    logits = masks["logits"].reshape(batch, d, s.mask_size, s.mask_size, -1)
    label = jnp.maximum(dets["labels"], 0)
    dets["mask_logits"] = jnp.take_along_axis(logits, label[:, :, None, None, None], axis=-1)[..., 0]
    return dets

  def train_forward(self, out: Mapping[str, Any], image_size: jnp.ndarray, gt_boxes: jnp.ndarray,
                    gt_labels: jnp.ndarray, gt_masks: jnp.ndarray, key: jax.Array) -> Dict[str, jnp.ndarray]:
    """Targets (assignment + sampling, no gradient) and the predictions the losses compare with them."""
    s = self.settings
    gt_boxes = jnp.asarray(gt_boxes, jnp.float32)
    gt_labels = jnp.asarray(gt_labels, jnp.int32)
    batch = gt_boxes.shape[0]
    keys = jax.random.split(key, 2 * batch)
    sizes = [tuple(p.shape[1:3]) for p in out["pyramid"]]
    rpn = rpn_targets(s, out["anchors"], sizes, gt_boxes, gt_labels, image_size, keys[:batch])
    props = batch_proposals(out["rpn_logits"], out["rpn_deltas"], out["anchors"], image_size, s.rpn_coder,
                            s.rpn_train)
    props = jax.lax.stop_gradient(props)
    rcnn = jax.vmap(lambda *a: rcnn_sample(s, *a))(props["boxes"], props["valid"], gt_boxes, gt_labels,
                                                  keys[batch:])
    num = rcnn["rois"].shape[1]
    head = self.bbox_forward(out["pyramid"], rcnn["rois"].reshape(-1, 4), jnp.repeat(jnp.arange(batch), num),
                             train=True)
    num_classes = head["deltas"].shape[-1] // 4
    deltas = head["deltas"].reshape(batch, num, num_classes, 4)
    label = jnp.clip(rcnn["labels"], 0, num_classes - 1)
    pos_deltas = jnp.take_along_axis(deltas, label[:, :, None, None], axis=2)[:, :, 0]

    max_pos = s.rcnn_sampler.max_pos
    pos_rois = rcnn["rois"][:, :max_pos]
    masks = self.mask_forward(out["pyramid"], pos_rois.reshape(-1, 4), jnp.repeat(jnp.arange(batch), max_pos),
                              train=True)
    logits = masks["logits"].reshape(batch, max_pos, s.mask_size, s.mask_size, -1)
    pos_label = label[:, :max_pos]
    mask_logits = jnp.take_along_axis(logits, pos_label[:, :, None, None, None], axis=-1)[..., 0]
    targets = jax.vmap(lambda m, r, g: mask_targets(m, r, g, s.mask_size))(
        gt_masks, pos_rois, jnp.maximum(rcnn["gt_index"][:, :max_pos], 0))
    return {
        **{f"rpn_{k}": v for k, v in rpn.items()},
        "rcnn_cls_logits": head["cls_logits"].reshape(batch, num, -1),
        "rcnn_deltas": pos_deltas,
        **{f"rcnn_{k}": v for k, v in rcnn.items()},
        "mask_logits": mask_logits,
        "mask_targets": jax.lax.stop_gradient(targets),
        "mask_weights": rcnn["is_pos"][:, :max_pos].astype(jnp.float32),
    }


def rpn_targets(s: MaskRCNNSettings, anchors: Sequence[jnp.ndarray], featmap_sizes: Sequence[Tuple[int, int]],
                gt_boxes: jnp.ndarray, gt_labels: jnp.ndarray, image_size: jnp.ndarray, keys: jax.Array
                ) -> Dict[str, jnp.ndarray]:
  """Sampled RPN targets of a batch, each (B, N) over all anchors: ``labels`` (1 for sampled positives),
  ``weights`` (1 for sampled anchors), ``box_targets`` (B, N, 4), ``box_weights`` (sampled positives).

  Anchors are valid inside each image's ``pad_shape`` (image size rounded up to ``pad_size_divisor``); every gt
  is of the single RPN class.
  """
  flat = jnp.concatenate(anchors, axis=0)
  pad_shape = padded_image_shape(image_size, s.pad_size_divisor)
  valid = jnp.concatenate(s.anchor_generator.valid_flags(featmap_sizes, pad_shape), axis=-1)
  labels = jnp.where(gt_labels >= 0, 0, -1)

  def one(valid_b, boxes_b, labels_b, key):
    result = s.rpn_assigner.assign(flat, boxes_b, labels_b, valid_b)
    pos = (result.gt_inds > 0) & valid_b
    neg = (result.gt_inds == 0) & valid_b
    sample = random_sample(key, pos, neg, s.rpn_sampler)
    matched = boxes_b[jnp.maximum(result.gt_inds - 1, 0)]
    targets = s.rpn_coder.encode(flat, jnp.where(sample.pos_mask[:, None], matched, flat))
    return {"labels": sample.pos_mask.astype(jnp.float32),
            "weights": (sample.pos_mask | sample.neg_mask).astype(jnp.float32),
            "box_targets": targets, "box_weights": sample.pos_mask.astype(jnp.float32)}

  return jax.lax.stop_gradient(jax.vmap(one)(valid, gt_boxes, labels, keys))


def rcnn_sample(s: MaskRCNNSettings, proposals: jnp.ndarray, proposal_valid: jnp.ndarray, gt_boxes: jnp.ndarray,
                gt_labels: jnp.ndarray, key: jax.Array) -> Dict[str, jnp.ndarray]:
  """RCNN assignment (gts prepended as candidates) and sampling of one image, with the box-head targets.

  Returns ``rois (num, 4)``, ``labels (num,)`` (num_classes = background is encoded as -1 here and made
  ``num_classes`` by the loss), ``is_pos``, ``valid``, ``gt_index`` (num,), ``box_targets (num, 4)``.
  """
  gt_valid = gt_labels >= 0
  result = s.rcnn_assigner.assign(proposals, gt_boxes, gt_labels, proposal_valid)
  num_gts = gt_boxes.shape[0]
  cand_boxes = jnp.concatenate([gt_boxes, proposals], axis=0)
  cand_gt = jnp.concatenate([jnp.where(gt_valid, jnp.arange(num_gts) + 1, -1),
                             jnp.where(proposal_valid, result.gt_inds, -1)])
  pos = cand_gt > 0
  neg = cand_gt == 0
  sample = random_sample(key, pos, neg, s.rcnn_sampler)
  rois = cand_boxes[sample.indices]
  gt_index = jnp.where(sample.is_pos, cand_gt[sample.indices] - 1, -1)
  matched = gt_boxes[jnp.maximum(gt_index, 0)]
  targets = s.rcnn_coder.encode(rois, jnp.where(sample.is_pos[:, None], matched, rois))
  labels = jnp.where(sample.is_pos, gt_labels[jnp.maximum(gt_index, 0)], -1)
  return {"rois": rois, "labels": labels, "is_pos": sample.is_pos, "valid": sample.valid, "gt_index": gt_index,
          "box_targets": targets}


def rpn_loss_terms(logits: jnp.ndarray, deltas: jnp.ndarray, labels: jnp.ndarray, weights: jnp.ndarray,
                   box_targets: jnp.ndarray, box_weights: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Summed RPN losses over anchors ``(..., N)``: BCE over sampled anchors, L1 over sampled positives."""
  cls = losses.weighted_sum(losses.binary_cross_entropy_with_logits(logits, labels), weights)
  box = losses.weighted_sum(losses.l1_loss(deltas, box_targets), box_weights)
  return {"loss_rpn_cls": cls, "loss_rpn_bbox": box}


def rcnn_loss_terms(cls_logits: jnp.ndarray, label_deltas: jnp.ndarray, labels: jnp.ndarray,
                    valid: jnp.ndarray, is_pos: jnp.ndarray, box_targets: jnp.ndarray) -> Dict[str, jnp.ndarray]:
  """Summed box-head terms over sampled RoIs ``(..., R)``: CE, L1 of the label's deltas on positives, correct.

  ``labels`` are foreground classes for positives (anything for negatives, which take the background class).
  """
  num_classes = cls_logits.shape[-1] - 1
  valid = jnp.asarray(valid) > 0
  is_pos = jnp.asarray(is_pos) > 0
  target = jnp.where(is_pos, labels, num_classes)
  cls = losses.weighted_sum(losses.softmax_cross_entropy(cls_logits, target), valid)
  box = losses.weighted_sum(losses.l1_loss(label_deltas, box_targets), is_pos)
  correct = ((jnp.argmax(cls_logits, axis=-1) == target) & (valid > 0)).sum().astype(jnp.float32)
  return {"loss_cls": cls, "loss_bbox": box, "correct": correct}


def mask_loss_sum(mask_logits: jnp.ndarray, targets: jnp.ndarray, weights: jnp.ndarray) -> jnp.ndarray:
  """Summed mask BCE of ``(..., R, S, S)`` label-channel logits over the RoIs of nonzero ``weights``."""
  return losses.weighted_sum(losses.binary_cross_entropy_with_logits(mask_logits, targets), weights)


def loss_terms(outputs: Mapping[str, Any]) -> Metrics:
  """The five official losses, ``acc`` and ``loss`` (their sum; Scenic's name, as RetinaNet's) as
  ``{name: (value, 1)}`` from training outputs.

  Normalisation as mmdet: RPN losses by the sampled anchors of the batch, ``loss_cls`` and ``loss_bbox`` by
  the sampled RoIs, ``loss_mask`` by positives x 28 x 28; evaluation outputs give ``num_detections``.
  """
  if "rcnn_rois" not in outputs:  # evaluation outputs: detections only
    valid = outputs["detections"]["valid"].astype(jnp.float32)
    return {"num_detections": (valid.sum(), jnp.asarray(valid.shape[0], jnp.float32))}
  rpn_logits = jnp.concatenate(outputs["rpn_logits"], axis=1)
  rpn_deltas = jnp.concatenate(outputs["rpn_deltas"], axis=1)
  rpn = rpn_loss_terms(rpn_logits, rpn_deltas, outputs["rpn_labels"], outputs["rpn_weights"],
                       outputs["rpn_box_targets"], outputs["rpn_box_weights"])
  rpn_count = jnp.maximum(outputs["rpn_weights"].sum(), 1.0)
  valid = outputs["rcnn_valid"].astype(jnp.float32)
  rcnn = rcnn_loss_terms(outputs["rcnn_cls_logits"], outputs["rcnn_deltas"], outputs["rcnn_labels"], valid,
                         outputs["rcnn_is_pos"].astype(jnp.float32), outputs["rcnn_box_targets"])
  rcnn_count = jnp.maximum(valid.sum(), 1.0)
  mask_sum = mask_loss_sum(outputs["mask_logits"], outputs["mask_targets"], outputs["mask_weights"])
  size = outputs["mask_logits"].shape[-1] * outputs["mask_logits"].shape[-2]
  mask_count = jnp.maximum(outputs["mask_weights"].sum() * size, 1.0)
  one = jnp.ones((), jnp.float32)
  values = {
      "loss_rpn_cls": rpn["loss_rpn_cls"] / rpn_count,
      "loss_rpn_bbox": rpn["loss_rpn_bbox"] / rpn_count,
      "loss_cls": rcnn["loss_cls"] / rcnn_count,
      "loss_bbox": rcnn["loss_bbox"] / rcnn_count,
      "loss_mask": mask_sum / mask_count,
  }
  metrics = {k: (v, one) for k, v in values.items()}
  metrics["loss"] = (sum(values.values()), one)
  metrics["acc"] = (100.0 * rcnn["correct"] / rcnn_count, one)
  metrics["num_rcnn_pos"] = (outputs["rcnn_is_pos"].sum().astype(jnp.float32), one)
  return metrics


@registry.register_model("crossformer_mask_rcnn")
class MaskRCNNModel(Detector):
  """Scenic-style Mask R-CNN: network, two-stage losses, metrics and predictions (see the module docstring).

  ``config.model`` keys (``default_flax_model_config`` is a complete tiny example; the values given are the
  official Mask R-CNN CrossFormer-S 1x recipe):
    dtype ("float32"); backbone (as RetinaNet: ``name``, ``drop_path_rate`` 0.2, ``lda_mode``, ``remat``,
    ``checkpoint``, ``overrides``); neck: ``out_channels`` (256); rpn_head: ``feat_channels`` (256);
    bbox_head: ``fc_out_channels`` (1024); mask_head: ``conv_out_channels`` (256), ``num_convs`` (4);
    roi: ``max_samples`` (8) and ``mask_max_samples`` (4): RoIAlign's bounds on the adaptive samples per bin
    and axis of the 7x7 and 14x14 extractors (exact below them, see ``heads.detection.roi_align``);
    train_cfg: ``rpn_nms_pre`` (2000), ``rpn_max_per_img`` (1000), ``rpn_num`` (256), ``rpn_pos_fraction`` (0.5),
    ``rcnn_num`` (512), ``rcnn_pos_fraction`` (0.25), ``pad_size_divisor`` (32);
    test_cfg: ``version`` ("mmdet2" | "mmdet3"), ``rpn_nms_pre`` (1000), ``rpn_max_per_img`` (1000),
    ``score_thr`` (0.05), ``iou_threshold`` (0.5), ``max_per_img`` (100), ``mask_thr_binary`` (0.5).
  ``dataset_meta_data["num_classes"]`` sets the number of foreground classes.
  """

  iou_types = ("bbox", "segm")
  with_masks = True

  @classmethod
  def num_classes_from_params(cls, params: Mapping[str, Any], config: ml_collections.ConfigDict) -> int:
    """Foreground classes of the box head's classifier (``bbox_head/fc_cls``: classes + background)."""
    del config
    shapes = param_shapes(params, "bbox_head/fc_cls/kernel")
    if not shapes:
      raise ValueError("the Mask R-CNN checkpoint has no bbox_head/fc_cls classifier")
    return int(shapes[0][-1]) - 1

  @property
  def settings(self) -> MaskRCNNSettings:
    """The static settings described by ``config.model``."""
    m = self.config.model
    t, e = m.train_cfg, m.test_cfg
    return MaskRCNNSettings(
        rpn_sampler=SamplerConfig(num=t.rpn_num, pos_fraction=t.rpn_pos_fraction),
        rcnn_sampler=SamplerConfig(num=t.rcnn_num, pos_fraction=t.rcnn_pos_fraction),
        rpn_train=ProposalConfig(nms_pre=t.rpn_nms_pre, max_per_img=t.rpn_max_per_img, iou_threshold=0.7,
                                 version=e.version),
        rpn_test=ProposalConfig(nms_pre=e.rpn_nms_pre, max_per_img=e.rpn_max_per_img, iou_threshold=0.7,
                                version=e.version),
        rcnn_test=RCNNTestConfig(score_thr=e.score_thr, iou_threshold=e.iou_threshold,
                                 max_per_img=e.max_per_img, mask_thr_binary=e.mask_thr_binary),
        roi_max_samples=m.roi.max_samples, mask_roi_max_samples=m.roi.mask_max_samples,
        pad_size_divisor=t.pad_size_divisor)

  def build_flax_model(self) -> nn.Module:
    """Returns the ``MaskRCNN`` network described by ``config.model``."""
    m = self.config.model
    dtype = jnp.dtype(m.dtype)
    return MaskRCNN(
        backbone=self.build_backbone(dtype, BACKBONE_OUT_INDICES),
        neck=FPN(out_channels=m.neck.out_channels, num_outs=5, dtype=dtype),
        rpn_head=RPNHead(num_anchors=3, feat_channels=m.rpn_head.feat_channels, dtype=dtype),
        bbox_head=Shared2FCBBoxHead(num_classes=self.num_classes, fc_out_channels=m.bbox_head.fc_out_channels,
                                    dtype=dtype),
        mask_head=FCNMaskHead(num_classes=self.num_classes, conv_out_channels=m.mask_head.conv_out_channels,
                              num_convs=m.mask_head.num_convs, dtype=dtype),
        settings=self.settings)

  def default_flax_model_config(self) -> ml_collections.ConfigDict:
    """A tiny but complete config (CrossFormer-S layout at width 16, 32-channel FPN and heads)."""
    return ml_collections.ConfigDict({
        "model": {
            "dtype": "float32",
            "backbone": {
                "name": "crossformer_s", "drop_path_rate": 0.0, "lda_mode": "v1", "remat": False,
                "checkpoint": None,
                "overrides": {"embed_dim": 16, "depths": (1, 1, 1, 1), "num_heads": (1, 1, 2, 2)},
            },
            "neck": {"out_channels": 32},
            "rpn_head": {"feat_channels": 32},
            "bbox_head": {"fc_out_channels": 64},
            "mask_head": {"conv_out_channels": 32, "num_convs": 4},
            "roi": {"max_samples": 8, "mask_max_samples": 4},
            "train_cfg": {"rpn_nms_pre": 2000, "rpn_max_per_img": 1000, "rpn_num": 256, "rpn_pos_fraction": 0.5,
                          "rcnn_num": 512, "rcnn_pos_fraction": 0.25, "pad_size_divisor": 32},
            "test_cfg": {"version": DEFAULT_VERSION, "rpn_nms_pre": 1000, "rpn_max_per_img": 1000, "score_thr": 0.05,
                         "iou_threshold": 0.5, "max_per_img": 100, "mask_thr_binary": 0.5},
        },
    })

  def apply_kwargs(self, batch: Batch, train: bool) -> Dict[str, jnp.ndarray]:
    """Keyword arguments of ``flax_model.apply`` for ``batch`` (image sizes; the ground truth in training)."""
    label = batch["label"]
    kwargs = {"image_size": jnp.asarray(label["image_size"], jnp.int32)}
    if train:
      labels = jnp.asarray(label["labels"], jnp.int32)
      if "batch_mask" in batch:
        labels = jnp.where((jnp.asarray(batch["batch_mask"]) > 0)[:, None], labels, -1)
      kwargs.update(gt_boxes=jnp.asarray(label["boxes"], jnp.float32), gt_labels=labels,
                    gt_masks=jnp.asarray(label["masks"]))
    return kwargs

  def _loss_terms(self, outputs: Mapping[str, Any], batch: Batch) -> Metrics:
    del batch  # the targets travel in the outputs
    return loss_terms(outputs)

  def loss_function(self, outputs: Mapping[str, Any], batch: Batch,
                    model_params: Optional[Any] = None) -> Tuple[jnp.ndarray, Metrics]:
    """``(total_loss, metrics)``: the sum of the five official losses (plus Scenic's optional L2 term)."""
    metrics = self._loss_terms(outputs, batch)
    if "loss" not in metrics:
      raise ValueError("loss_function needs training outputs: apply the model with train=True and "
                       "**apply_kwargs(batch, train=True)")
    return metrics["loss"][0] + self.l2_regularization(model_params), metrics

  def get_metrics_fn_jit(self, split: Optional[str] = None) -> Callable[[Mapping[str, Any], Batch], Metrics]:
    """``fn(outputs, batch) -> {name: (sum, count)}`` over the global batch (our jit trainer): the loss terms
    (train) or detection counts (eval). ``get_metrics_fn`` (the base class) is the same summed over Scenic's
    pmap axis."""
    del split
    return self._loss_terms

  def predict(self, outputs: Mapping[str, Any], batch: Batch) -> Dict[str, jnp.ndarray]:
    """Padded detections in original-image coordinates, with 28x28 mask probabilities (see module docstring)."""
    dets = outputs["detections"]
    label = batch["label"]
    scale = jnp.asarray(label["scale"], jnp.float32)
    factor = jnp.stack([scale[:, 1], scale[:, 0], scale[:, 1], scale[:, 0]], axis=-1)[:, None, :]
    valid = dets["valid"]
    if "batch_mask" in batch:
      valid = valid & (jnp.asarray(batch["batch_mask"]) > 0)[:, None]
    return {
        "boxes": jnp.where(valid[..., None], dets["boxes"] / factor, 0.0),
        "input_boxes": dets["boxes"],
        "scores": jnp.where(valid, dets["scores"], 0.0),
        "labels": jnp.where(valid, dets["labels"], -1),
        "valid": valid,
        "mask_probs": jax.nn.sigmoid(dets["mask_logits"].astype(jnp.float32)),
    }
