"""Scenic train-state checkpoints of a backbone: what Scenic's standard pretrained-loading path reads.

Scenic (``scenic.train_lib.pretrain_utils.restore_pretrained_checkpoint``) restores a flax checkpoint file
``<dir>/checkpoint_<step>`` holding a msgpack-serialised ``TrainState`` dict and reads its ``params``,
``model_state``, ``global_step``, ``rng`` and ``metadata``; ``init_from_pretrain_state`` then copies every
parameter whose path also exists in the new model. ``save_scenic_checkpoint`` writes such a file with
``params={"backbone": <backbone params>}``, so a Scenic module that names its CrossFormer sub-module
``backbone`` (``create_model(..., name="backbone")``) receives all of them. ``load_scenic_checkpoint`` reads
one back (ours or Scenic's) without unpickling anything.
"""

import os
import pathlib
import re
from typing import Any, Dict, Mapping, Optional, Union

import flax
import jax
import numpy as np

from backbones.weights import files

PathLike = Union[str, os.PathLike]
PREFIX = "checkpoint_"
_STEP = re.compile(rf"^{PREFIX}(\d+)$")


def save_scenic_checkpoint(directory: PathLike, backbone_params: Any, step: int = 0,
                           metadata: Optional[Mapping[str, str]] = None) -> pathlib.Path:
  """Writes ``<directory>/checkpoint_<step>`` (Scenic's ``TrainState`` layout) atomically; returns its path.

  ``backbone_params`` are the backbone's ``params`` collection (without a ``params`` wrapper); an existing
  checkpoint of that step is never overwritten (``FileExistsError``).
  """
  directory = pathlib.Path(directory)
  directory.mkdir(parents=True, exist_ok=True)
  path = directory / f"{PREFIX}{int(step)}"
  if path.exists():
    raise FileExistsError(f"{path} exists; choose another directory or step")
  state = {
      "opt_state": {},
      "params": {"backbone": jax.tree.map(np.asarray, flax.core.unfreeze(backbone_params))},
      "global_step": np.asarray(int(step), np.int64),
      "model_state": {},
      "rng": np.zeros((2,), np.uint32),
      "metadata": {str(k): str(v) for k, v in (metadata or {}).items()},
  }
  return files.write_atomic(path, flax.serialization.msgpack_serialize(state))


def find_scenic_checkpoint(path: PathLike) -> Optional[pathlib.Path]:
  """The checkpoint file of ``path``: ``path`` itself when named ``checkpoint_<step>``, the highest step in
  a directory of them, else ``None`` (not a Scenic checkpoint)."""
  path = pathlib.Path(path)
  if path.is_file() and _STEP.match(path.name):
    return path
  if path.is_dir():
    steps = [(int(m.group(1)), p) for p in path.iterdir() if p.is_file() and (m := _STEP.match(p.name))]
    if steps:
      return max(steps)[1]
  return None


def load_scenic_checkpoint(path: PathLike) -> Dict[str, Any]:
  """The restored train-state dict (``params``, ``model_state``, ``global_step``, ...) of a Scenic checkpoint
  file or directory (latest step)."""
  found = find_scenic_checkpoint(path)
  if found is None:
    raise FileNotFoundError(f"no Scenic checkpoint ({PREFIX}<step>) at {path}")
  with open(found, "rb") as f:
    state = flax.serialization.msgpack_restore(f.read())
  if not isinstance(state, dict) or "params" not in state:
    raise ValueError(f"{found} is not a Scenic train-state checkpoint (no 'params'; keys: "
                     f"{sorted(state) if isinstance(state, dict) else type(state).__name__})")
  return state


def load_scenic_backbone_params(path: PathLike) -> Dict[str, Any]:
  """``params["backbone"]`` of a Scenic train-state checkpoint."""
  params = load_scenic_checkpoint(path)["params"]
  if "backbone" not in params:
    raise ValueError(f"the Scenic checkpoint at {path} has no params['backbone'] (top-level keys: "
                     f"{sorted(params)}); a Scenic model must name its CrossFormer sub-module 'backbone'")
  return params["backbone"]
