"""How the registry builds and loads CrossFormer models (``backbones.registry.Family`` of CrossFormer).

``create`` turns a variant's arguments plus the user's overrides into the dense backbone or the classifier
(which composes the same backbone); ``from_config`` reads a ``config.model.backbone`` block; ``load_variables``
fills a module from an official ``.pth``/``.npz`` (converted here) or a converted file.
"""

import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence

import flax.linen as nn

from backbones import registry
from backbones.crossformer import convert
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone
from backbones.weights import converted
from backbones.weights import files
from backbones.weights import tree

# Keys of a config block (``config.model.backbone``) read by :func:`from_config` ("checkpoint" is tolerated
# and unused: the weights come from ``config.init_from.checkpoint_path``).
CONFIG_KEYS = ("name", "overrides", "drop_path_rate", "lda_mode", "remat", "checkpoint")


def create(kwargs: Dict[str, Any], *, features_only: bool = True, out_indices: Sequence[int] = (0, 1, 2, 3),
           num_classes: int = 1000, name: Optional[str] = None, **overrides: Any) -> nn.Module:
  """The backbone (``features_only``) or classifier of architecture ``kwargs`` with ``overrides`` applied
  (``embed_dim`` sets all four widths; every other key is a :class:`CrossFormerBackbone` field)."""
  if "embed_dim" in overrides:
    embed_dim = overrides.pop("embed_dim")
    kwargs["dims"] = tuple(embed_dim * 2 ** i for i in range(len(kwargs["depths"])))
  unknown = set(overrides) - set(CrossFormerBackbone.__dataclass_fields__) - {"out_indices"}
  if unknown:
    raise ValueError(f"unknown CrossFormer arguments {sorted(unknown)}")
  kwargs.update(overrides)
  indices = registry.normalize_out_indices(out_indices, len(kwargs["depths"]))
  if features_only:
    return CrossFormerBackbone(**kwargs, out_indices=indices, name=name)
  # parent=None: the classifier adopts it, even when created inside another module's compact method.
  backbone = CrossFormerBackbone(**kwargs, out_indices=indices, parent=None)
  return CrossFormer(num_classes=num_classes, backbone=backbone, name=name)


def from_config(kwargs: Dict[str, Any], cfg: Mapping[str, Any], *, out_indices: Sequence[int],
                dtype: Any = None) -> nn.Module:
  """The dense backbone of a config block: ``overrides`` (backbone fields), ``lda_mode`` and ``remat`` replace
  the variant's (absent: the variant's); ``drop_path_rate`` absent means none (0.0): a training recipe sets
  the variant's rate explicitly (``configs.common.backbone_config``)."""
  unknown = set(cfg) - set(CONFIG_KEYS)
  if unknown:
    raise ValueError(f"unknown keys {sorted(unknown)} in the CrossFormer backbone config {cfg.get('name')!r}; "
                     f"expected {list(CONFIG_KEYS)} (architecture arguments go under 'overrides')")
  overrides = cfg.get("overrides") or {}
  overrides = dict(overrides.to_dict() if hasattr(overrides, "to_dict") else overrides)
  overrides["drop_path_rate"] = float(cfg.get("drop_path_rate") or 0.0)
  for key in ("lda_mode", "remat"):
    if cfg.get(key) is not None:
      overrides[key] = cfg[key]
  if dtype is not None:
    overrides["dtype"] = dtype
  return create(kwargs, features_only=True, out_indices=out_indices, **overrides)


def load_variables(module: nn.Module, checkpoint: str) -> Dict[str, Any]:
  """Variables for ``module`` from an official state_dict file or a converted checkpoint.

  A classifier checkpoint feeds a backbone (its head is dropped); shapes are checked either way.
  """
  if pathlib.Path(checkpoint).suffix.lower() in files.OFFICIAL_SUFFIXES:
    state_dict, _ = files.read_official(checkpoint)
    return convert.convert_state_dict(state_dict, module)
  expected = tree.unflatten(convert.expected_param_shapes(module), sep=None)
  return converted.variables_for(module, checkpoint, expected)
