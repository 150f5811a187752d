"""Official PyTorch CrossFormer checkpoints -> Flax modules and variables.

Accepts a flat mapping of official ``state_dict`` keys to arrays from a classification checkpoint
(optionally wrapped as ``{'model': ...}``, with ``head.*``, ``norm.*`` and the DPB buffers), a dense
backbone checkpoint, or an mmdet/mmseg checkpoint (``{'state_dict': ...}``, keys ``backbone.*``), of
CrossFormer (branch ``crossformer``) or CrossFormer++ (branch ``main``: ``group_type``, ``use_acl``,
per-stage ``mlp_ratio``, no DPB buffers).
"""

import logging
import re
from typing import Any, Dict, Mapping, Optional, Tuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backbones import registry
from backbones.weights import files
from backbones.weights import tree
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone

# Non-learned buffers (deterministic functions of the group size and map size): dropped.
BUFFER_SUFFIXES = (".attn.biases", ".attn.relative_position_index", ".attn_mask")
# Official constructor arguments without effect on the computation.
_IGNORED_KWARGS = ("use_checkpoint", "init_cfg")
# Options of the main-branch (CrossFormer++) code only, with their defaults: set, they imply lda_mode "main".
_MAIN_ONLY_DEFAULTS = dict(use_acl=False, group_type="constant", pad_type=0, no_mask=False,
                           adaptive_interval=False)
# Options the official dense backbone accepts but ignores (only the classifier uses them).
_CLASSIFIER_ONLY = ("pad_type", "no_mask")
_CPE_REFUSAL = ("official option use_cpe=True is not supported: the official CPE is broken (its depthwise "
                "conv is built with the stage's map height as its channel count and applied to the "
                "(B, H, W, C) map, so it convolves over (W, C) and runs at one input size only); no "
                "released model uses it")
_MODULE_RULES = (
    (re.compile(r"^layers\.(\d+)\.blocks\.(\d+)"), r"layers_\1_blocks_\2"),
    (re.compile(r"^layers\.(\d+)\.downsample"), r"layers_\1_downsample"),
    (re.compile(r"\.pos(\d)\.0$"), r".pos\1_norm"),
    (re.compile(r"\.pos(\d)\.2$"), r".pos\1_linear"),
    (re.compile(r"\.(projs|reductions)\.(\d+)$"), r".\1_\2"),
    (re.compile(r"^head$"), "output_projection"),
)


def unwrap_state_dict(checkpoint: Mapping[str, Any]) -> Dict[str, np.ndarray]:
  """The backbone/classifier state_dict inside a checkpoint, as numpy arrays, prefixes removed.

  Handles ``{'model': sd}`` (official classification), ``{'state_dict': sd}`` (mmcv) and the
  ``backbone.`` prefix of mmdet/mmseg (their neck/head keys are left out).
  """
  for wrapper in ("model", "state_dict"):
    if wrapper in checkpoint and isinstance(checkpoint[wrapper], Mapping):
      checkpoint = checkpoint[wrapper]
  keys = list(checkpoint)
  if any(k.startswith("backbone.") for k in keys):
    checkpoint = {k[len("backbone."):]: v for k, v in checkpoint.items() if k.startswith("backbone.")}
  return {k.removeprefix("module."): files.to_numpy(v) for k, v in checkpoint.items()}


def official_lda_mode(official_kwargs: Mapping[str, Any]) -> str:
  """``"main"`` when the kwargs can only be the main-branch (CrossFormer++) code's, else ``"v1"``.

  Main-only: a CrossFormer++ option away from its default, or a per-stage ``mlp_ratio`` list (the
  main-branch classifier requires one). Everything else is taken as the v1 code of the released
  CrossFormer checkpoints.
  """
  main_only = any(official_kwargs.get(k, default) != default for k, default in _MAIN_ONLY_DEFAULTS.items())
  return "main" if main_only or isinstance(official_kwargs.get("mlp_ratio"), (list, tuple)) else "v1"


def _mlp_ratio(value: Any) -> Any:
  return tuple(float(v) for v in value) if isinstance(value, (list, tuple)) else float(value)


def _group_sizes(value: Any, num_stages: int) -> Any:
  if isinstance(value, (int, np.integer)):
    return (int(value),) * num_stages
  return tuple(tuple(int(v) for v in g) if isinstance(g, (list, tuple)) else int(g) for g in value)


def module_from_official(official_kwargs: Mapping[str, Any], classifier: bool,
                         lda_mode: Optional[str] = None) -> nn.Module:
  """The Flax module equivalent to the official constructor called with ``official_kwargs``.

  The v1 classifier (``models/crossformer.py`` of branch ``crossformer``) has no ``crs_interval``: its
  LDA interval is implicit, ``(img_size / 4 / 2**i) / group_size``, which is what is used when
  ``crs_interval`` is absent. ``lda_mode`` None picks it from the kwargs (:func:`official_lda_mode`).
  ``pad_type`` and ``no_mask`` are ignored for the dense backbone, as the official dense code does;
  ``use_cpe=True`` and ``ape=True`` are refused.
  """
  kw = dict(official_kwargs)
  lda_mode = official_lda_mode(kw) if lda_mode is None else lda_mode
  for name in _IGNORED_KWARGS:
    kw.pop(name, None)
  if kw.pop("ape", False):
    raise ValueError("official option ape=True (absolute position embedding) is not supported by this "
                     "port; no released model uses it")
  if kw.pop("use_cpe", False):
    raise ValueError(_CPE_REFUSAL)
  if not classifier:
    ignored = {k: kw.pop(k) for k in _CLASSIFIER_ONLY if k in kw}
    if any(ignored.values()):
      logging.info("the official dense backbone ignores %s: ignored here too", ignored)
  embed_dim = int(kw.pop("embed_dim", 96))
  depths = tuple(kw.pop("depths", (2, 2, 6, 2)))
  dims = tuple(embed_dim * 2 ** i for i in range(len(depths)))
  group_sizes = _group_sizes(kw.pop("group_size", (7,) * len(depths)), len(depths))
  img_size = kw.pop("img_size", 224)
  img_size = tuple(int(v) for v in img_size) if isinstance(img_size, (list, tuple)) else int(img_size)
  img_side = img_size[0] if isinstance(img_size, tuple) else img_size
  intervals = kw.pop("crs_interval", None)
  if intervals is None:
    if any(isinstance(g, tuple) for g in group_sizes):
      raise ValueError("per-block group_size lists need crs_interval")
    intervals = tuple(max(1, (img_side // 4 // 2 ** i) // g) for i, g in enumerate(group_sizes))
  num_classes = int(kw.pop("num_classes", 1000))
  config = dict(
      depths=depths, num_heads=tuple(kw.pop("num_heads", (3, 6, 12, 24))),
      patch_sizes=tuple(kw.pop("patch_size", (4, 8, 16, 32))),
      merge_sizes=tuple(tuple(m) for m in kw.pop("merge_size", ((2, 4),) * 3)),
      mlp_ratio=_mlp_ratio(kw.pop("mlp_ratio", 4.0)), qkv_bias=bool(kw.pop("qkv_bias", True)),
      qk_scale=kw.pop("qk_scale", None), patch_norm=bool(kw.pop("patch_norm", True)),
      drop_rate=float(kw.pop("drop_rate", 0.0)), attn_drop_rate=float(kw.pop("attn_drop_rate", 0.0)),
      drop_path_rate=float(kw.pop("drop_path_rate", 0.0)), in_chans=int(kw.pop("in_chans", 3)),
      lda_mode=lda_mode, img_size=img_size,
      **{k: type(default)(kw.pop(k)) for k, default in _MAIN_ONLY_DEFAULTS.items() if k in kw})
  if kw:
    raise ValueError(f"unknown official CrossFormer arguments: {sorted(kw)}")
  if classifier:
    backbone = CrossFormerBackbone(dims=dims, group_sizes=group_sizes, intervals=tuple(intervals), **config,
                                   parent=None)
    return CrossFormer(num_classes=num_classes, backbone=backbone)
  return CrossFormerBackbone(dims=dims, group_sizes=group_sizes, intervals=tuple(intervals), **config)


def flax_path(official_key: str) -> Tuple[Tuple[str, ...], str]:
  """Maps an official key to (Flax module path, official leaf name), e.g.
  ``layers.0.blocks.1.attn.qkv.weight`` -> ``(('layers_0_blocks_1', 'attn', 'qkv'), 'weight')``."""
  module, leaf = official_key.rsplit(".", 1)
  for pattern, replacement in _MODULE_RULES:
    module = pattern.sub(replacement, module)
  return tuple(module.split(".")), leaf


def convert_leaf(leaf: str, value: np.ndarray) -> Tuple[str, np.ndarray]:
  if leaf == "bias":
    return "bias", value
  if leaf != "weight":
    raise KeyError(leaf)
  if value.ndim == 4:  # conv OIHW -> HWIO
    return "kernel", value.transpose(2, 3, 1, 0)
  if value.ndim == 2:  # linear (out, in) -> (in, out)
    return "kernel", value.T
  return "scale", value  # LayerNorm


def expected_param_shapes(module: nn.Module) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flat ``{path: shape}`` of the module's parameters, without computing anything."""
  in_chans = (module.backbone if isinstance(module, CrossFormer) else module).in_chans
  variables = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, in_chans)))
  return {path: tuple(v.shape) for path, v in tree.flatten(variables["params"], sep=None).items()}


def convert_state_dict(state_dict: Mapping[str, Any], module: nn.Module,
                       strict: bool = True) -> Dict[str, Any]:
  """Official state_dict -> ``{'params': ...}`` for ``module`` (a backbone or a classifier).

  The DPB buffers are dropped; a classification head is dropped (and logged) when ``module`` is a
  backbone. With ``strict``, missing, unexpected or mis-shaped keys raise a ``ValueError`` listing them.
  """
  sd = unwrap_state_dict(state_dict)
  classifier = isinstance(module, CrossFormer)
  expected = expected_param_shapes(module)
  params, unexpected, mismatched, dropped, seen = {}, [], [], [], set()
  for key, value in sd.items():
    if key.endswith(BUFFER_SUFFIXES):
      continue
    path, leaf = flax_path(key)
    if not classifier and path[0] in ("norm", "output_projection"):
      dropped.append(key)  # the classification head, unused by the dense backbone
      continue
    if classifier and path[0] not in ("norm", "output_projection"):
      path = ("backbone",) + path
    try:
      name, converted = convert_leaf(leaf, value)
    except KeyError:
      unexpected.append(key)
      continue
    full = path + (name,)
    seen.add(full)
    if full not in expected:
      unexpected.append(key)
    elif tuple(converted.shape) != expected[full]:
      mismatched.append(f"{key}: checkpoint {tuple(value.shape)} -> {tuple(converted.shape)}, "
                        f"model expects {expected[full]}")
    else:
      params[full] = np.asarray(converted, dtype=np.float32)
  missing = ["/".join(p) for p in expected if p not in seen]
  if dropped:
    logging.info("dropped %d classification-head keys (%s)", len(dropped), ", ".join(sorted(dropped)))
  problems = [(title, items) for title, items in (("missing", missing), ("unexpected", unexpected),
                                                  ("shape mismatch", mismatched)) if items]
  if problems:
    message = "; ".join(f"{title} keys ({len(items)}): {', '.join(items[:20])}"
                        + (" ..." if len(items) > 20 else "") for title, items in problems)
    if strict:
      raise ValueError(f"checkpoint does not fit {type(module).__name__}: {message}")
    logging.warning("checkpoint conversion: %s", message)
  return {"params": tree.unflatten(params)}


def from_official(state_dict: Mapping[str, Any], *, model: str = "auto", lda_mode: Optional[str] = None,
                  strict: bool = True, **official_kwargs) -> Tuple[nn.Module, Dict[str, Any]]:
  """Builds the Flax module and its variables from an official CrossFormer state_dict.

  Args:
    state_dict: official keys -> arrays (numpy or torch tensors); checkpoint wrappers and the mmdet/mmseg
      ``backbone.`` prefix are accepted.
    model: ``"backbone"`` (the dense :class:`CrossFormerBackbone`), ``"classifier"`` (:class:`CrossFormer`)
      or ``"auto"`` (classifier when the checkpoint has ``head.weight``).
    lda_mode: ``"v1"`` for the released CrossFormer checkpoints, ``"main"`` for the main-branch code's
      semantics (CrossFormer++); None: ``"main"`` when ``official_kwargs`` hold a CrossFormer++ option
      (``use_acl``, ``group_type``, ... or a per-stage ``mlp_ratio`` list), else ``"v1"``.
    strict: raise on missing, unexpected or mis-shaped keys (otherwise only log them).
    **official_kwargs: the official constructor's keyword arguments (``embed_dim``, ``depths``, ...;
      CrossFormer++: ``group_size``, ``crs_interval``, ``group_type``, ``use_acl``, ``mlp_ratio`` list,
      ``img_size`` (the design resolution of the non-constant group types), ``adaptive_interval``,
      and for the classifier ``pad_type`` and ``no_mask``).

  Returns:
    ``(module, {'params': params})``.
  """
  if model not in ("auto", "backbone", "classifier"):
    raise ValueError(f"model must be 'auto', 'backbone' or 'classifier', got {model!r}")
  sd = unwrap_state_dict(state_dict)
  classifier = model == "classifier" or (model == "auto" and "head.weight" in sd)
  if classifier and "num_classes" not in official_kwargs and "head.weight" in sd:
    official_kwargs["num_classes"] = sd["head.weight"].shape[0]
  module = module_from_official(official_kwargs, classifier, lda_mode)
  return module, convert_state_dict(sd, module, strict)


def read_official_checkpoint(path: str) -> Dict[str, np.ndarray]:
  """Reads an official checkpoint file: ``.pth``/``.pt`` (needs torch) or ``.npz`` of state_dict keys.

  Nothing in the file is executed (``backbones.weights.files.read_official``: weights-only torch loading with
  the official yacs config allow-listed, ``.npz`` without pickles, the ``sd/`` keys of the parity fixtures).
  mmdet/mmseg files give their ``backbone.*`` keys, prefix removed.
  """
  return unwrap_state_dict(files.read_official(path)[0])


def convert_official_file(path: Any, variant: Optional[str] = None, official_kwargs: Optional[Mapping[str, Any]] = None,
                          model: str = "auto", lda_mode: Optional[str] = None) -> Tuple[Any, Dict[str, Any]]:
  """``(module, variables)`` of an official CrossFormer file (``.pth`` needs torch, ``.npz`` does not).

  ``variant`` names the architecture (a ``backbones.list_models()`` name) or ``official_kwargs`` gives the
  official constructor's arguments; ``model``: ``"classifier"`` keeps the head, ``"backbone"`` the dense
  backbone only, ``"auto"`` keeps the head when the file has one (mmseg/mmdet files give their backbone).
  """
  if (variant is None) == (official_kwargs is None):
    raise ValueError("give exactly one of variant (e.g. crossformer_s) and official_kwargs")
  state_dict = unwrap_state_dict(read_official_checkpoint(path))
  if official_kwargs is not None:
    return from_official(state_dict, model=model, lda_mode=lda_mode, **dict(official_kwargs))
  classifier = model == "classifier" or (model == "auto" and "head.weight" in state_dict)
  num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 1000
  options = {"lda_mode": lda_mode} if lda_mode else {}
  module = registry.create_model(variant, features_only=not classifier, num_classes=num_classes, **options)
  return module, convert_state_dict(state_dict, module)
