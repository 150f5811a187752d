"""Official mmseg/mmdet models -> ours: config mapping and state_dict key mapping, in one place.

Used by the fixture runners (``heads.parity``), the whole-checkpoint converter
(``projects.common.model_io.convert_official_checkpoint``) and through it the predict commands.

* ``model_config_from_mm(mm_config)``: an mmseg ``EncoderDecoder`` / mmdet ``RetinaNet`` model config (the
  ``neck``, ``decode_head``, ``auxiliary_head``, ``bbox_head``, ``train_cfg``, ``test_cfg`` dicts of the official
  configs) -> the sections of our ``config.model`` (``projects.segmentation.model`` /
  ``projects.detection.model`` keys) plus ``num_classes``. Settings we do not implement raise ``ValueError``.
* ``convert_state_dict(state_dict, expected)``: official keys -> our ``params`` / ``batch_stats``. Each top-level
  prefix (``backbone``, ``neck``, ``decode_head``, ``auxiliary_head``, ``bbox_head``) has a converter in
  ``PREFIX_CONVERTERS``; other models register theirs there (e.g. ``rpn_head``, ``roi_head``). Every key is
  used, explicitly dropped (``num_batches_tracked``, the backbone's non-learned buffers) or reported by name.
"""

import dataclasses
import re
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from backbones.crossformer import convert as backbone_convert
from backbones.weights import tree
from heads.detection import mask_rcnn_convert

Path = Tuple[str, ...]
# (collection, path inside it, value) for a key that is used; None for a key that is dropped on purpose.
Target = Optional[Tuple[str, Path, np.ndarray]]
# A prefix converter maps the key without its prefix and the value to a Target; KeyError = unknown key.
PrefixConverter = Callable[[str, np.ndarray], Target]

SUPPORTED_NORMS = {"BN": "batch", "SyncBN": "batch", "BN2d": "batch", "GN": "group"}


# ------------------------------------------------------------------------------------------------ configs

def _norm(cfg: Optional[Mapping[str, Any]], where: str) -> str:
  if cfg is None:
    return "none"
  kind = cfg.get("type")
  if kind not in SUPPORTED_NORMS:
    raise ValueError(f"{where}.norm_cfg type {kind!r} is not supported (supported: {sorted(SUPPORTED_NORMS)})")
  if kind == "GN" and cfg.get("num_groups", 32) != 32:
    raise ValueError(f"{where}.norm_cfg: only GN with 32 groups is supported, got {cfg.get('num_groups')}")
  return SUPPORTED_NORMS[kind]


def _check_seg_head(head: Mapping[str, Any], where: str) -> None:
  if head.get("align_corners", False):
    raise ValueError(f"{where}.align_corners=True is not supported (the official configs use False)")
  loss = head.get("loss_decode") or {}
  if isinstance(loss, (list, tuple)):
    raise ValueError(f"{where}.loss_decode: only one CrossEntropyLoss is supported, got a list")
  if loss and (loss.get("type") != "CrossEntropyLoss" or loss.get("use_sigmoid", False)
               or loss.get("class_weight") is not None):
    raise ValueError(f"{where}.loss_decode {loss} is not supported (softmax CrossEntropyLoss only)")
  if head.get("ignore_index", 255) != 255:
    raise ValueError(f"{where}.ignore_index must be 255, got {head.get('ignore_index')}")


def _index_tuple(value: Any) -> Optional[Tuple[int, ...]]:
  if value is None:
    return None
  return tuple(int(i) for i in value) if isinstance(value, (list, tuple)) else (int(value),)


def fpn_config(neck: Mapping[str, Any]) -> Dict[str, Any]:
  """mm ``FPN`` neck -> ``config.model.neck`` (``heads.fpn.FPN`` arguments)."""
  if neck.get("type") != "FPN":
    raise ValueError(f"neck type {neck.get('type')!r} is not supported (FPN only)")
  end_level = neck.get("end_level", -1)
  if end_level not in (-1, len(neck.get("in_channels", ())) - 1):
    raise ValueError(f"neck.end_level {end_level} is not supported (all levels up to the last)")
  if neck.get("upsample_cfg") not in (None, {"mode": "nearest"}):
    raise ValueError(f"neck.upsample_cfg={neck.get('upsample_cfg')!r} is not supported (nearest only)")
  extra = neck.get("add_extra_convs", False)
  if extra is True:  # mmdet 2.x: True means on the input unless extra_convs_on_inputs=False
    extra = "on_input" if neck.get("extra_convs_on_inputs", True) else "on_output"
  return dict(out_channels=int(neck["out_channels"]), num_outs=int(neck["num_outs"]),
              start_level=int(neck.get("start_level", 0)), add_extra_convs=extra,
              relu_before_extra_convs=bool(neck.get("relu_before_extra_convs", False)),
              no_norm_on_lateral=bool(neck.get("no_norm_on_lateral", False)),
              norm=_norm(neck.get("norm_cfg"), "neck"))


def decode_head_config(head: Mapping[str, Any]) -> Dict[str, Any]:
  """mm ``FPNHead`` / ``UPerHead`` -> ``config.model.decode_head``."""
  _check_seg_head(head, "decode_head")
  in_index = _index_tuple(head.get("in_index"))
  if in_index == tuple(range(len(head.get("in_channels", ())))):
    in_index = None  # every level, in order
  common = dict(channels=int(head["channels"]), dropout=float(head.get("dropout_ratio", 0.1)),
                norm=_norm(head.get("norm_cfg"), "decode_head"), in_index=in_index)
  if head.get("type") == "FPNHead":
    return dict(type="semantic_fpn", feature_strides=tuple(int(s) for s in head["feature_strides"]), **common)
  if head.get("type") == "UPerHead":
    return dict(type="upernet", pool_scales=tuple(int(s) for s in head.get("pool_scales", (1, 2, 3, 6))),
                **common)
  raise ValueError(f"decode_head type {head.get('type')!r} is not supported (FPNHead, UPerHead)")


def auxiliary_head_config(head: Mapping[str, Any]) -> Dict[str, Any]:
  """mm ``FCNHead`` (auxiliary) -> ``config.model.auxiliary_head``."""
  if head.get("type") != "FCNHead":
    raise ValueError(f"auxiliary_head type {head.get('type')!r} is not supported (FCNHead only)")
  _check_seg_head(head, "auxiliary_head")
  in_index = head.get("in_index", 2)
  if isinstance(in_index, (list, tuple)):
    raise ValueError(f"auxiliary_head.in_index must be one level, got {in_index}")
  if head.get("kernel_size", 3) != 3 or head.get("dilation", 1) != 1:
    raise ValueError("auxiliary_head: only kernel_size 3, dilation 1 are supported")
  loss = head.get("loss_decode") or {}
  return dict(channels=int(head["channels"]), in_index=int(in_index), num_convs=int(head.get("num_convs", 2)),
              concat_input=bool(head.get("concat_input", True)), dropout=float(head.get("dropout_ratio", 0.1)),
              norm=_norm(head.get("norm_cfg"), "auxiliary_head"),
              loss_weight=float(loss.get("loss_weight", 1.0)))


def retinanet_config(head: Mapping[str, Any], train_cfg: Optional[Mapping[str, Any]],
                     test_cfg: Optional[Mapping[str, Any]]) -> Dict[str, Any]:
  """mm ``RetinaHead`` + train/test cfg -> ``config.model`` sections bbox_head, anchor, box_coder, loss, ..."""
  if head.get("type") != "RetinaHead":
    raise ValueError(f"bbox_head type {head.get('type')!r} is not supported (RetinaHead only)")
  anchor = head["anchor_generator"]
  if anchor.get("type", "AnchorGenerator") != "AnchorGenerator" or anchor.get("center_offset", 0.0) != 0.0:
    raise ValueError(f"anchor_generator {anchor} is not supported (AnchorGenerator, center_offset 0)")
  coder = head.get("bbox_coder", {})
  if coder.get("type", "DeltaXYWHBBoxCoder") != "DeltaXYWHBBoxCoder":
    raise ValueError(f"bbox_coder {coder.get('type')!r} is not supported (DeltaXYWHBBoxCoder)")
  cls_loss, box_loss = head.get("loss_cls", {}), head.get("loss_bbox", {})
  if cls_loss.get("type") != "FocalLoss" or not cls_loss.get("use_sigmoid", True):
    raise ValueError(f"loss_cls {cls_loss} is not supported (sigmoid FocalLoss)")
  box_types = {"L1Loss": "l1", "SmoothL1Loss": "smooth_l1"}
  if box_loss.get("type") not in box_types:
    raise ValueError(f"loss_bbox {box_loss} is not supported ({sorted(box_types)})")
  if head.get("norm_cfg") is not None and _norm(head["norm_cfg"], "bbox_head") != "group":
    raise ValueError("bbox_head.norm_cfg: only GN is supported")
  config = dict(
      bbox_head=dict(feat_channels=int(head.get("feat_channels", 256)),
                     stacked_convs=int(head.get("stacked_convs", 4)), prior_prob=0.01,
                     norm=_norm(head.get("norm_cfg"), "bbox_head")),
      anchor=dict(strides=tuple(int(s) for s in anchor["strides"]),
                  ratios=tuple(float(r) for r in anchor["ratios"]),
                  octave_base_scale=float(anchor["octave_base_scale"]),
                  scales_per_octave=int(anchor["scales_per_octave"])),
      box_coder=dict(target_means=tuple(float(v) for v in coder.get("target_means", (0.0,) * 4)),
                     target_stds=tuple(float(v) for v in coder.get("target_stds", (1.0,) * 4))),
      loss=dict(focal_gamma=float(cls_loss.get("gamma", 2.0)), focal_alpha=float(cls_loss.get("alpha", 0.25)),
                cls_weight=float(cls_loss.get("loss_weight", 1.0)), box_loss=box_types[box_loss["type"]],
                smooth_l1_beta=float(box_loss.get("beta", 1.0 / 9.0)),
                box_weight=float(box_loss.get("loss_weight", 1.0))),
  )
  if train_cfg:
    assigner = train_cfg.get("assigner", {})
    if assigner.get("type", "MaxIoUAssigner") != "MaxIoUAssigner" or assigner.get("ignore_iof_thr", -1) >= 0:
      raise ValueError(f"train_cfg.assigner {assigner} is not supported (MaxIoUAssigner, ignore_iof_thr -1)")
    config["train_cfg"] = dict(pos_iou_thr=float(assigner["pos_iou_thr"]),
                               neg_iou_thr=float(assigner["neg_iou_thr"]),
                               min_pos_iou=float(assigner.get("min_pos_iou", 0.0)),
                               allowed_border=float(train_cfg.get("allowed_border", -1)), pad_size_divisor=32)
  if test_cfg:
    nms = test_cfg.get("nms", {})
    if nms.get("type", "nms") != "nms":
      raise ValueError(f"test_cfg.nms {nms} is not supported (plain nms)")
    config["test_cfg"] = dict(nms_pre=int(test_cfg.get("nms_pre", 1000)),
                              score_thr=float(test_cfg.get("score_thr", 0.05)),
                              iou_threshold=float(nms.get("iou_threshold", 0.5)),
                              max_per_img=int(test_cfg.get("max_per_img", 100)),
                              min_bbox_size=float(test_cfg.get("min_bbox_size", 0.0)),
                              version="mmdet2")
  return config


def model_config_from_mm(mm_config: Mapping[str, Any]) -> Dict[str, Any]:
  """The neck/head sections of our ``config.model`` and ``num_classes`` for an official model config."""
  config: Dict[str, Any] = {}
  neck = mm_config.get("neck")
  config["neck"] = fpn_config(neck) if neck else None
  if mm_config.get("decode_head"):
    head = mm_config["decode_head"]
    config["decode_head"] = decode_head_config(head)
    aux = mm_config.get("auxiliary_head")
    if isinstance(aux, (list, tuple)):
      raise ValueError("several auxiliary heads are not supported")
    config["auxiliary_head"] = auxiliary_head_config(aux) if aux else None
    if aux and int(aux["num_classes"]) != int(head["num_classes"]):
      raise ValueError("auxiliary_head.num_classes differs from decode_head.num_classes")
    config["num_classes"] = int(head["num_classes"])
    config["avg_non_ignore"] = bool((head.get("loss_decode") or {}).get("avg_non_ignore", False))
    mode = (mm_config.get("test_cfg") or {}).get("mode", "whole")
    config["test_cfg"] = dict(mm_config.get("test_cfg") or {"mode": mode})
  elif mm_config.get("bbox_head"):
    head = mm_config["bbox_head"]
    config.update(retinanet_config(head, mm_config.get("train_cfg"), mm_config.get("test_cfg")))
    config["num_classes"] = int(head["num_classes"])
  else:
    raise ValueError("the official config has neither decode_head nor bbox_head")
  return config


# ---------------------------------------------------------------------------------------- state dicts

# Module-path rewrites of the mm head keys (applied in order, on the key without its leaf).
_HEAD_RULES: Tuple[Tuple[re.Pattern, Callable[[re.Match], str]], ...] = (
    # FPNHead: scale_heads.i is Sequential(ConvModule, Upsample, ConvModule, Upsample, ...).
    (re.compile(r"scale_heads\.(\d+)\.(\d+)"), lambda m: f"scale_heads_{m[1]}_{int(m[2]) // 2}"),
    # UPerHead's PPM: psp_modules.j is Sequential(AdaptiveAvgPool2d, ConvModule).
    (re.compile(r"psp_modules\.(\d+)\.1"), lambda m: f"psp_modules_{m[1]}"),
    (re.compile(r"([A-Za-z_]+)\.(\d+)"), lambda m: f"{m[1]}_{m[2]}"),
    (re.compile(r"\.(bn|gn)$"), lambda m: ".norm"),
)
_NORM_LEAVES = {"weight": ("params", "scale"), "bias": ("params", "bias"), "running_mean": ("batch_stats", "mean"),
                "running_var": ("batch_stats", "var")}
DROPPED_LEAVES = ("num_batches_tracked",)


def _weight(value: np.ndarray) -> Tuple[str, np.ndarray]:
  if value.ndim == 4:  # conv OIHW -> HWIO
    return "kernel", value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # linear (out, in) -> (in, out)
    return "kernel", value.T
  return "scale", value  # a norm's weight


def head_converter(flax_name: str) -> PrefixConverter:
  """The converter of an mm neck/head prefix whose Flax sub-module is called ``flax_name``."""

  def convert(key: str, value: np.ndarray) -> Target:
    module, _, leaf = key.rpartition(".")
    if leaf in DROPPED_LEAVES:
      return None
    for pattern, replace in _HEAD_RULES:
      module = pattern.sub(replace, module)
    path = (flax_name,) + tuple(module.split(".")) if module else (flax_name,)
    if path[-1] == "norm":
      if leaf not in _NORM_LEAVES:
        raise KeyError(key)
      collection, name = _NORM_LEAVES[leaf]
      return collection, path + (name,), value
    if leaf == "bias":
      return "params", path + ("bias",), value
    if leaf == "weight":
      name, value = _weight(value)
      return "params", path + (name,), value
    raise KeyError(key)

  return convert


def backbone_converter(key: str, value: np.ndarray) -> Target:
  """``backbone.*`` keys: the CrossFormer backbone's own mapping (``backbones.crossformer.convert``)."""
  if key.endswith((".attn.biases", ".attn.relative_position_index")) or key.endswith(DROPPED_LEAVES):
    return None  # non-learned buffers
  path, leaf = backbone_convert.flax_path(key)
  if leaf == "bias":
    return "params", ("backbone",) + path + ("bias",), value
  if leaf == "weight":
    name, value = _weight(value)
    return "params", ("backbone",) + path + (name,), value
  raise KeyError(key)


# Official top-level prefix -> converter. Other models add theirs (e.g. PREFIX_CONVERTERS["rpn_head"] = ...).
PREFIX_CONVERTERS: Dict[str, PrefixConverter] = {
    "backbone": backbone_converter,
    "neck": head_converter("neck"),
    "decode_head": head_converter("decode_head"),
    "auxiliary_head": head_converter("auxiliary_head"),
    "bbox_head": head_converter("bbox_head"),
    # Mask R-CNN (heads.detection.mask_rcnn_convert): roi_head.{bbox,mask}_head -> our bbox_head / mask_head.
    "rpn_head": mask_rcnn_convert.prefix_converter("rpn_head"),
    "roi_head": mask_rcnn_convert.prefix_converter("roi_head"),
}


@dataclasses.dataclass
class ConversionReport:
  """What happened to every key: used, dropped on purpose, or a problem (named)."""
  used: List[str] = dataclasses.field(default_factory=list)
  dropped: List[str] = dataclasses.field(default_factory=list)
  unexpected: List[str] = dataclasses.field(default_factory=list)
  mismatched: List[str] = dataclasses.field(default_factory=list)
  missing: List[str] = dataclasses.field(default_factory=list)

  @property
  def ok(self) -> bool:
    return not (self.unexpected or self.mismatched or self.missing)

  def problems(self) -> str:
    """One line naming the problem keys (up to 20 of each kind)."""
    parts = []
    # Unexpected keys are summarised by module (a whole head of another model is many keys).
    modules = sorted({k.rsplit(".", 1)[0] for k in self.unexpected})
    missing = sorted({m.split("/", 1)[1].rsplit("/", 1)[0] for m in self.missing})
    for title, items in (("modules with unexpected keys (no place in the model)", modules),
                         ("shape mismatches", self.mismatched),
                         ("model modules with parameters missing from the checkpoint", missing)):
      if items:
        parts.append(f"{len(items)} {title}: " + ", ".join(items[:20]) + (" ..." if len(items) > 20 else ""))
    return "; ".join(parts)


def convert_state_dict(state_dict: Mapping[str, Any], expected: Mapping[str, Any],
                       prefixes: Optional[Sequence[str]] = None, strict: bool = True
                       ) -> Tuple[Dict[str, Any], ConversionReport]:
  """Official ``state_dict`` -> our variables, checked against ``expected``.

  Args:
    state_dict: official key -> array (numpy, or anything ``np.asarray`` takes).
    expected: our variables or their shapes (``jax.eval_shape`` output): ``{collection: nested dict}``; only
      the top-level sub-modules named by the converted prefixes are required to be covered.
    prefixes: the official prefixes to convert (default: all of ``PREFIX_CONVERTERS`` present in ``expected``).
    strict: raise ``ValueError`` naming every unexpected, mis-shaped or missing key.

  Returns:
    ``({collection: nested dict of float32 arrays}, report)``.
  """
  flat_expected = {p: tree.shape_of(v) for p, v in tree.flatten(expected, sep=None).items()}
  modules = {p[1] for p in flat_expected}
  if prefixes is None:
    prefixes = [p for p in PREFIX_CONVERTERS if p in modules]
  report = ConversionReport()
  out: Dict[Path, np.ndarray] = {}
  for key in sorted(state_dict):
    prefix, _, rest = key.partition(".")
    if prefix not in prefixes:
      report.unexpected.append(key)
      continue
    value = np.asarray(state_dict[key])
    try:
      target = PREFIX_CONVERTERS[prefix](rest, value)
    except KeyError:
      report.unexpected.append(key)
      continue
    if target is None:
      report.dropped.append(key)
      continue
    collection, path, converted = target
    full = (collection,) + path
    if full not in flat_expected:
      report.unexpected.append(key)
    elif tuple(converted.shape) != flat_expected[full]:
      report.mismatched.append(f"{key} {tuple(value.shape)} (model {'/'.join(full)} {flat_expected[full]})")
    else:
      out[full] = np.asarray(converted, np.float32)
      report.used.append(key)
  covered = {p for p in flat_expected if p[1] in prefixes}
  mismatched_paths = {m.split("(model ")[1].split(" ")[0] for m in report.mismatched}
  report.missing = ["/".join(p) for p in sorted(covered)
                    if p not in out and "/".join(p) not in mismatched_paths]
  if strict and not report.ok:
    raise ValueError(f"the checkpoint does not fit the model: {report.problems()}")
  variables: Dict[str, Any] = {}
  for full, v in out.items():
    variables.setdefault(full[0], {})[full[1:]] = v
  return {c: tree.unflatten(flat, sep=None) for c, flat in variables.items()}, report


def count_parameters(state_dict_or_shapes: Mapping[str, Any]) -> Dict[str, int]:
  """Official-style parameter counts per top-level prefix (``num_batches_tracked``/running stats excluded).

  Accepts an official state_dict (keys with dots) and counts only learnable entries (no ``running_*`` or
  ``num_batches_tracked`` buffers, none of the backbone's non-learned buffers).
  """
  counts: Dict[str, int] = {}
  for key, value in state_dict_or_shapes.items():
    if key.endswith(("running_mean", "running_var", "num_batches_tracked", ".attn.biases",
                     ".attn.relative_position_index")):
      continue
    prefix = key.partition(".")[0]
    counts[prefix] = counts.get(prefix, 0) + int(np.prod(np.shape(value)))
  return counts
