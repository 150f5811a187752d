"""Fixture runner for RetinaNet (kind ``retinanet``).

Builds ``projects.detection.models.retinanet.RetinaNetModel`` from the fixture's ``mm_config`` through
``projects.parity.official_config.model_config_from_mm``, with the recorded pyramid standing in for the backbone,
converts ``sd/`` with the checkpoint converter's mapping and compares: neck levels, head outputs, anchors, valid
flags, the assignment, targets, losses (per level, total, avg_factor, without the tiny gt), the per-level
candidates and the final detections of both post-processing versions (``det``: mmdet 3.x, ``det_mmdet2``: mmdet 2.8).

Conventions translated here (inputs/outputs only): NCHW <-> NHWC, mmdet's ``gt_inds`` -2 for anchors outside
the valid region (ours leave them unassigned with zero weight), background label = num_classes.
"""

import re
from typing import Any, Dict, List, Mapping, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heads.detection import losses
from heads.detection.anchors import anchor_inside_flags
from projects.common.model_io import variable_shapes
from projects.detection.models.retinanet import RetinaNetModel
from heads.detection.retinanet_postprocess import TestConfig, level_candidates, retinanet_detections
from projects.parity import common, official_config
from projects.parity.report import BOX_TOL, SCORE_TOL

# Stored detection lists -> post-processing version.
DET_VERSIONS = {"det": "mmdet3", "det_mmdet2": "mmdet2"}
CAND_VERSIONS = {"cand": "mmdet3", "cand_mmdet2": "mmdet2"}


def build(meta: Mapping[str, Any], channels) -> RetinaNetModel:
  """Our RetinaNet for ``meta["mm_config"]`` with a ``GivenPyramid`` of ``channels`` as backbone."""
  cfg = official_config.model_config_from_mm(meta["mm_config"])
  num_classes = cfg.pop("num_classes")
  model_cfg = ml_collections.ConfigDict(dict(backbone=None, dtype="float32", **cfg))
  return RetinaNetModel(ml_collections.ConfigDict({"model": model_cfg}), {"num_classes": num_classes},
                        backbone=common.GivenPyramid(tuple(channels)))


def _images(arrays: Mapping[str, np.ndarray], case: str) -> List[int]:
  return sorted(int(m[1]) for k in arrays if (m := re.fullmatch(rf"in/{re.escape(case)}/gt_bboxes/img(\d+)", k)))


def _align_detections(ours: Mapping[str, np.ndarray], ref_boxes, ref_scores, ref_labels):
  """Our detections reordered to match the stored list as a set (ties may order them differently).

  Each stored detection takes the unmatched one of ours with its label that is closest relative to the
  tolerances; stored ones left without a partner get NaN (reported as failures).
  """
  valid = np.asarray(ours["valid"])
  boxes, scores, labels = (np.asarray(ours[k])[valid] for k in ("boxes", "scores", "labels"))
  aligned_boxes = np.full(ref_boxes.shape, np.nan)
  aligned_scores = np.full(ref_scores.shape, np.nan)
  aligned_labels = np.full(ref_labels.shape, -1)
  free = np.ones(len(scores), bool)
  for i in np.argsort(-ref_scores, kind="stable"):
    candidates = np.nonzero(free & (labels == ref_labels[i]))[0]
    if candidates.size == 0:
      continue
    err = np.maximum(np.abs(scores[candidates] - ref_scores[i]) / SCORE_TOL[0],
                     np.abs(boxes[candidates] - ref_boxes[i]).max(axis=1) / BOX_TOL[0])
    j = candidates[np.argmin(err)]
    free[j] = False
    aligned_boxes[i], aligned_scores[i], aligned_labels[i] = boxes[j], scores[j], labels[j]
  return aligned_boxes, aligned_scores, aligned_labels, len(scores)


def run(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], report: Any) -> None:
  """Compares every output of every case of a retinanet fixture."""
  names = common.cases(arrays, meta)
  model = build(meta, [x.shape[-1] for x in common.pyramid(arrays, names[0])])
  variables = common.convert_weights(arrays, variable_shapes(model), report, names)
  if variables is None:
    return
  net = model.flax_model
  m = model.config.model
  num_classes = model.num_classes

  @jax.jit
  def forward(feats):
    def body(mod, f):
      pyramid = mod.neck(f)
      cls, reg = mod.bbox_head(pyramid)
      return pyramid, cls, reg
    return net.apply(variables, feats, method=body)

  base_test_cfg = dict(m.test_cfg.to_dict())
  for case in names:
    feats = [jnp.asarray(x) for x in common.pyramid(arrays, case)]
    pyramid, cls_logits, box_deltas = jax.device_get(forward(feats))
    sizes = [tuple(p.shape[1:3]) for p in pyramid]
    level_anchors = [np.asarray(a) for a in model.anchor_generator.grid_anchors(sizes)]
    anchors = jnp.asarray(np.concatenate(level_anchors))
    bounds = np.cumsum([0] + [len(a) for a in level_anchors])
    ours: Dict[str, Tuple[str, Any, Dict[str, Any]]] = {}
    for i, p in enumerate(pyramid):
      b, h, w, _ = p.shape
      ours[f"neck/l{i}"] = ("tensor", common.nchw(p), {})
      ours[f"cls_score/l{i}"] = ("tensor", common.nchw(cls_logits[i].reshape(b, h, w, -1)), {})
      ours[f"bbox_pred/l{i}"] = ("tensor", common.nchw(box_deltas[i].reshape(b, h, w, -1)), {})
      ours[f"anchors/l{i}"] = ("exact", level_anchors[i], {})

    img_shape = arrays[f"in/{case}/img_shape"].astype(np.int32)
    pad_shape = arrays[f"in/{case}/pad_shape"].astype(np.int32)
    logits_all = jnp.concatenate(cls_logits, axis=1)
    deltas_all = jnp.concatenate(box_deltas, axis=1)

    @jax.jit
    def image_terms(logits, deltas, pad, img, gt, gt_labels):
      """One image's targets, assignment and per-level loss sums (padded gts: label -1)."""
      valid = jnp.concatenate(model.anchor_generator.valid_flags(sizes, pad))
      mask = anchor_inside_flags(anchors, valid, img, m.train_cfg.allowed_border)
      t = model.anchor_targets(anchors, mask, gt, gt_labels)
      focal = losses.sigmoid_focal_loss(logits, t["cls_targets"], m.loss.focal_gamma, m.loss.focal_alpha)
      box = losses.box_regression_loss(deltas, t["box_targets"], m.loss.box_loss, m.loss.smooth_l1_beta)
      cls_sums = jnp.stack([losses.weighted_sum(focal[s:e], t["cls_weights"][s:e])
                            for s, e in zip(bounds[:-1], bounds[1:])])
      box_sums = jnp.stack([losses.weighted_sum(box[s:e], t["box_weights"][s:e])
                            for s, e in zip(bounds[:-1], bounds[1:])])
      result = model.assigner.assign(anchors, gt, gt_labels, mask)
      return dict(cls_sums=cls_sums, box_sums=box_sums, num_pos=t["num_pos"], valid=valid, mask=mask,
                  gt_inds=result.gt_inds, max_overlaps=result.max_overlaps, labels=result.labels,
                  cls_weights=t["cls_weights"], box_targets=t["box_targets"])

    images = _images(arrays, case)
    max_gts = max(len(arrays[f"in/{case}/gt_labels/img{b}"]) for b in images)

    def losses_for(drop_first_gt: bool):
      cls_sums, box_sums, num_pos = [], [], []
      for b in images:
        gt = arrays[f"in/{case}/gt_bboxes/img{b}"].astype(np.float32)
        gt_labels = arrays[f"in/{case}/gt_labels/img{b}"].astype(np.int32)
        if drop_first_gt:
          gt, gt_labels = gt[1:], gt_labels[1:]
        pad = max_gts - len(gt_labels)
        gt = np.concatenate([gt, np.zeros((pad, 4), np.float32)])
        gt_labels = np.concatenate([gt_labels, np.full((pad,), -1, np.int32)])
        t = jax.device_get(image_terms(logits_all[b], deltas_all[b], pad_shape[b], img_shape[b], gt, gt_labels))
        cls_sums.append(t["cls_sums"])
        box_sums.append(t["box_sums"])
        num_pos.append(float(t["num_pos"]))
        if not drop_first_gt:
          gt_inds = np.where(t["mask"], t["gt_inds"], -2)
          pos = np.nonzero(gt_inds > 0)[0]
          prefix = f"assign/img{b}/"
          ours[prefix + "valid_flags"] = ("exact", t["valid"].astype(np.uint8), {})
          ours[prefix + "gt_inds"] = ("exact", gt_inds, {})
          ours[prefix + "max_overlaps"] = ("tensor", t["max_overlaps"], {})
          ours[prefix + "labels"] = ("exact", np.where(gt_inds > 0, t["labels"], num_classes), {})
          ours[prefix + "label_weights"] = ("tensor", t["cls_weights"], {})
          ours[prefix + "pos_inds"] = ("exact", pos, {})
          ours[prefix + "pos_bbox_targets"] = ("pos_targets", t["box_targets"], {"pos": pos})
      avg_factor = sum(max(n, 1.0) for n in num_pos)
      cls_levels = m.loss.cls_weight * np.sum(cls_sums, axis=0) / avg_factor
      box_levels = m.loss.box_weight * np.sum(box_sums, axis=0) / avg_factor
      return cls_levels, box_levels, avg_factor

    cls_levels, box_levels, avg_factor = losses_for(False)
    ours.update({"loss_cls_per_level": ("tensor", cls_levels, {}), "loss_bbox_per_level": ("tensor", box_levels, {}),
                 "loss_cls": ("tensor", cls_levels.sum(), {}), "loss_bbox": ("tensor", box_levels.sum(), {}),
                 "avg_factor": ("tensor", avg_factor, {})})
    cls_levels, box_levels, _ = losses_for(True)
    ours["loss_without_tiny_gt/loss_cls"] = ("tensor", cls_levels.sum(), {})
    ours["loss_without_tiny_gt/loss_bbox"] = ("tensor", box_levels.sum(), {})

    ones = np.ones_like(img_shape, np.float32)
    per_level = [(np.asarray(c), np.asarray(r)) for c, r in zip(cls_logits, box_deltas)]
    for stored, version in DET_VERSIONS.items():
      cfg = TestConfig(**{**base_test_cfg, "version": version})
      detect = jax.jit(lambda c, r, a, s, sc, cfg=cfg: retinanet_detections(c, r, a, s, sc, model.box_coder, cfg))
      dets = jax.device_get(detect(cls_logits, box_deltas, [jnp.asarray(a) for a in level_anchors], img_shape,
                                   ones))
      for b in range(img_shape.shape[0]):
        ours[f"{stored}/img{b}"] = ("dets", {k: v[b] for k, v in dets.items()}, {})
    for stored, version in CAND_VERSIONS.items():
      cfg = TestConfig(**{**base_test_cfg, "version": version})
      select = jax.jit(jax.vmap(lambda c, cfg=cfg: level_candidates(c, cfg)))
      chosen = [jax.device_get(select(jnp.asarray(c))) for c, _ in per_level]
      for b in range(img_shape.shape[0]):
        for i in range(len(per_level)):
          anchor_index, labels, _, valid = (x[b] for x in chosen[i])
          if version == "mmdet3":
            ours[f"{stored}/img{b}/anchor_inds_l{i}"] = ("set", anchor_index[valid] * num_classes + labels[valid],
                                                         {"combine": f"{stored}/img{b}/labels_l{i}"})
          else:
            ours[f"{stored}/img{b}/topk_anchor_inds_l{i}"] = ("set", np.unique(anchor_index), {})

    _compare_all(arrays, case, ours, num_classes, report)


def _compare_all(arrays, case, ours, num_classes, report) -> None:
  done = set()
  for key in common.outputs_of(arrays, case):
    if key in done:
      continue
    name = key.split("/", 2)[2]
    ref = arrays[key]
    det = re.fullmatch(r"(det\w*/img\d+)/(bboxes|scores|labels)", name)
    if det:
      group = det[1]
      if group not in ours:
        report.fail(key, "no such post-processing version")
        continue
      base = f"out/{case}/{group}/"
      keys = [base + k for k in ("bboxes", "scores", "labels")]
      if not all(k in arrays for k in keys):
        report.fail(key, "a detection list needs bboxes, scores and labels")
        continue
      ref_boxes, ref_scores, ref_labels = (arrays[k] for k in keys)
      boxes, scores, labels, n = _align_detections(ours[group][1], ref_boxes, ref_scores, ref_labels)
      report.exact(base + "count", np.asarray(n), np.asarray(len(ref_scores)))
      report.tensor(keys[0], boxes, ref_boxes, atol=BOX_TOL[0], rtol=BOX_TOL[1])
      report.tensor(keys[1], scores, ref_scores, atol=SCORE_TOL[0], rtol=SCORE_TOL[1])
      report.exact(keys[2], labels, ref_labels)
      done.update(keys)
      continue
    label_key = re.fullmatch(r"(cand/img\d+)/labels_l(\d+)", name)
    if label_key:
      name = f"{label_key[1]}/anchor_inds_l{label_key[2]}"
      key = f"out/{case}/{name}"
      if key in done:
        continue
      ref = arrays[key]
    if name not in ours:
      report.fail(key, "no comparison defined for this output")
      continue
    kind, value, extra = ours[name]
    if kind == "tensor":
      report.tensor(key, value, ref)
    elif kind == "exact":
      report.exact(key, np.asarray(value).astype(ref.dtype), ref)
    elif kind == "pos_targets":
      pos = extra["pos"]
      stored_pos = arrays[key.replace("pos_bbox_targets", "pos_inds")]
      if not np.array_equal(np.sort(pos), np.sort(stored_pos)):
        report.fail(key, "positive anchors differ (see pos_inds)")
      else:
        report.tensor(key, value[stored_pos], ref)
    elif kind == "set":
      if "combine" in extra:
        labels_key = f"out/{case}/{extra['combine']}"
        ref = ref.astype(np.int64) * num_classes + arrays[labels_key].astype(np.int64)
        done.add(labels_key)
      report.exact(key + (" (+labels, as a set)" if "combine" in extra else " (as a set)"),
                   np.sort(np.asarray(value).astype(np.int64)), np.sort(ref.astype(np.int64)))
    done.add(key)
