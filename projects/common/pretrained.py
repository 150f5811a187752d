"""Initialising ``params["backbone"]`` from a pretrained checkpoint (``config.init_from.checkpoint_path``).

Accepted: a Scenic train-state checkpoint (a ``checkpoint_<step>`` file or a directory of them, e.g. written
by ``python -m backbones.convert_checkpoint --format scenic``: its ``params["backbone"]``), a converted
``.msgpack`` or an official ``.pth`` / ``.npz`` state_dict (``backbones.load_backbone_params``).
"""

from typing import Any, Callable, Dict, Optional

from absl import logging
import flax
import jax
import jax.numpy as jnp
import numpy as np


def _flat(tree: Any) -> Dict[str, Any]:
  return {"/".join(k): v for k, v in flax.traverse_util.flatten_dict(flax.core.unfreeze(tree)).items()}


def merge_backbone_params(params: Dict[str, Any], backbone_params: Any,
                          source: str = "checkpoint") -> Dict[str, Any]:
  """Returns ``params`` with ``params["backbone"]`` replaced by ``backbone_params``.

  Raises ``ValueError`` naming the offending paths when a parameter is missing on either side or has a
  different shape; values are cast to the dtype of the freshly initialised parameters.
  """
  if "backbone" not in params:
    raise ValueError("the model has no 'backbone' sub-module (params keys: "
                     f"{sorted(params)}); name the backbone 'backbone' to load pretrained weights")
  expected, loaded = _flat(params["backbone"]), _flat(backbone_params)
  missing = sorted(set(expected) - set(loaded))
  unexpected = sorted(set(loaded) - set(expected))
  mismatched = sorted(f"{k}: checkpoint {tuple(np.shape(loaded[k]))} vs model {tuple(np.shape(expected[k]))}"
                      for k in set(expected) & set(loaded)
                      if tuple(np.shape(loaded[k])) != tuple(np.shape(expected[k])))
  if missing or unexpected or mismatched:
    def show(items):
      return ", ".join(items[:8]) + (f" ... (+{len(items) - 8})" if len(items) > 8 else "")
    problems = []
    if mismatched:
      problems.append(f"{len(mismatched)} shape mismatches [{show(mismatched)}]")
    if missing:
      problems.append(f"{len(missing)} params missing from the checkpoint [{show(missing)}]")
    if unexpected:
      problems.append(f"{len(unexpected)} unexpected params in the checkpoint [{show(unexpected)}]")
    raise ValueError(f"pretrained backbone from {source} does not fit the model's backbone (wrong variant, "
                     f"embed_dim/depths or group sizes?): " + "; ".join(problems))
  merged = {k: jnp.asarray(loaded[k], dtype=jnp.asarray(v).dtype) for k, v in expected.items()}
  new_params = dict(params)
  new_params["backbone"] = flax.traverse_util.unflatten_dict({tuple(k.split("/")): v
                                                              for k, v in merged.items()})
  return new_params


def init_from_path(config: Any) -> Optional[str]:
  """``config.init_from.checkpoint_path`` (Scenic's field), or ``None``."""
  init_from = config.get("init_from", None)
  if not init_from:
    return None
  return init_from.get("checkpoint_path", None) or None


def load_pretrained_backbone(params: Dict[str, Any], path: str,
                             loader: Optional[Callable[[str], Any]] = None) -> Dict[str, Any]:
  """Loads ``path`` into ``params["backbone"]``: a Scenic train-state checkpoint's ``params["backbone"]``,
  else ``backbones.load_backbone_params(path)`` (or ``loader``)."""
  if loader is None:
    from backbones import scenic_checkpoint  # pylint: disable=g-import-not-at-top
    if scenic_checkpoint.find_scenic_checkpoint(path) is not None:
      loader = scenic_checkpoint.load_scenic_backbone_params
    else:
      import backbones  # pylint: disable=g-import-not-at-top
      loader = backbones.load_backbone_params
  backbone_params = loader(path)
  if isinstance(backbone_params, dict) and set(backbone_params) == {"params"}:
    backbone_params = backbone_params["params"]  # a variables dict rather than bare params
  new_params = merge_backbone_params(params, backbone_params, source=path)
  count = sum(int(np.size(x)) for x in jax.tree.leaves(new_params["backbone"]))
  logging.info("loaded %d pretrained backbone parameters from %s", count, path)
  return new_params
