"""Fixture runner for Semantic FPN and UperNet (kinds ``semantic_fpn``, ``upernet``).

Builds ``projects.segmentation.models.encoder_decoder.SegmentationModel`` from the fixture's ``mm_config`` through
``projects.parity.official_config.model_config_from_mm``, with the recorded pyramid standing in for the backbone,
converts ``sd/`` with ``heads.official.convert_state_dict`` and compares every stored output.
"""

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from heads.layers import resize_bilinear
from projects.common.model_io import variable_shapes
from projects.parity import common, official_config
from projects.segmentation.models.encoder_decoder import SegmentationModel, segmentation_loss

IGNORE_INDEX = 255
NEAR_TIE_KEY = "pred_pixels_with_top2_margin_below_1e-4"
# dbg/<case>/<name> -> the sub-module of decode_head whose output it is.
DEBUG_MODULES = {"psp_bottleneck": "bottleneck", "fpn_bottleneck": "fpn_bottleneck"}


def build(meta: Mapping[str, Any], channels) -> SegmentationModel:
  """Our segmentation model for ``meta["mm_config"]`` with a ``GivenPyramid`` of ``channels`` as backbone."""
  cfg = official_config.model_config_from_mm(meta["mm_config"])
  num_classes = cfg.pop("num_classes")
  cfg.pop("test_cfg", None)
  model_cfg = ml_collections.ConfigDict(dict(backbone=None, dtype="float32", norm_axis_name=None, **cfg))
  return SegmentationModel(ml_collections.ConfigDict({"model": model_cfg}), {"num_classes": num_classes},
                           backbone=common.GivenPyramid(tuple(channels)))


def _accuracy(logits: np.ndarray, labels: np.ndarray, ignored_count_as_wrong: bool) -> float:
  """mmseg accuracy (%) of (B, H, W, K) logits: 1.2.2 excludes ignored pixels, 0.12.0 counts them wrong."""
  valid = labels != IGNORE_INDEX
  correct = (np.argmax(logits, axis=-1) == labels) & valid
  total = labels.size if ignored_count_as_wrong else valid.sum()
  return 100.0 * correct.sum() / max(total, 1)


def run(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any], report: Any) -> None:
  """Compares every output of every case of a semantic_fpn / upernet fixture."""
  names = common.cases(arrays, meta)
  first = common.pyramid(arrays, names[0])
  model = build(meta, [x.shape[-1] for x in first])
  variables = common.convert_weights(arrays, variable_shapes(model), report, names)
  if variables is None:
    return
  net = model.flax_model
  aux_weight = (model.model_config.get("auxiliary_head") or {}).get("loss_weight", 1.0)

  @jax.jit
  def forward(feats):
    def body(m, f):
      x = m.neck(f) if m.neck is not None else f
      out = {"neck": x if m.neck is not None else (), "logits": m.decode_head(x)}
      if m.auxiliary_head is not None:
        out["aux_logits"] = m.auxiliary_head(x)
      return out
    out, state = net.apply(variables, feats, method=body, capture_intermediates=True, mutable=["intermediates"])
    inter = state["intermediates"].get("decode_head", {})
    out["dbg"] = {name: inter[module]["__call__"][0] for name, module in DEBUG_MODULES.items() if module in inter}
    return out

  for case in names:
    feats = [jnp.asarray(x) for x in common.pyramid(arrays, case)]
    out = jax.device_get(forward(feats))
    case_meta = (meta.get("cases") or {}).get(case, {})
    label_key = f"in/{case}/label"
    if label_key in arrays:
      labels = arrays[label_key].astype(np.int32)
      size = labels.shape[1:]
    else:
      labels, size = None, tuple(4 * d for d in feats[0].shape[1:3])
    resized = np.asarray(resize_bilinear(jnp.asarray(out["logits"]), size))
    aux_resized = (np.asarray(resize_bilinear(jnp.asarray(out["aux_logits"]), size))
                   if "aux_logits" in out else None)
    ties = int(case_meta.get(NEAR_TIE_KEY, 0))
    for key in common.outputs_of(arrays, case):
      _compare(report, key, key.split("/", 2)[2], arrays[key], out, resized, aux_resized, labels, ties,
               aux_weight)


def _compare(report, key, name, ref, out, resized, aux_resized, labels, ties, aux_weight) -> None:
  """One stored output against ours."""
  if name.startswith("neck/l"):
    level = int(name[len("neck/l"):])
    if level >= len(out["neck"]):
      report.fail(key, f"our neck has {len(out['neck'])} levels")
    else:
      report.tensor(key, common.nchw(out["neck"][level]), ref)
    return
  if name in ("logits", "aux_logits"):
    if name not in out:
      report.fail(key, "our model has no auxiliary head")
    else:
      report.tensor(key, common.nchw(out[name]), ref)
    return
  if name.startswith(tuple(DEBUG_MODULES)):
    if name not in out["dbg"]:
      report.fail(key, f"no {DEBUG_MODULES[name]} sub-module in our decode head")
    else:
      report.tensor(key, common.nchw(out["dbg"][name]), ref)
    return
  if name == "logits_resized":
    report.tensor(key, common.nchw(resized), ref)
    return
  if name == "pred":
    report.exact(key, np.argmax(resized, axis=-1).astype(ref.dtype), ref, allowed=ties)
    return
  if labels is None:
    report.fail(key, "the case has no in/<case>/label")
    return
  ours_labels = jnp.asarray(np.where(labels == IGNORE_INDEX, -1, labels))
  valid = int((labels != IGNORE_INDEX).sum())
  losses: Dict[str, Any] = {
      "loss/decode.loss_ce": lambda: segmentation_loss(jnp.asarray(resized), ours_labels, avg_non_ignore=False),
      "diag/decode_loss_ce_avg_non_ignore": lambda: segmentation_loss(jnp.asarray(resized), ours_labels,
                                                                      avg_non_ignore=True),
  }
  if aux_resized is not None:
    losses["loss/aux.loss_ce"] = lambda: aux_weight * segmentation_loss(jnp.asarray(aux_resized), ours_labels,
                                                                        avg_non_ignore=False)
  if name in losses:
    report.tensor(key, float(losses[name]()), ref)
    return
  # Accuracies: each near-tie pixel may flip one decision (100 / pixels %).
  accuracies = {"loss/decode.acc_seg": (resized, False, valid), "diag/decode_acc_seg_mmseg012": (resized, True,
                                                                                                   labels.size)}
  if aux_resized is not None:
    accuracies["loss/aux.acc_seg"] = (aux_resized, False, valid)
  if name in accuracies:
    logits, count_ignored, denominator = accuracies[name]
    slack = 100.0 * ties / max(denominator, 1) if logits is resized else 0.0
    report.tensor(key, _accuracy(logits, labels, count_ignored), ref, atol=1e-4 + slack)
    return
  report.fail(key, "no comparison defined for this output")
