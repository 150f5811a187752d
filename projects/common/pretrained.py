"""Initialising ``params["backbone"]`` from a pretrained checkpoint (``config.init_from.checkpoint_path``).

Accepted: a Scenic train-state checkpoint (a ``checkpoint_<step>`` file or a directory of them, e.g. written
by ``python -m projects.convert_checkpoint --format scenic``: its ``params["backbone"]``), a converted
``.msgpack`` / ``.safetensors`` (``backbones.load_backbone_params``) or an official ``.pth`` / ``.npz`` state_dict
(converted on the fly for the model's backbone: ``backbones.load_variables``).
"""

import pathlib
from typing import Any, Callable, Dict, Optional

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

import backbones
from backbones.weights import files
from backbones.weights import scenic
from backbones.weights import tree


def merge_backbone_params(params: Dict[str, Any], backbone_params: Any,
                          source: str = "checkpoint") -> Dict[str, Any]:
  """Returns ``params`` with ``params["backbone"]`` replaced by ``backbone_params``.

  Raises ``ValueError`` naming the offending paths when a parameter is missing on either side or has a
  different shape; values are cast to the dtype of the freshly initialised parameters.
  """
  if "backbone" not in params:
    raise ValueError("the model has no 'backbone' sub-module (params keys: "
                     f"{sorted(params)}); name the backbone 'backbone' to load pretrained weights")
  expected, loaded = tree.flatten(params["backbone"]), tree.flatten(backbone_params)
  tree.compare_shapes(expected, loaded).raise_if_bad(
      f"pretrained backbone from {source}", "wrong variant, embed_dim/depths or group sizes?")
  merged = {k: jnp.asarray(loaded[k], dtype=jnp.asarray(v).dtype) for k, v in expected.items()}
  new_params = dict(params)
  new_params["backbone"] = tree.unflatten(merged)
  return new_params


def init_from_path(config: Any) -> Optional[str]:
  """``config.init_from.checkpoint_path`` (Scenic's field), or ``None``."""
  init_from = config.get("init_from", None)
  if not init_from:
    return None
  return init_from.get("checkpoint_path", None) or None


def load_pretrained_backbone(params: Dict[str, Any], path: str,
                             loader: Optional[Callable[[str], Any]] = None,
                             backbone: Optional[Any] = None) -> Dict[str, Any]:
  """Loads ``path`` into ``params["backbone"]``: a Scenic train-state checkpoint's ``params["backbone"]``, an
  official ``.pth``/``.npz`` converted for ``backbone`` (the model's backbone module, by its family's mapping),
  else ``backbones.load_backbone_params(path)`` (or ``loader``)."""
  if loader is None:
    if scenic.find_scenic_checkpoint(path) is not None:
      loader = scenic.load_scenic_backbone_params
    elif pathlib.Path(path).suffix.lower() in files.OFFICIAL_SUFFIXES:
      if backbone is None:
        raise ValueError(f"{path} is an official checkpoint: converting it needs the model's backbone "
                         "(config.model.backbone), or convert it first with python -m projects.convert_checkpoint")
      loader = lambda p: backbones.load_variables(backbone, p)["params"]
    else:
      loader = backbones.load_backbone_params  # looked up now: tests replace it
  backbone_params = loader(path)
  if isinstance(backbone_params, dict) and set(backbone_params) == {"params"}:
    backbone_params = backbone_params["params"]  # a variables dict rather than bare params
  new_params = merge_backbone_params(params, backbone_params, source=path)
  count = sum(int(np.size(x)) for x in jax.tree.leaves(new_params["backbone"]))
  logging.info("loaded %d pretrained backbone parameters from %s", count, path)
  return new_params
