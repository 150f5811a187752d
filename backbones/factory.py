"""timm-style model creation: ``create_model(name, features_only=True, out_indices=..., checkpoint=...)``."""

import pathlib
from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax
import flax.linen as nn

from backbones import checkpoint_io
from backbones.crossformer import convert
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone
from backbones.crossformer.variants import VARIANTS, variant_kwargs

_OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin", ".npz")


def list_models() -> Sequence[str]:
  """Names accepted by :func:`create_model`."""
  return sorted(VARIANTS)


def create_model(name: str, *, features_only: bool = True,
                 out_indices: Sequence[int] = (0, 1, 2, 3), checkpoint: Optional[str] = None,
                 pretrained: Optional[str] = None, num_classes: int = 1000, **overrides: Any
                 ) -> Union[nn.Module, Tuple[nn.Module, Dict[str, Any]]]:
  """Creates a named CrossFormer variant.

  Args:
    name: one of :func:`list_models` (``crossformer_t/s/b/l``).
    features_only: the dense backbone returning ``{'stage_i': map}`` (else the classifier).
    out_indices: which stages the backbone returns: 0..3, or negative from the last (timm's ``-1``).
    checkpoint: where the weights come from: a converted ``.msgpack``/``.safetensors`` (see
      ``backbones.convert_checkpoint``), a Hub id ``hf-hub:ORG/NAME`` or a folder in the Hub layout
      (``backbones.hub``), or an official ``.pth``/``.npz`` state_dict; when given, ``(module, variables)`` is
      returned.
    pretrained: timm's name for ``checkpoint`` (give one of the two).
    num_classes: classes of the classifier (``features_only=False``).
    **overrides: backbone arguments replacing the variant's (``embed_dim`` sets all four widths),
      e.g. ``drop_path_rate``, ``lda_mode``, ``dtype``, ``remat``, ``group_sizes``, ``intervals``.

  Returns:
    The Flax module, or ``(module, variables)`` when ``checkpoint`` is given.
  """
  if pretrained is not None and checkpoint is not None:
    raise ValueError("give the weights as checkpoint= or pretrained=, not both")
  checkpoint = pretrained if checkpoint is None else checkpoint
  kwargs = variant_kwargs(name)
  if "embed_dim" in overrides:
    embed_dim = overrides.pop("embed_dim")
    kwargs["dims"] = tuple(embed_dim * 2 ** i for i in range(len(kwargs["depths"])))
  unknown = set(overrides) - set(CrossFormerBackbone.__dataclass_fields__) - {"embed_dim"}
  if unknown:
    raise ValueError(f"unknown CrossFormer arguments {sorted(unknown)}")
  kwargs.update(overrides)
  if features_only:
    indices = normalize_out_indices(out_indices, len(kwargs["depths"]))
    module = CrossFormerBackbone(**kwargs, out_indices=indices)
  else:
    module = CrossFormer(num_classes=num_classes, **_classifier_kwargs(kwargs))
  if checkpoint is None:
    return module
  return module, load_variables(module, checkpoint)


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


def _classifier_kwargs(backbone_kwargs: Dict[str, Any]) -> Dict[str, Any]:
  renames = {"dims": "dim", "depths": "depth", "intervals": "global_window_size",
             "group_sizes": "local_window_size"}
  return {renames.get(k, k): v for k, v in backbone_kwargs.items() if k != "out_indices"}


def load_variables(module: nn.Module, checkpoint: str) -> Dict[str, Any]:
  """Variables for ``module`` from a converted ``.msgpack`` or an official state_dict file.

  A classifier checkpoint feeds a backbone (its head is dropped); shapes are checked either way.
  """
  path = pathlib.Path(checkpoint)
  if path.suffix in _OFFICIAL_SUFFIXES:
    return convert.convert_state_dict(convert.read_official_checkpoint(str(path)), module)
  stored_module, variables = checkpoint_io.load_converted(checkpoint)
  params = variables["params"]
  if isinstance(module, CrossFormerBackbone) and isinstance(stored_module, CrossFormer):
    params = params["backbone"]
  elif isinstance(module, CrossFormer) and not isinstance(stored_module, CrossFormer):
    raise ValueError(f"{path} holds a dense backbone without a classification head; "
                     "create the model with features_only=True")
  expected = convert.expected_param_shapes(module)
  got = {k: tuple(v.shape) for k, v in flax.traverse_util.flatten_dict(params).items()}
  if got != expected:
    diff = sorted("/".join(k) for k in set(got) ^ set(expected)) or sorted(
        f"{'/'.join(k)}: {got[k]} vs {expected[k]}" for k in got if got[k] != expected[k])
    raise ValueError(f"{path} does not fit {type(module).__name__}: {', '.join(diff[:20])}")
  return {"params": params}
