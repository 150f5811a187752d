"""Whole models on disk: one model file (config + variables) and official mmseg/mmdet checkpoint conversion.

* ``save_model_file(path, config, variables)`` / ``load_model_file(path)``: one msgpack file holding a format
  tag, the job config as JSON (``config.model`` and ``config.dataset_meta``: ``num_classes``, ``class_names``,
  and for detection ``category_ids``) and the variables (``params``, ``batch_stats``).
* ``convert_official_checkpoint(source, config)``: an official checkpoint (``.pth`` with ``state_dict`` +
  ``meta``, the same state dict as ``.npz``, or an in-memory mapping) -> our variables for the model that
  ``config`` describes. The key mapping is the model class's (``convert_official``); every key is used or
  explicitly dropped.
* ``build_model(config)``: the task model that ``config.model_name`` names (``projects.registry``), with the
  dataset facts of ``dataset_facts(config)``.
"""

import copy
import json
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from backbones.weights import files
from projects import registry

FORMAT = "crossformer-jax-model/1"
PathLike = Union[str, os.PathLike]
# Input size used to derive parameter shapes (abstractly, with jax.eval_shape).
_SHAPE_PROBE_SIZE = 128


# ------------------------------------------------------------------------------------------------ models

def model_class(config: ml_collections.ConfigDict) -> type:
  """The ``BaseModel`` class that ``config.model_name`` names (``projects.registry``)."""
  name = config.get("model_name")
  if not name:
    raise ValueError("the config has no model_name (the registry name of its model, e.g. "
                     f"'crossformer_segmentation'; registered: {registry.list_models()})")
  return registry.get_model_cls(name)


def dataset_facts(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """``num_classes``, ``class_names`` (and what else the model's task records, e.g. COCO ``category_ids``) of
  ``config``'s dataset without reading its data: ``config.dataset_meta`` when present (model files and run
  configs carry it), else what the dataset registered as ``config.dataset_name`` declares."""
  if config.get("dataset_meta") is not None:
    meta = dict(config.dataset_meta.to_dict() if hasattr(config.dataset_meta, "to_dict")
                else config.dataset_meta)
    if "num_classes" not in meta:
      raise ValueError("config.dataset_meta has no num_classes")
    return meta
  meta = registry.dataset_meta(config)
  if meta is None:
    raise ValueError(f"dataset {config.get('dataset_name')!r} declares no class facts: set "
                     "config.dataset_meta.num_classes (and class_names), or use a run's config.json")
  return meta


def with_dataset_meta(config: ml_collections.ConfigDict, meta_data: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """A copy of ``config`` with ``dataset_meta`` (``num_classes``, ``class_names``) of its dataset, as model
  files store it: a run's ``config.json`` then restores (predict, evaluate) without the data."""
  config = copy.deepcopy(config)
  with config.unlocked():
    config.dataset_meta = ml_collections.ConfigDict({
        "num_classes": int(meta_data["num_classes"]), "class_names": list(meta_data["class_names"])})
  return config


def build_model(config: ml_collections.ConfigDict, dataset_meta: Optional[Mapping[str, Any]] = None, *,
                inference: bool = False):
  """The task model of ``config`` (``dataset_meta`` defaults to ``dataset_facts(config)``). ``inference``:
  without stochastic depth (a restored model for predict/evaluate/export)."""
  meta = dict(dataset_meta) if dataset_meta is not None else dataset_facts(config)
  if inference and (config.get("model") or {}).get("backbone") is not None:
    config = ml_collections.ConfigDict(config)
    with config.unlocked():
      config.model.backbone.drop_path_rate = 0.0
  return model_class(config)(config, meta)


def variable_shapes(model: Any) -> Dict[str, Any]:
  """``{collection: nested ShapeDtypeStruct}`` of ``model.flax_model`` (abstract: nothing is computed)."""
  images = jax.ShapeDtypeStruct((1, _SHAPE_PROBE_SIZE, _SHAPE_PROBE_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(lambda x: model.flax_model.init(jax.random.PRNGKey(0), x, train=False), images)
  return flax.core.unfreeze(shapes)


# ---------------------------------------------------------------------------------------- model files

def _config_json(config: ml_collections.ConfigDict) -> str:
  try:
    return config.to_json(sort_keys=True)
  except (TypeError, ValueError):
    return config.to_json_best_effort(sort_keys=True)


def save_model_file(path: PathLike, config: ml_collections.ConfigDict, variables: Mapping[str, Any]
                    ) -> pathlib.Path:
  """Writes ``config`` (as JSON) and ``variables`` to one msgpack file, atomically, mode 0644.

  ``config`` must have ``model`` and ``dataset_meta.num_classes`` (``class_names``; ``category_ids`` for
  detection); ``variables`` holds ``params`` (and ``batch_stats`` where the model has BatchNorm).
  """
  path = pathlib.Path(path)
  if config.get("model") is None:
    raise ValueError("save_model_file: the config has no 'model' field")
  meta = config.get("dataset_meta")
  if meta is None or meta.get("num_classes") is None:
    raise ValueError("save_model_file: the config needs dataset_meta.num_classes (and class_names)")
  if "params" not in variables:
    raise ValueError(f"save_model_file: variables need 'params', got {sorted(variables)}")
  payload = {"format": FORMAT, "config": _config_json(config),
             "variables": jax.tree.map(np.asarray, flax.core.unfreeze(dict(variables)))}
  return files.write_atomic(path, flax.serialization.msgpack_serialize(payload))


def load_model_file(path: PathLike) -> Tuple[ml_collections.ConfigDict, Dict[str, Any]]:
  """Reads a file of ``save_model_file``: ``(config, variables)``."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"model file not found: {path} (make one with `python -m projects.convert_checkpoint "
                            "--input OFFICIAL.pth --config CONFIG.py --output OUT.msgpack`)")
  try:
    payload = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise ValueError(f"{path} is not a model file (not msgpack: {type(e).__name__})") from None
  if not isinstance(payload, dict) or "format" not in payload:
    raise ValueError(f"{path} is not a model file (no format tag; a backbone-only file from "
                     "projects.convert_checkpoint?)")
  if payload["format"] != FORMAT:
    raise ValueError(f"{path} has format {payload['format']!r}, expected {FORMAT!r}")
  config = ml_collections.ConfigDict(_lists_to_tuples(json.loads(payload["config"])))
  return config, payload["variables"]


def _lists_to_tuples(value: Any) -> Any:
  """JSON lists back to the tuples the configs are written with."""
  if isinstance(value, dict):
    return {k: _lists_to_tuples(v) for k, v in value.items()}
  if isinstance(value, list):
    return tuple(_lists_to_tuples(v) for v in value)
  return value


# --------------------------------------------------------------------------------- official checkpoints

def read_official_file(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """``(state_dict, meta)`` of an official ``.pth`` or ``.npz`` checkpoint (``backbones.weights.files``)."""
  return files.read_official(path)


def convert_official_checkpoint(source: Union[PathLike, Mapping[str, Any]], config: ml_collections.ConfigDict
                                ) -> Dict[str, Any]:
  """Our variables (``params``, ``batch_stats``) for ``config``'s model from an official checkpoint.

  Args:
    source: a path to an official mmseg/mmdet ``.pth`` (``state_dict`` + ``meta``) or ``.npz`` of the same
      state dict, or an in-memory ``{official key: array}`` mapping.
    config: our job config (``config.model``; ``config.dataset_meta`` or the recipe's dataset for the number
      of classes).

  Raises:
    ValueError: naming every key that does not fit (another model or size), and every missing parameter.
  """
  if isinstance(source, Mapping):
    state_dict = dict(source.get("state_dict", source)) if "state_dict" in source else dict(source)
    state_dict = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v)
                  for k, v in state_dict.items()}
    where = "the checkpoint"
  else:
    state_dict, _ = read_official_file(source)
    where = str(source)
  model = build_model(config)
  variables, report = type(model).convert_official(state_dict, variable_shapes(model))
  if not report.ok:
    backbone = (config.model.get("backbone") or {}).get("name", "?")
    raise ValueError(f"{where} does not fit the model of this config ({config.model_name}, {backbone}): "
                     f"{report.problems()}")
  return variables


def parameter_counts(variables: Mapping[str, Any]) -> Dict[str, int]:
  """Learnable parameters per top-level sub-module of ``variables["params"]``, and ``"total"``."""
  counts = {name: int(sum(np.size(x) for x in jax.tree.leaves(tree)))
            for name, tree in variables["params"].items()}
  counts["total"] = sum(counts.values())
  return counts
