"""Parity runner of ``mask_rcnn`` fixtures (``shared/docs/fixtures.md``, "Mask R-CNN fixtures").

Every stage starts from the fixture's stored inputs of that stage (the stored RPN outputs for the proposals,
the stored proposals as RoIs, the stored detections for the mask head, the stored samples for the training
losses), so that each comparison tests one stage. Lists (proposals, detections) are compared as sets: matched
by anchor index or (RoI, label), then boxes to 1e-3 px and scores to 1e-5.
"""

import dataclasses
from typing import Any, Mapping, Sequence, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from heads.detection.anchors import AnchorGenerator
from heads.detection.assigner import MaxIoUAssigner
from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.mask_ops import mask_targets, paste_mask_probs
from heads.detection.mask_rcnn_convert import convert_mask_rcnn_heads
from heads.detection.proposals import ProposalConfig, image_proposals
from heads.detection.rcnn_postprocess import RCNNTestConfig, rcnn_detections
from heads.detection.roi_align import roi_levels
from heads.detection.roi_heads import FCNMaskHead, Shared2FCBBoxHead
from heads.detection.rpn_head import RPNHead
from heads.detection.sampler import SamplerConfig
from heads.fpn import FPN
from projects.detection.models.mask_rcnn import (MaskRCNN, MaskRCNNSettings, loss_terms, mask_loss_sum,
                                          rcnn_loss_terms, rpn_loss_terms)
from projects.parity.report import BOX_TOL, SCORE_TOL, Report

NEAR_THRESHOLD = 1e-5
_PASTE = jax.jit(paste_mask_probs, static_argnums=2)


class _NoBackbone(nn.Module):
  """Stands in for the backbone: the fixtures start from the pyramid."""

  def __call__(self, x, train=False):
    raise ValueError("the parity model has no backbone")


def _nchw(x: Any) -> np.ndarray:
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def build(meta: Mapping[str, Any], roi_max_samples: int, mask_roi_max_samples: int) -> MaskRCNN:
  """The network of the fixture's ``mm_config`` (widths, classes and train/test settings)."""
  c = meta["mm_config"]
  rpn, roi, train, test = c["rpn_head"], c["roi_head"], c["train_cfg"], c["test_cfg"]
  ag = rpn["anchor_generator"]
  num_classes = roi["bbox_head"]["num_classes"]

  def assigner(a):
    return MaxIoUAssigner(pos_iou_thr=a["pos_iou_thr"], neg_iou_thr=a["neg_iou_thr"],
                          min_pos_iou=a["min_pos_iou"], match_low_quality=a["match_low_quality"])

  def proposal_cfg(p):
    return ProposalConfig(nms_pre=p["nms_pre"], max_per_img=p["max_per_img"],
                          iou_threshold=p["nms"]["iou_threshold"], min_bbox_size=p["min_bbox_size"])

  coder = lambda b: DeltaXYWHBBoxCoder(tuple(b["target_means"]), tuple(b["target_stds"]))
  rc = test["rcnn"]
  settings = MaskRCNNSettings(
      anchor_generator=AnchorGenerator(strides=tuple(ag["strides"]), ratios=tuple(ag["ratios"]),
                                       octave_base_scale=float(ag["scales"][0]), scales_per_octave=1),
      rpn_coder=coder(rpn["bbox_coder"]), rcnn_coder=coder(roi["bbox_head"]["bbox_coder"]),
      rpn_assigner=assigner(train["rpn"]["assigner"]), rcnn_assigner=assigner(train["rcnn"]["assigner"]),
      rpn_sampler=SamplerConfig(train["rpn"]["sampler"]["num"], train["rpn"]["sampler"]["pos_fraction"]),
      rcnn_sampler=SamplerConfig(train["rcnn"]["sampler"]["num"], train["rcnn"]["sampler"]["pos_fraction"]),
      rpn_train=proposal_cfg(train["rpn_proposal"]), rpn_test=proposal_cfg(test["rpn"]),
      rcnn_test=RCNNTestConfig(score_thr=rc["score_thr"], iou_threshold=rc["nms"]["iou_threshold"],
                               max_per_img=rc["max_per_img"], mask_thr_binary=rc["mask_thr_binary"]),
      roi_strides=tuple(roi["bbox_roi_extractor"]["featmap_strides"]),
      bbox_roi_size=roi["bbox_roi_extractor"]["roi_layer"]["output_size"],
      mask_roi_size=roi["mask_roi_extractor"]["roi_layer"]["output_size"],
      mask_size=train["rcnn"]["mask_size"], roi_max_samples=roi_max_samples,
      mask_roi_max_samples=mask_roi_max_samples)
  neck = c["neck"]
  return MaskRCNN(
      backbone=_NoBackbone(),
      neck=FPN(out_channels=neck["out_channels"], num_outs=neck["num_outs"]),
      rpn_head=RPNHead(num_anchors=len(ag["ratios"]), feat_channels=rpn["feat_channels"]),
      bbox_head=Shared2FCBBoxHead(num_classes=num_classes, fc_out_channels=roi["bbox_head"]["fc_out_channels"]),
      mask_head=FCNMaskHead(num_classes=num_classes, conv_out_channels=roi["mask_head"]["conv_out_channels"],
                            num_convs=roi["mask_head"]["num_convs"]),
      settings=settings)


def needed_samples(rois: np.ndarray, strides: Sequence[int], output_size: int) -> int:
  """The largest adaptive sample count per bin and axis among ``(R, 4)`` RoIs at their mapped levels."""
  levels = np.asarray(roi_levels(jnp.asarray(rois, jnp.float32), len(strides)))
  scale = np.float32(1.0) / np.asarray(strides, np.float32)[levels]
  size = np.maximum(rois[:, 2:] * scale[:, None] - rois[:, :2] * scale[:, None], 0)
  return int(max(1, np.ceil(size / np.float32(output_size)).max())) if len(rois) else 1


def _padded(fn, rows: int):
  """``fn(boxes, batch_index)`` on RoIs zero-padded to a multiple of ``rows`` (fewer compiled shapes)."""
  def call(boxes, batch_index):
    n = len(boxes)
    size = max(rows, -(-n // rows) * rows)
    b = np.zeros((size, 4), np.float32)
    b[:n] = boxes
    i = np.zeros(size, np.int32)
    i[:n] = batch_index
    return jax.tree.map(lambda x: np.asarray(x)[:n], fn(jnp.asarray(b), jnp.asarray(i)))
  return call


def _match(report: Report, name: str, keys_ours: np.ndarray, keys_ref: np.ndarray,
           fields: Sequence[Tuple[str, np.ndarray, np.ndarray, Tuple[float, float]]]) -> None:
  """Set comparison: ``keys`` identify entries; matched entries' fields compared within tolerance."""
  ours_map = {tuple(np.atleast_1d(k)): i for i, k in enumerate(keys_ours)}
  found = [ours_map.get(tuple(np.atleast_1d(k))) for k in keys_ref]
  missing = sum(f is None for f in found)
  extra = len(keys_ours) - (len(keys_ref) - missing)
  if missing or extra:
    report.fail(f"{name}/set", f"{missing} stored entries not found, {extra} extra of ours")
    return
  report.exact(f"{name}/set", np.ones(len(keys_ref)), np.ones(len(keys_ref)))
  idx = np.asarray(found, np.int64)
  for field, ours, ref, (atol, rtol) in fields:
    if atol == 0 and rtol == 0:
      report.exact(f"{name}/{field}", np.asarray(ours)[idx], ref)
      continue
    report.tensor(f"{name}/{field}", np.asarray(ours)[idx], ref, atol=atol, rtol=rtol)


def run(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], report: Report) -> None:
  """Compares every stored stage of every case of a ``mask_rcnn`` fixture."""
  sd = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
  params, skipped = convert_mask_rcnn_heads(sd)
  if skipped:
    report.fail("convert", f"unconverted keys: {skipped[:5]}")
  for case in meta["cases"]:
    _run_case(arrays, meta, case, {"params": params}, report)


def _run_case(arrays, meta, case, variables, report: Report) -> None:
  inp = lambda k: arrays[f"in/{case}/{k}"]
  out = lambda k: arrays[f"out/{case}/{k}"]
  has = lambda k: f"out/{case}/{k}" in arrays
  prefix = f"{case}/"
  img_shape = inp("img_shape").astype(np.int32)
  batch = img_shape.shape[0]
  cm = meta["mm_config"]
  strides = cm["roi_head"]["bbox_roi_extractor"]["featmap_strides"]
  bbox_size = cm["roi_head"]["bbox_roi_extractor"]["roi_layer"]["output_size"]
  mask_size = cm["roi_head"]["mask_roi_extractor"]["roi_layer"]["output_size"]

  # RoIs the RoI extractors see, for a static sample bound that makes RoIAlign exact on them.
  all_rois = [out("probe/rois")[:, 1:], out("train/rcnn/rois")[:, 1:], out("train/mask/pos_rois")[:, 1:]]
  for b in range(batch):
    for key in ("proposals", "proposals_mmdet2", "det", "mask"):
      all_rois.append(out(f"{key}/img{b}/bboxes"))
  all_rois = np.concatenate(all_rois).astype(np.float32)
  model = build(meta, needed_samples(all_rois, strides, bbox_size), needed_samples(all_rois, strides, mask_size))
  s = model.settings

  # 1. Neck, RPN head, anchors.
  feats = [jnp.asarray(np.transpose(inp(f"feat{i}"), (0, 2, 3, 1))) for i in range(4)]
  stage1 = jax.jit(lambda v, f: model.apply(v, f, method=MaskRCNN.pyramid_forward))(variables, feats)
  pyramid = stage1["pyramid"]
  num_levels = len(pyramid)
  for i in range(num_levels):
    if has(f"neck/l{i}"):  # a derived fixture may leave a level to the RPN outputs below, which depend on it
      report.tensor(prefix + f"neck/l{i}", _nchw(pyramid[i]), out(f"neck/l{i}"))
    h, w = pyramid[i].shape[1:3]
    a = s.anchor_generator.num_base_anchors
    report.tensor(prefix + f"rpn_cls/l{i}", _nchw(stage1["rpn_logits"][i].reshape(batch, h, w, a)),
                  out(f"rpn_cls/l{i}"))
    report.tensor(prefix + f"rpn_reg/l{i}", _nchw(stage1["rpn_deltas"][i].reshape(batch, h, w, a * 4)),
                  out(f"rpn_reg/l{i}"))
    report.exact(prefix + f"anchors/l{i}", np.asarray(stage1["anchors"][i]), out(f"anchors/l{i}"))
  anchors = [jnp.asarray(out(f"anchors/l{i}")) for i in range(num_levels)]
  sizes = [tuple(p.shape[1:3]) for p in pyramid]

  # Stored RPN outputs in our layout: (B, N_l) logits, (B, N_l, 4) deltas.
  rpn_logits = [jnp.asarray(np.transpose(out(f"rpn_cls/l{i}"), (0, 2, 3, 1)).reshape(batch, -1))
                for i in range(num_levels)]
  rpn_deltas = [jnp.asarray(np.transpose(out(f"rpn_reg/l{i}"), (0, 2, 3, 1)).reshape(batch, -1, 4))
                for i in range(num_levels)]

  # 2. Proposals (both versions, test and training settings).
  proposal_fn = jax.jit(image_proposals, static_argnums=(4, 5))

  def proposals(b, cfg):
    p = lambda l, d, sz: proposal_fn(l, d, anchors, sz, s.rpn_coder, cfg)
    p = p([x[b] for x in rpn_logits], [x[b] for x in rpn_deltas], jnp.asarray(img_shape[b]))
    v = np.asarray(p["valid"])
    return {k: np.asarray(x)[v] for k, x in p.items()}

  versions = {"proposals": dataclasses.replace(s.rpn_test, version="mmdet3"),
              "proposals_mmdet2": dataclasses.replace(s.rpn_test, version="mmdet2"),
              "proposals_train": dataclasses.replace(s.rpn_train, version="mmdet3"),
              "proposals_train_mmdet2": dataclasses.replace(s.rpn_train, version="mmdet2")}
  for key, cfg in versions.items():
    for b in range(batch):
      if not has(f"{key}/img{b}/bboxes"):
        continue
      p = proposals(b, cfg)
      name = prefix + f"{key}/img{b}"
      fields = [("bboxes", p["boxes"], out(f"{key}/img{b}/bboxes"), BOX_TOL),
                ("scores", p["scores"], out(f"{key}/img{b}/scores"), SCORE_TOL)]
      if has(f"{key}/img{b}/levels"):
        fields.append(("levels", p["levels"], out(f"{key}/img{b}/levels"), (0.0, 0.0)))
      _match(report, name, p["anchor_index"], out(f"{key}/img{b}/anchor_inds"), fields)
      for i in range(num_levels):
        if has(f"{key}/img{b}/topk_inds_l{i}"):
          ref = out(f"{key}/img{b}/topk_inds_l{i}")
          top = np.asarray(jax.lax.top_k(jax.nn.sigmoid(rpn_logits[i][b]), len(ref))[1])
          report.exact(name + f"/topk_inds_l{i}", np.sort(top), np.sort(ref))

  # 3. RoI head on the given RoIs (the test proposals of both images), probes.
  bbox_jit = jax.jit(lambda r, i: model.apply(variables, pyramid, r, i, method=MaskRCNN.bbox_forward))
  bbox_forward = _padded(bbox_jit, 1024)

  props = [out(f"proposals/img{b}/bboxes") for b in range(batch)]
  rois = np.concatenate(props)
  bidx = np.concatenate([np.full(len(p), b) for b, p in enumerate(props)])
  report.exact(prefix + "rcnn/roi_levels", np.asarray(roi_levels(jnp.asarray(rois), len(strides))),
               out("rcnn/roi_levels"))
  head = bbox_forward(rois, bidx)
  report.tensor(prefix + "rcnn/cls_score", head["cls_logits"], out("rcnn/cls_score"))
  report.tensor(prefix + "rcnn/bbox_pred", head["deltas"], out("rcnn/bbox_pred"))
  sub = out("rcnn/roi_feats_subset_inds")
  report.tensor(prefix + "rcnn/roi_feats_subset", _nchw(head["roi_feats"])[sub], out("rcnn/roi_feats_subset"))
  report.tensor(prefix + "rcnn/shared_fc_out_subset", np.asarray(head["shared_fc_out"])[sub],
                out("rcnn/shared_fc_out_subset"))
  probe = out("probe/rois")
  report.exact(prefix + "probe/levels", np.asarray(roi_levels(jnp.asarray(probe[:, 1:]), len(strides))),
               out("probe/levels"))
  probe_head = bbox_forward(probe[:, 1:], probe[:, 0])
  report.tensor(prefix + "probe/roi_feats7", _nchw(probe_head["roi_feats"]), out("probe/roi_feats7"))
  n14 = out("probe/roi_feats14").shape[0]
  mask_jit = jax.jit(lambda r, i: model.apply(variables, pyramid, r, i, method=MaskRCNN.mask_forward))
  mask_padded = _padded(mask_jit, 128)
  mask_fn = lambda v, p, r, i: mask_padded(np.asarray(r), np.asarray(i))
  probe_mask = mask_fn(variables, pyramid, jnp.asarray(probe[:n14, 1:]), jnp.asarray(probe[:n14, 0], jnp.int32))
  report.tensor(prefix + "probe/roi_feats14", _nchw(probe_mask["roi_feats"]), out("probe/roi_feats14"))

  # Detections (stored head outputs for det; our head on the mmdet2 proposals for det_mmdet2).
  det_fn = jax.jit(lambda c, d, r, v, sz: rcnn_detections(c, d, r, v, sz, s.rcnn_coder, s.rcnn_test))
  start = 0
  for b in range(batch):
    n = len(props[b])
    sources = {"det": (out("rcnn/cls_score")[start:start + n], out("rcnn/bbox_pred")[start:start + n], props[b])}
    start += n
    p2 = out(f"proposals_mmdet2/img{b}/bboxes")
    h2 = bbox_forward(p2, np.full(len(p2), b))
    sources["det_mmdet2"] = (h2["cls_logits"], h2["deltas"], p2)
    for key, (cls, deltas, r) in sources.items():
      d = det_fn(jnp.asarray(cls), jnp.asarray(deltas), jnp.asarray(r), jnp.ones(len(r), bool),
                 jnp.asarray(img_shape[b]))
      v = np.asarray(d["valid"])
      d = {k: np.asarray(x)[v] for k, x in d.items()}
      keys = np.stack([d["roi_index"], d["labels"]], axis=1)
      ref_keys = np.stack([out(f"{key}/img{b}/roi_inds"), out(f"{key}/img{b}/labels")], axis=1)
      _match(report, prefix + f"{key}/img{b}", keys, ref_keys,
             [("bboxes", d["boxes"], out(f"{key}/img{b}/bboxes"), BOX_TOL),
              ("scores", d["scores"], out(f"{key}/img{b}/scores"), SCORE_TOL)])

  # 4. Mask head on the given detections; pasted masks.
  stats = meta["cases"][case].get("stats", {}).get("mask", {})
  for b in range(batch):
    h, w = (int(x) for x in img_shape[b])
    boxes, labels = out(f"mask/img{b}/bboxes"), out(f"mask/img{b}/labels")
    m = mask_fn(variables, pyramid, jnp.asarray(boxes), jnp.full(len(boxes), b, jnp.int32))
    logits = np.transpose(np.asarray(m["logits"]), (0, 3, 1, 2))  # (K, classes, 28, 28)
    k = out(f"mask/img{b}/logits").shape[0]
    report.tensor(prefix + f"mask/img{b}/logits", logits[:k], out(f"mask/img{b}/logits"))
    report.tensor(prefix + f"mask/img{b}/logits_label", logits[np.arange(len(labels)), labels],
                  out(f"mask/img{b}/logits_label"))
    report.tensor(prefix + f"mask/img{b}/mask_feats", _nchw(m["roi_feats"])[:1], out(f"mask/img{b}/mask_feats"))
    probs = jax.nn.sigmoid(jnp.asarray(out(f"mask/img{b}/logits_label")))
    _compare_masks(report, prefix + f"mask/img{b}/masks", probs, boxes, (h, w), out(f"mask/img{b}/masks"),
                   stats.get(f"img{b}", {}).get("near_threshold_pixels_1e-5"))
    # End to end: our mask head on all stored detections, pasted.
    dboxes, dlabels = out(f"det/img{b}/bboxes"), out(f"det/img{b}/labels")
    md = mask_fn(variables, pyramid, jnp.asarray(dboxes), jnp.full(len(dboxes), b, jnp.int32))
    probs = jax.nn.sigmoid(np.asarray(md["logits"])[np.arange(len(dlabels)), :, :, dlabels])
    _compare_masks(report, prefix + f"det/img{b}/masks", probs, dboxes, (h, w), out(f"det/img{b}/masks"), None)

  # 5. Training: assignment, stored samples, targets and losses.
  _training(arrays, meta, case, model, variables, pyramid, anchors, sizes, rpn_logits, rpn_deltas, report,
            bbox_forward, mask_padded)

  # 6. End to end through the jitted forward pass (from the pyramid): predictions and sampler-free losses.
  _end_to_end(arrays, case, model, variables, feats, report)


def _compare_masks(report, name, probs, boxes, shape, ref, counted) -> None:
  """Pasted masks equal up to the pixels whose probability is within 1e-5 of the threshold."""
  n = len(boxes)
  p = np.zeros((128,) + tuple(np.shape(probs)[1:]), np.float32)
  p[:n] = np.asarray(probs)
  b = np.zeros((128, 4), np.float32)
  b[:n] = boxes
  b[n:] = [0, 0, 1, 1]
  soft = np.asarray(_PASTE(jnp.asarray(p), jnp.asarray(b), tuple(int(x) for x in shape)))[:n]
  ours = (soft >= 0.5).astype(np.uint8)
  near = int(np.sum(np.abs(soft - 0.5) < NEAR_THRESHOLD))
  allowed = near if counted is None else max(int(counted), 0)
  wrong = ours != ref
  if np.any(wrong & (np.abs(soft - 0.5) >= NEAR_THRESHOLD)):
    report.fail(name, f"{int(wrong.sum())} pixels differ, "
                      f"{int(np.sum(wrong & (np.abs(soft - 0.5) >= NEAR_THRESHOLD)))} not near the threshold")
    return
  report.exact(name, ours, ref, allowed=allowed)


def _training(arrays, meta, case, model, variables, pyramid, anchors, sizes, rpn_logits, rpn_deltas,
              report: Report, bbox_forward, mask_forward) -> None:
  inp = lambda k: arrays[f"in/{case}/{k}"]
  out = lambda k: arrays[f"out/{case}/{k}"]
  prefix = f"{case}/train/"
  s = model.settings
  img_shape = inp("img_shape").astype(np.int32)
  pad_shape = inp("pad_shape").astype(np.int32)
  batch = img_shape.shape[0]
  flat = jnp.concatenate(anchors)
  valid = np.concatenate([np.asarray(v) for v in s.anchor_generator.valid_flags(sizes, jnp.asarray(pad_shape))],
                         axis=-1)
  logits = np.concatenate([np.asarray(x) for x in rpn_logits], axis=1)
  deltas = np.concatenate([np.asarray(x) for x in rpn_deltas], axis=1)
  level_of = np.concatenate([np.full(len(a), i) for i, a in enumerate(anchors)])
  assign = jax.jit(lambda a, g, l, m: s.rpn_assigner.assign(a, g, l, m))
  num_levels = len(anchors)
  cls_levels = np.zeros(num_levels)
  box_levels = np.zeros(num_levels)
  avg = 0
  for b in range(batch):
    gts = inp(f"gt_bboxes/img{b}").astype(np.float32)
    report.exact(prefix + f"rpn/img{b}/valid_flags", valid[b].astype(np.uint8), out(f"train/rpn/img{b}/valid_flags"))
    res = assign(flat, jnp.asarray(gts), jnp.zeros(len(gts), jnp.int32), jnp.asarray(valid[b]))
    gt_inds = np.where(valid[b], np.asarray(res.gt_inds), -2)
    report.exact(prefix + f"rpn/img{b}/gt_inds", gt_inds, out(f"train/rpn/img{b}/gt_inds"))
    pos, neg = out(f"train/rpn/img{b}/pos_inds"), out(f"train/rpn/img{b}/neg_inds")
    report.exact(prefix + f"rpn/img{b}/pos_inds_all_positives", np.sort(pos), np.flatnonzero(gt_inds > 0))
    report.exact(prefix + f"rpn/img{b}/neg_inds_are_negatives", gt_inds[neg], np.zeros(len(neg), np.int64))
    report.tensor(prefix + f"rpn/img{b}/pos_max_overlaps", np.asarray(res.max_overlaps)[pos],
                  out(f"train/rpn/img{b}/pos_max_overlaps"))
    targets = s.rpn_coder.encode(flat[pos], jnp.asarray(gts)[gt_inds[pos] - 1])
    report.tensor(prefix + f"rpn/img{b}/pos_bbox_targets", targets, out(f"train/rpn/img{b}/pos_bbox_targets"))
    n = logits.shape[1]
    labels = np.zeros(n, np.float32)
    labels[pos] = 1
    weights = np.zeros(n, np.float32)
    weights[pos] = 1
    weights[neg] = 1
    box_targets = np.zeros((n, 4), np.float32)
    box_targets[pos] = np.asarray(targets)
    for i in range(num_levels):
      sel = level_of == i
      t = rpn_loss_terms(jnp.asarray(logits[b][sel]), jnp.asarray(deltas[b][sel]), jnp.asarray(labels[sel]),
                         jnp.asarray(weights[sel]), jnp.asarray(box_targets[sel]), jnp.asarray(labels[sel]))
      cls_levels[i] += float(t["loss_rpn_cls"])
      box_levels[i] += float(t["loss_rpn_bbox"])
    avg += len(pos) + len(neg)
  report.tensor(prefix + "rpn/avg_factor", np.float32(avg), out("train/rpn/avg_factor"))
  report.tensor(f"{case}/loss/loss_rpn_cls_per_level", cls_levels / avg, out("loss/loss_rpn_cls_per_level"))
  report.tensor(f"{case}/loss/loss_rpn_bbox_per_level", box_levels / avg, out("loss/loss_rpn_bbox_per_level"))
  report.tensor(f"{case}/loss/loss_rpn_cls", cls_levels.sum() / avg, out("loss/loss_rpn_cls"))
  report.tensor(f"{case}/loss/loss_rpn_bbox", box_levels.sum() / avg, out("loss/loss_rpn_bbox"))

  # RCNN: assignment over [gts; training proposals], stored samples, targets.
  num_classes = model.bbox_head.num_classes
  rcnn_assign = jax.jit(lambda p, g, l: s.rcnn_assigner.assign(p, g, l))
  rois, labels, pos_rows, bbox_targets, pos_gt, pos_lab, pos_img = [], [], [], [], [], [], []
  row = 0
  for b in range(batch):
    gts = inp(f"gt_bboxes/img{b}").astype(np.float32)
    gl = inp(f"gt_labels/img{b}").astype(np.int32)
    key = "proposals_train_mmdet2" if False else "proposals_train"
    props = out(f"{key}/img{b}/bboxes")
    res = rcnn_assign(jnp.asarray(props), jnp.asarray(gts), jnp.asarray(gl))
    cand = np.concatenate([gts, props])
    gt_inds = np.concatenate([np.arange(len(gts)) + 1, np.asarray(res.gt_inds)])
    overlaps = np.concatenate([np.ones(len(gts), np.float32), np.asarray(res.max_overlaps)])
    report.exact(prefix + f"rcnn/img{b}/gt_inds", gt_inds, out(f"train/rcnn/img{b}/gt_inds"))
    report.tensor(prefix + f"rcnn/img{b}/max_overlaps", overlaps, out(f"train/rcnn/img{b}/max_overlaps"))
    pos, neg = out(f"train/rcnn/img{b}/pos_inds"), out(f"train/rcnn/img{b}/neg_inds")
    report.exact(prefix + f"rcnn/img{b}/pos_inds_all_positives", np.sort(pos), np.flatnonzero(gt_inds > 0))
    report.exact(prefix + f"rcnn/img{b}/neg_inds_are_negatives", gt_inds[neg], np.zeros(len(neg), np.int64))
    report.exact(prefix + f"rcnn/img{b}/pos_assigned_gt_inds", gt_inds[pos] - 1,
                 out(f"train/rcnn/img{b}/pos_assigned_gt_inds"))
    sel = np.concatenate([pos, neg])
    rois.append(np.concatenate([np.full((len(sel), 1), b, np.float32), cand[sel]], axis=1))
    lab = np.full(len(sel), num_classes, np.int64)
    lab[:len(pos)] = gl[gt_inds[pos] - 1]
    labels.append(lab)
    tgt = np.zeros((len(sel), 4), np.float32)
    tgt[:len(pos)] = np.asarray(s.rcnn_coder.encode(jnp.asarray(cand[pos]), jnp.asarray(gts[gt_inds[pos] - 1])))
    bbox_targets.append(tgt)
    pos_rows.append(row + np.arange(len(pos)))
    pos_gt.append(gt_inds[pos] - 1)
    pos_lab.append(gl[gt_inds[pos] - 1])
    pos_img.append(np.full(len(pos), b))
    row += len(sel)
  rois, labels, bbox_targets = np.concatenate(rois), np.concatenate(labels), np.concatenate(bbox_targets)
  pos_rows = np.concatenate(pos_rows)
  report.tensor(prefix + "rcnn/rois", rois, out("train/rcnn/rois"), atol=BOX_TOL[0], rtol=BOX_TOL[1])
  report.exact(prefix + "rcnn/labels", labels, out("train/rcnn/labels"))
  report.exact(prefix + "rcnn/label_weights", np.ones(len(labels), np.float32), out("train/rcnn/label_weights"))
  report.tensor(prefix + "rcnn/bbox_targets", bbox_targets, out("train/rcnn/bbox_targets"))
  bw = np.zeros((len(labels), 4), np.float32)
  bw[pos_rows] = 1
  report.exact(prefix + "rcnn/bbox_weights", bw, out("train/rcnn/bbox_weights"))
  report.exact(prefix + "rcnn/pos_rows", pos_rows, out("train/rcnn/pos_rows"))
  stored_rois = out("train/rcnn/rois")
  head = bbox_forward(stored_rois[:, 1:], stored_rois[:, 0])
  report.tensor(prefix + "rcnn/cls_score", head["cls_logits"], out("train/rcnn/cls_score"))
  report.tensor(prefix + "rcnn/pos_bbox_pred", np.asarray(head["deltas"])[pos_rows], out("train/rcnn/pos_bbox_pred"))
  is_pos = np.zeros(len(labels), np.float32)
  is_pos[pos_rows] = 1
  d = np.asarray(head["deltas"]).reshape(len(labels), num_classes, 4)
  label_deltas = d[np.arange(len(labels)), np.minimum(labels, num_classes - 1)]
  t = rcnn_loss_terms(head["cls_logits"], jnp.asarray(label_deltas), jnp.asarray(labels),
                      jnp.ones(len(labels)), jnp.asarray(is_pos), jnp.asarray(bbox_targets))
  n = len(labels)
  report.tensor(f"{case}/loss/loss_cls", float(t["loss_cls"]) / n, out("loss/loss_cls"))
  report.tensor(f"{case}/loss/loss_bbox", float(t["loss_bbox"]) / n, out("loss/loss_bbox"))
  report.tensor(f"{case}/loss/acc", 100.0 * float(t["correct"]) / n, out("loss/acc"))

  # Mask targets and loss on the positive RoIs.
  pos_rois = out("train/mask/pos_rois")
  pos_gt, pos_lab, pos_img = np.concatenate(pos_gt), np.concatenate(pos_lab), np.concatenate(pos_img)
  report.tensor(prefix + "mask/pos_rois", rois[pos_rows], pos_rois, atol=BOX_TOL[0], rtol=BOX_TOL[1])
  report.exact(prefix + "mask/pos_labels", pos_lab, out("train/mask/pos_labels"))
  report.exact(prefix + "mask/pos_assigned_gt_inds", pos_gt, out("train/mask/pos_assigned_gt_inds"))
  targets = []
  for b in range(batch):
    sel = pos_rois[:, 0] == b
    gm = jnp.asarray(inp(f"gt_masks/img{b}"))
    targets.append(np.asarray(jax.jit(mask_targets, static_argnums=3)(
        gm, jnp.asarray(pos_rois[sel, 1:]), jnp.asarray(out("train/mask/pos_assigned_gt_inds")[sel]), s.mask_size)))
  targets = np.concatenate(targets)
  report.exact(prefix + "mask/mask_targets", targets.astype(np.uint8), out("train/mask/mask_targets"))
  m = mask_forward(pos_rois[:, 1:], pos_rois[:, 0])
  lab = out("train/mask/pos_labels")
  mlog = np.asarray(m["logits"])[np.arange(len(lab)), :, :, lab]
  report.tensor(prefix + "mask/mask_logits_label", mlog, out("train/mask/mask_logits_label"))
  loss = float(mask_loss_sum(jnp.asarray(mlog), jnp.asarray(targets), jnp.ones(len(lab)))) / targets.size
  report.tensor(f"{case}/loss/loss_mask", loss, out("loss/loss_mask"))


def _match_boxes(report: Report, name: str, ours: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> None:
  """Detections as sets without RoI indices: each stored one matched to ours by label and box (1e-3 px)."""
  used = np.zeros(len(ours["labels"]), bool)
  order = []
  for box, label in zip(ref["bboxes"], ref["labels"]):
    cand = np.flatnonzero((ours["labels"] == label) & ~used
                          & (np.abs(ours["boxes"] - box).max(axis=1) <= BOX_TOL[0]))
    if len(cand) == 0:
      order.append(-1)
      continue
    used[cand[0]] = True
    order.append(cand[0])
  order = np.asarray(order)
  missing, extra = int(np.sum(order < 0)), int(np.sum(~used))
  if missing or extra:
    report.fail(f"{name}/set", f"{missing} stored detections not found, {extra} extra of ours")
    return
  report.exact(f"{name}/set", np.ones(len(order)), np.ones(len(order)))
  report.tensor(f"{name}/bboxes", ours["boxes"][order], ref["bboxes"], atol=BOX_TOL[0], rtol=BOX_TOL[1])
  report.tensor(f"{name}/scores", ours["scores"][order], ref["scores"], atol=SCORE_TOL[0], rtol=SCORE_TOL[1])
  return order


def _end_to_end(arrays, case, model, variables, feats, report: Report) -> None:
  inp = lambda k: arrays[f"in/{case}/{k}"]
  out = lambda k: arrays[f"out/{case}/{k}"]
  prefix = f"{case}/end_to_end/"
  img_shape = jnp.asarray(inp("img_shape"), jnp.int32)
  batch = img_shape.shape[0]
  height, width = (int(x) for x in inp("batch_input_shape"))
  for version, key in (("mmdet3", "det"), ("mmdet2", "det_mmdet2")):
    fn = jax.jit(lambda v, f, sz: model.apply(v, f, False, image_size=sz, proposal_version=version,
                                              method=MaskRCNN.forward_features))
    dets = jax.tree.map(np.asarray, fn(variables, feats, img_shape)["detections"])
    for b in range(batch):
      v = dets["valid"][b]
      ours = {k: dets[k][b][v] for k in ("boxes", "scores", "labels", "mask_logits")}
      ref = {k: out(f"{key}/img{b}/{k}") for k in ("bboxes", "scores", "labels")}
      order = _match_boxes(report, prefix + f"{key}/img{b}", ours, ref)
      if key == "det" and order is not None:
        h, w = (int(x) for x in np.asarray(img_shape[b]))
        probs = jax.nn.sigmoid(jnp.asarray(ours["mask_logits"][order]))
        _compare_masks(report, prefix + f"det/img{b}/masks", probs, ours["boxes"][order], (h, w),
                       out(f"det/img{b}/masks"), None)

  # Training forward with our sampler: the losses that depend on the positives only must match.
  num_gts = max(len(inp(f"gt_labels/img{b}")) for b in range(batch))
  gt_boxes = np.zeros((batch, num_gts, 4), np.float32)
  gt_labels = np.full((batch, num_gts), -1, np.int32)
  gt_masks = np.zeros((batch, num_gts, height, width), np.uint8)
  for b in range(batch):
    n = len(inp(f"gt_labels/img{b}"))
    gt_boxes[b, :n] = inp(f"gt_bboxes/img{b}")
    gt_labels[b, :n] = inp(f"gt_labels/img{b}")
    m = inp(f"gt_masks/img{b}")
    gt_masks[b, :n, :m.shape[1], :m.shape[2]] = m
  # The stored losses are mmdet 3.3's: its training proposals drop zero-size boxes.
  settings = model.settings
  model = model.clone(settings=dataclasses.replace(
      settings, rpn_train=dataclasses.replace(settings.rpn_train, version="mmdet3")))
  fn = jax.jit(lambda v, f, sz, gb, gl, gm: loss_terms(model.apply(
      v, f, True, image_size=sz, gt_boxes=gb, gt_labels=gl, gt_masks=gm, method=MaskRCNN.forward_features,
      rngs={"dropout": jax.random.PRNGKey(0)})))
  terms = jax.tree.map(np.asarray, fn(variables, feats, img_shape, gt_boxes, gt_labels, gt_masks))
  for name in ("loss_rpn_bbox", "loss_bbox", "loss_mask"):
    report.tensor(prefix + f"loss/{name}", terms[name][0], out(f"loss/{name}"))
