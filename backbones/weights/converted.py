"""Converted Flax checkpoints on disk: one file holding the module description and the variables.

A ``.msgpack`` file holds ``{"format", "module": class name, "kwargs": architecture JSON, "variables"}``; a
``.safetensors`` path (or a Hub id / Hub-layout folder) goes to ``backbones.weights.hub``. The module is
described by ``backbones.weights.description`` (its class found in ``backbones.registry``).
"""

import os
import pathlib
from typing import Any, Dict, Mapping, Tuple, Union

import flax
import flax.linen as nn
import jax
import numpy as np

from backbones.weights import description
from backbones.weights import files
from backbones.weights import hub
from backbones.weights import tree

FORMAT = description.FORMAT
PathLike = Union[str, os.PathLike]


def save_converted(path: PathLike, module: nn.Module, variables: Dict[str, Any]) -> pathlib.Path:
  """Writes ``module``'s architecture and ``variables`` to ``path`` atomically (``files.write_atomic``).

  A ``.safetensors`` path gets a safetensors file (``backbones.weights.hub``), any other a msgpack file.
  """
  if pathlib.Path(path).suffix == ".safetensors":
    return hub.write_safetensors(path, module, variables)
  payload = {"format": FORMAT, "module": type(module).__name__, "kwargs": description.architecture_json(module),
             "variables": jax.tree.map(np.asarray, variables)}
  return files.write_atomic(path, flax.serialization.msgpack_serialize(payload))


def load_converted(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
  """Reads a file written by :func:`save_converted`, a Hub id ``hf-hub:ORG/NAME`` or a folder in the Hub
  layout (``backbones.weights.hub``): ``(module, variables)``."""
  if hub.is_hub_id(path) or pathlib.Path(path).is_dir() or str(path).endswith(".safetensors"):
    return hub.load_pretrained(path)
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no converted CrossFormer checkpoint at {path}; make one with "
                            "`python -m projects.convert_checkpoint --input OFFICIAL.pth "
                            f"--variant crossformer_s --output {path}`")
  try:
    payload = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises several types on bad bytes)
    raise ValueError(f"{path} is not a readable converted CrossFormer checkpoint (truncated or another "
                     f"format: {type(e).__name__}); convert the official file again") from None
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ValueError(f"{path} is not a converted CrossFormer checkpoint (format {FORMAT!r})")
  module = description.module_from_description(payload["module"], payload["kwargs"], path)
  return module, payload["variables"]


def is_converted(source: Any) -> bool:
  """Whether ``source`` names a converted checkpoint (msgpack, safetensors, Hub id or Hub-layout folder)
  rather than an official state_dict."""
  return (hub.is_hub_id(source) or str(source).endswith((".msgpack", ".safetensors"))
          or pathlib.Path(source).is_dir())


def is_classifier(module: Any) -> bool:
  """Whether ``module`` composes a dense backbone as its ``backbone`` field (a classifier)."""
  return isinstance(getattr(module, "backbone", None), nn.Module)


def load_backbone_params(path: PathLike) -> Dict[str, Any]:
  """The dense backbone's ``params`` from a converted checkpoint (backbone or classifier)."""
  module, variables = load_converted(path)
  params = variables["params"]
  return params["backbone"] if is_classifier(module) else params


def variables_for(module: nn.Module, path: PathLike, expected: Mapping[str, Any]) -> Dict[str, Any]:
  """``{"params": ...}`` for ``module`` from the converted checkpoint ``path``, checked against the
  ``expected`` params (shapes): a classifier's file feeds a backbone (its head is dropped)."""
  stored_module, variables = load_converted(path)
  params = variables["params"]
  if not is_classifier(module) and is_classifier(stored_module):
    params = params["backbone"]
  elif is_classifier(module) and not is_classifier(stored_module):
    raise ValueError(f"{path} holds a dense backbone without a classification head; "
                     "create the model with features_only=True")
  tree.compare_shapes(expected, params).raise_if_bad(f"{path} ({type(module).__name__})")
  return {"params": params}
