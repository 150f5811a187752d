"""Official mmseg/mmdet model configs -> the neck/head sections of our job config (``config.model``).

``model_config_from_mm(mm_config)``: an mmseg ``EncoderDecoder`` / mmdet ``RetinaNet`` model config (the ``neck``,
``decode_head``, ``auxiliary_head``, ``bbox_head``, ``train_cfg``, ``test_cfg`` dicts of the official configs) ->
the sections of our ``config.model`` (``projects.segmentation.models.encoder_decoder`` /
``projects.detection.models.retinanet`` keys) plus ``num_classes``. Settings we do not implement raise
``ValueError``. It knows the projects' config keys, so it lives here, above the heads; the state_dict key
mapping stays in ``heads.official``.
"""

from typing import Any, Dict, Mapping, Optional, Tuple

SUPPORTED_NORMS = {"BN": "batch", "SyncBN": "batch", "BN2d": "batch", "GN": "group"}


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
