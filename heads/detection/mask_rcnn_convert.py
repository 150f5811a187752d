"""Official (mmdet) Mask R-CNN head weights -> our Flax params: ``neck.*``, ``rpn_head.*``, ``roi_head.*``.

A function table: every rule maps an official key pattern to a path in our params tree and a layout
transform. ``convert_mask_rcnn_heads(state_dict)`` returns ``(params, unused_keys)``; the backbone keys
(``backbone.*``) are left to the backbone converter.
"""

import re
from typing import Any, Callable, Dict, List, Mapping, Tuple

import numpy as np

Transform = Callable[[np.ndarray], np.ndarray]


def conv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch conv weight (O, I, kh, kw) -> Flax kernel (kh, kw, I, O)."""
  return np.transpose(w, (2, 3, 1, 0))


def dense_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch linear weight (O, I) -> Flax kernel (I, O)."""
  return np.transpose(w, (1, 0))


def deconv_kernel(w: np.ndarray) -> np.ndarray:
  """PyTorch ConvTranspose2d weight (I, O, kh, kw) -> Flax ``ConvTranspose`` kernel (kh, kw, I, O), flipped
  spatially (Flax correlates the dilated input; PyTorch scatters ``x[i] * w[k]`` to output ``s * i + k``)."""
  return np.transpose(w[:, :, ::-1, ::-1], (2, 3, 0, 1))


def identity(w: np.ndarray) -> np.ndarray:
  """Biases keep their layout."""
  return w


# (official key regex, our path template, transform). Groups of the regex fill the template.
RULES: List[Tuple[str, str, Transform]] = [
    (r"neck\.(lateral|fpn)_convs\.(\d+)\.conv\.weight", "neck/{0}_convs_{1}/conv/kernel", conv_kernel),
    (r"neck\.(lateral|fpn)_convs\.(\d+)\.conv\.bias", "neck/{0}_convs_{1}/conv/bias", identity),
    (r"rpn_head\.(rpn_conv|rpn_cls|rpn_reg)\.weight", "rpn_head/{0}/kernel", conv_kernel),
    (r"rpn_head\.(rpn_conv|rpn_cls|rpn_reg)\.bias", "rpn_head/{0}/bias", identity),
    (r"roi_head\.bbox_head\.shared_fcs\.(\d+)\.weight", "bbox_head/shared_fcs_{0}/kernel", dense_kernel),
    (r"roi_head\.bbox_head\.shared_fcs\.(\d+)\.bias", "bbox_head/shared_fcs_{0}/bias", identity),
    (r"roi_head\.bbox_head\.(fc_cls|fc_reg)\.weight", "bbox_head/{0}/kernel", dense_kernel),
    (r"roi_head\.bbox_head\.(fc_cls|fc_reg)\.bias", "bbox_head/{0}/bias", identity),
    (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.weight", "mask_head/convs_{0}/kernel", conv_kernel),
    (r"roi_head\.mask_head\.convs\.(\d+)\.conv\.bias", "mask_head/convs_{0}/bias", identity),
    (r"roi_head\.mask_head\.upsample\.weight", "mask_head/upsample/kernel", deconv_kernel),
    (r"roi_head\.mask_head\.upsample\.bias", "mask_head/upsample/bias", identity),
    (r"roi_head\.mask_head\.conv_logits\.weight", "mask_head/conv_logits/kernel", conv_kernel),
    (r"roi_head\.mask_head\.conv_logits\.bias", "mask_head/conv_logits/bias", identity),
]
_COMPILED = [(re.compile(p + r"\Z"), t, f) for p, t, f in RULES]
HEAD_PREFIXES = ("neck.", "rpn_head.", "roi_head.")


def map_key(key: str) -> Tuple[str, Transform]:
  """Our params path (``a/b/c``) and transform of an official head key; ``ValueError`` if no rule matches."""
  for pattern, template, transform in _COMPILED:
    match = pattern.match(key)
    if match:
      return template.format(*match.groups()), transform
  raise ValueError(f"no Mask R-CNN conversion rule for official key {key!r}")


def convert_mask_rcnn_heads(state_dict: Mapping[str, Any]) -> Tuple[Dict[str, Any], List[str]]:
  """Converts the head keys of an official Mask R-CNN state dict.

  Args:
    state_dict: official keys -> arrays (numpy or anything ``np.asarray`` accepts); ``backbone.*`` ignored.

  Returns:
    ``(params, skipped)``: a nested params dict ``{"neck": ..., "rpn_head": ..., "bbox_head": ...,
    "mask_head": ...}`` of float32 arrays, and the keys that are not head keys (e.g. ``backbone.*``).
  """
  params: Dict[str, Any] = {}
  skipped = []
  for key, value in state_dict.items():
    if not key.startswith(HEAD_PREFIXES):
      skipped.append(key)
      continue
    path, transform = map_key(key)
    node = params
    parts = path.split("/")
    for part in parts[:-1]:
      node = node.setdefault(part, {})
    if parts[-1] in node:
      raise ValueError(f"two official keys map to {path} (second: {key!r})")
    node[parts[-1]] = np.ascontiguousarray(transform(np.asarray(value, np.float32)))
  return params, skipped


def prefix_converter(prefix: str) -> Callable[[str, np.ndarray], Tuple[str, Tuple[str, ...], np.ndarray]]:
  """A ``heads.official.PREFIX_CONVERTERS`` entry for ``prefix`` (``rpn_head`` or ``roi_head``) from ``RULES``.

  It maps the key without its prefix to ``("params", path, converted value)`` and raises ``KeyError`` for a key
  no rule knows.
  """
  def convert(key: str, value: np.ndarray):
    try:
      path, transform = map_key(f"{prefix}.{key}")
    except ValueError:
      raise KeyError(key) from None
    return "params", tuple(path.split("/")), np.ascontiguousarray(transform(np.asarray(value, np.float32)))
  return convert
