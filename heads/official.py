"""Official mmseg/mmdet state_dict keys -> our parameter paths (the heads' and the backbone's).

Used by the fixture runners (``projects.parity``), the whole-checkpoint converter
(``projects.common.model_io.convert_official_checkpoint``) and through it the predict commands. The mapping of
official model configs to our job config lives above the heads, in ``projects.parity.official_config``.

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
