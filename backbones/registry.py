"""The backbone registry (timm's ``default_cfgs`` / ``create_model``): every model family and variant, declared once.

A family registers its module classes and three builders (:func:`register_family`); each variant registers
its architecture arguments and its pretrained_cfg (:func:`register_backbone`): drop-path rate, official
ImageNet top-1, parameters, input size, official checkpoint file / url. CrossFormer registers itself in
``backbones.crossformer.variants``; a second family does the same where it lives.

    create_model("crossformer_s", features_only=True, out_indices=(1, 2, 3))   # the dense backbone
    create_model("crossformer_s", features_only=False, num_classes=10)          # the classifier
    build_from_config(config.model.backbone, out_indices=(0, 1, 2, 3), dtype=jnp.bfloat16)
    model_info("crossformer_s")  # {"architecture", "family", "kwargs", "pretrained_cfg", "feature_info"}

A classifier composes its dense backbone as the sub-module ``backbone``: its parameters are
``params["backbone"]`` (what ``backbones.weights.converted`` relies on to feed a backbone from a classifier).
"""

import dataclasses
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn


@dataclasses.dataclass(frozen=True)
class Family:
  """A model family: its module classes (by class name, for converted files) and how to build and load them.

  Attributes:
    name: the family's name (``"crossformer"``).
    modules: the Flax module classes a converted file may name (dense backbone, classifier).
    create: ``create(kwargs, *, features_only, out_indices, num_classes, name, **overrides) -> nn.Module``:
      the module of a variant's architecture ``kwargs`` (a fresh dict) with the user's overrides.
    from_config: ``from_config(kwargs, cfg, *, out_indices, dtype) -> nn.Module``: the dense backbone a
      config block (``config.model.backbone``: ``name`` plus the family's own keys) describes.
    load_variables: ``load_variables(module, checkpoint) -> variables`` for ``module`` from a checkpoint path.
    pretrained_defaults: pretrained_cfg entries shared by every variant (preprocessing, license, paper).
  """
  name: str
  modules: Tuple[type, ...]
  create: Callable[..., nn.Module]
  from_config: Callable[..., nn.Module]
  load_variables: Callable[[nn.Module, str], Dict[str, Any]]
  pretrained_defaults: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class Variant:
  """One named model: its family, architecture arguments and pretrained_cfg."""
  name: str
  family: str
  kwargs: Mapping[str, Any]
  pretrained_cfg: Mapping[str, Any]


_FAMILIES: Dict[str, Family] = {}
_VARIANTS: Dict[str, Variant] = {}


def register_family(family: Family) -> Family:
  """Adds ``family`` (re-registering the same name replaces it: module reloads in tests)."""
  _FAMILIES[family.name] = family
  return family


def register_backbone(name: str, family: str, kwargs: Mapping[str, Any], **pretrained_cfg: Any) -> Variant:
  """Registers variant ``name`` of ``family`` with architecture ``kwargs`` and timm-style ``pretrained_cfg``
  entries (``top1``, ``params_m``, ``gflops``, ``file``, ``url``, ``input_size``, ...)."""
  if family not in _FAMILIES:
    raise ValueError(f"register family {family!r} before its variant {name!r}; families: {sorted(_FAMILIES)}")
  variant = Variant(name, family, dict(kwargs), dict(pretrained_cfg))
  _VARIANTS[name] = variant
  return variant


def list_models(family: Optional[str] = None) -> List[str]:
  """Names accepted by :func:`create_model` (of one ``family`` when given), sorted."""
  return sorted(n for n, v in _VARIANTS.items() if family is None or v.family == family)


def list_families() -> List[str]:
  return sorted(_FAMILIES)


def get_variant(name: str) -> Variant:
  """The registered :class:`Variant` ``name``; ``ValueError`` listing the known names otherwise."""
  if name not in _VARIANTS:
    raise ValueError(f"unknown backbone {name!r}; available: {list_models()}")
  return _VARIANTS[name]


def get_family(name: str) -> Family:
  return _FAMILIES[get_variant(name).family]


def variant_kwargs(name: str) -> Dict[str, Any]:
  """The architecture arguments of variant ``name`` (a fresh dict; ``drop_path_rate`` included)."""
  return dict(get_variant(name).kwargs)


def get_pretrained_cfg(name: str) -> Dict[str, Any]:
  """The timm-style pretrained_cfg of variant ``name`` (a fresh dict): family defaults + the variant's."""
  if name not in _VARIANTS:
    raise ValueError(f"no pretrained_cfg for {name!r}; available: {list_models()}")
  variant = _VARIANTS[name]
  return {"architecture": name, **_FAMILIES[variant.family].pretrained_defaults, **variant.pretrained_cfg}


def model_info(name: str) -> Dict[str, Any]:
  """Everything registered about variant ``name``: ``architecture``, ``family``, ``kwargs``,
  ``pretrained_cfg`` and the dense backbone's ``feature_info`` (channels, reduction, name per level)."""
  variant = get_variant(name)
  module = create_model(name, features_only=True)
  return {"architecture": name, "family": variant.family, "kwargs": variant_kwargs(name),
          "pretrained_cfg": get_pretrained_cfg(name), "feature_info": list(module.feature_info.info)}


def module_class(class_name: str, source: Any = "a converted file") -> type:
  """The registered Flax module class called ``class_name`` (what a converted file names)."""
  classes = {cls.__name__: cls for family in _FAMILIES.values() for cls in family.modules}
  if class_name not in classes:
    raise ValueError(f"{source} holds an unknown module {class_name!r}; known: {sorted(classes)}")
  return classes[class_name]


def family_of(module: nn.Module) -> Family:
  """The registered family whose module classes include ``module``'s."""
  for family in _FAMILIES.values():
    if isinstance(module, family.modules):
      return family
  raise ValueError(f"{type(module).__name__} belongs to no registered family ({list_families()})")


def load_variables(module: nn.Module, checkpoint: str) -> Dict[str, Any]:
  """Variables for ``module`` from ``checkpoint`` (an official or converted file), by its family's loader."""
  return family_of(module).load_variables(module, checkpoint)


def normalize_out_indices(out_indices: Sequence[int], num_stages: int) -> Tuple[int, ...]:
  """timm's ``out_indices``: stage numbers, negative ones counted from the last stage; sorted, no repeats."""
  indices = tuple(int(i) for i in out_indices)
  bad = [i for i in indices if not -num_stages <= i < num_stages]
  if bad or not indices:
    raise ValueError(f"out_indices {indices} must be non-empty and lie in [-{num_stages}, {num_stages})")
  normalized = tuple(sorted({i % num_stages for i in indices}))
  if len(normalized) != len(indices):
    raise ValueError(f"out_indices {indices} names a stage twice")
  return normalized


def create_model(model_name: str, *, features_only: bool = True, out_indices: Sequence[int] = (0, 1, 2, 3),
                 checkpoint: Optional[str] = None, pretrained: Optional[str] = None, num_classes: int = 1000,
                 name: Optional[str] = None, **overrides: Any) -> Any:
  """Creates a registered model by name.

  Inside another module's ``@nn.compact`` method, ``create_model("crossformer_s", name="backbone")(x)``
  makes the backbone a sub-module whose parameters are ``params["backbone"]`` (where Scenic's
  ``init_from_pretrain_state`` and our trainer load pretrained weights).

  Args:
    model_name: one of :func:`list_models`, e.g. ``crossformer_t/s/b/l`` or ``crossformerpp_s/b/l/h``.
    features_only: the dense backbone returning ``{'stage_i': map}`` (else the classifier).
    out_indices: which stages the backbone returns: 0..3, or negative from the last (timm's ``-1``).
    checkpoint: where the weights come from: a converted ``.msgpack``/``.safetensors``
      (``projects.convert_checkpoint``), a Hub id ``hf-hub:ORG/NAME`` or a folder in the Hub layout
      (``backbones.weights.hub``), or an official ``.pth``/``.npz`` state_dict; when given,
      ``(module, variables)`` is returned.
    pretrained: timm's name for ``checkpoint`` (give one of the two).
    num_classes: classes of the classifier (``features_only=False``).
    name: the Flax module name (``None``: Flax's automatic name).
    **overrides: architecture arguments replacing the variant's (the family's own names; for CrossFormer
      ``embed_dim`` sets all four widths, and ``drop_path_rate``, ``lda_mode``, ``dtype``, ``remat``,
      ``group_sizes``, ``intervals``, ``group_type``, ``img_size``, ``use_acl``, ``mlp_ratio``, ...).

  Returns:
    The Flax module, or ``(module, variables)`` when ``checkpoint`` is given.
  """
  if pretrained is not None and checkpoint is not None:
    raise ValueError("give the weights as checkpoint= or pretrained=, not both")
  checkpoint = pretrained if checkpoint is None else checkpoint
  family = get_family(model_name)
  module = family.create(variant_kwargs(model_name), features_only=features_only, out_indices=out_indices,
                         num_classes=num_classes, name=name, **overrides)
  if checkpoint is None:
    return module
  return module, load_variables(module, checkpoint)


def build_from_config(cfg: Mapping[str, Any], *, out_indices: Sequence[int] = (0, 1, 2, 3),
                      dtype: Any = None) -> nn.Module:
  """The dense backbone a config block describes (``config.model.backbone``): ``cfg["name"]`` picks the
  variant, the rest of ``cfg`` goes to its family's own ``from_config`` (CrossFormer: ``overrides``,
  ``drop_path_rate``, ``lda_mode``, ``remat``)."""
  if "name" not in cfg or not cfg["name"]:
    raise ValueError(f"the backbone config needs a 'name' (one of {list_models()}); got keys {sorted(cfg)}")
  name = cfg["name"]
  return get_family(name).from_config(variant_kwargs(name), cfg, out_indices=out_indices, dtype=dtype)
