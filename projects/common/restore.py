"""A whole task model and its variables from a checkpoint: ``restore_model(config_or_path, checkpoint)``.

``checkpoint`` is one of
* a training workdir (its latest orbax checkpoint, ``<workdir>/checkpoints/<step>``; the config defaults to
  the run's ``<workdir>/config.json``), or one step folder of it;
* a converted whole-model file (``projects.common.model_io.save_model_file``: job config + variables);
* an official mmseg/mmdet checkpoint (``.pth`` / ``.npz``), converted on the fly with the given config
  (``projects.common.model_io.convert_official_checkpoint``).

The model class is the one ``config.model_name`` names (``projects.registry``); the dataset facts it needs
(``num_classes``, ``class_names``, COCO ``category_ids``) come from ``config.dataset_meta`` (model files store
it), else from the checkpoint's classifier (the class's ``num_classes_from_params``) and what the config's
dataset declares (``registry.dataset_meta``).
"""

import json
import os
import pathlib
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple, Union

import flax
import jax
import ml_collections
import numpy as np

from backbones.weights import files
from backbones.weights import tree
from projects.common import config_utils
from projects.common import model_io
from projects.common.base_model import BaseModel

ConfigOrPath = Union[None, str, os.PathLike, ml_collections.ConfigDict]
META_KEYS = ("num_classes", "class_names", "category_ids")


def load_job_config(config_or_path: ConfigOrPath) -> ml_collections.ConfigDict:
  """A job config from a ``ConfigDict``, a config file (``.py`` with ``get_config()``) or a run's ``config.json``."""
  if isinstance(config_or_path, ml_collections.ConfigDict):
    return config_or_path
  if config_or_path is None:
    raise ValueError("no config given: pass --config CONFIG.py (or a training workdir as the checkpoint)")
  path = pathlib.Path(config_or_path)
  if path.is_dir() and (path / "config.json").is_file():
    path = path / "config.json"
  if path.suffix == ".json" and not path.is_file():
    raise FileNotFoundError(f"config {path} does not exist (expected a configs/*.py file or a run's config.json)")
  if path.suffix == ".json":
    try:
      return ml_collections.ConfigDict(json.loads(path.read_text()))
    except json.JSONDecodeError as e:
      raise ValueError(f"config {path} is not valid JSON: {e}") from None
  return config_utils.load_config(str(path))


def add_model_arguments(parser: Any) -> None:
  """The ``--config`` / ``--checkpoint`` arguments every predict/evaluate/export command takes (argparse)."""
  parser.add_argument("--config", default=None, help="job config (.py or a run's config.json); optional "
                      "for a workdir or a converted model file")
  parser.add_argument("--checkpoint", required=True,
                      help="training workdir, converted model file, or official .pth/.npz")


def is_task_checkpoint(path: Union[str, os.PathLike]) -> bool:
  """Whether ``path`` holds a whole task model with its config: a training workdir (or one of its steps) or
  a converted model file (``model_io.save_model_file``)."""
  path = pathlib.Path(path)
  if path.is_dir():
    return workdir_checkpoint(path) is not None
  try:
    model_io.load_model_file(path)
  except (OSError, ValueError):
    return False
  return True


def workdir_checkpoint(path: Union[str, os.PathLike]) -> Optional[Tuple[pathlib.Path, Optional[pathlib.Path]]]:
  """``(step folder, run config.json or None)`` when ``path`` is a training workdir, its ``checkpoints``
  folder or one step of it; ``None`` when it is none of these. The newest complete step is taken."""
  path = pathlib.Path(path)
  if not path.is_dir():
    return None
  if path.name.isdigit() and path.parent.name == "checkpoints":  # one step folder
    return path, _config_json(path.parent.parent)
  folder, workdir = (path, path.parent) if path.name == "checkpoints" else (path / "checkpoints", path)
  if not folder.is_dir():
    return None
  steps = sorted(int(p.name) for p in folder.iterdir() if p.is_dir() and p.name.isdigit())
  if not steps:
    raise FileNotFoundError(f"{folder} holds no complete checkpoint step yet (train first, or wait for the "
                            "first checkpoint_steps)")
  return folder / str(steps[-1]), _config_json(workdir)


def _config_json(workdir: pathlib.Path) -> Optional[pathlib.Path]:
  path = workdir / "config.json"
  return path if path.is_file() else None


def read_orbax_variables(step_dir: pathlib.Path) -> Dict[str, Any]:
  """``{"params": ..., **model_state}`` (numpy) of a trainer checkpoint step (``TrainState`` saved by orbax)."""
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  item = step_dir / "default" if (step_dir / "default").is_dir() else step_dir
  try:
    with ocp.StandardCheckpointer() as checkpointer:
      state = checkpointer.restore(item.resolve())
  except Exception as e:  # orbax raises several types for a foreign folder
    raise ValueError(f"{step_dir} is not a readable trainer checkpoint ({type(e).__name__}: {e})") from None
  if not isinstance(state, Mapping) or "params" not in state:
    raise ValueError(f"{step_dir} holds no 'params': not a checkpoint of projects.common.trainer")
  variables = {"params": state["params"], **dict(state.get("model_state") or {})}
  return jax.tree.map(np.asarray, variables)


def complete_meta_data(model_cls: type, config: ml_collections.ConfigDict, params: Mapping[str, Any],
                       meta_data: Mapping[str, Any]) -> Dict[str, Any]:
  """``meta_data`` completed for ``model_cls``: ``num_classes`` read off the checkpoint's classifier when not
  given, then the dataset's names (and ids) when its class count agrees, else the model's generic ones."""
  meta = dict(meta_data)
  if "num_classes" not in meta:
    meta["num_classes"] = model_cls.num_classes_from_params(params, config)
  num = int(meta["num_classes"])
  try:
    declared = model_io.dataset_facts(ml_collections.ConfigDict({
        k: v for k, v in config.items() if k in ("dataset_name", "dataset")}))
  except ValueError:
    declared = None
  if declared and int(declared["num_classes"]) == num:
    for key, value in declared.items():
      meta.setdefault(key, value)
  for key, value in model_cls.generic_meta_data(num).items():
    meta.setdefault(key, value)
  return meta


def config_meta_data(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """The dataset facts a config carries in ``config.dataset_meta`` (``num_classes``, ``class_names``,
  ``category_ids``; model files written by ``model_io.save_model_file`` always do)."""
  meta = config.get("dataset_meta") or {}
  return {k: (int(meta[k]) if k == "num_classes" else list(meta[k])) for k in META_KEYS if meta.get(k) is not None}


def check_variables(model: BaseModel, variables: Mapping[str, Any], source: str) -> Dict[str, Any]:
  """``variables`` cast to the model's dtypes after checking every path and shape against the model.

  Raises ``ValueError`` naming the missing / unexpected / mismatched paths and ``source``.
  """
  expected, given = tree.flatten(model_io.variable_shapes(model)), tree.flatten(variables)
  tree.compare_shapes(expected, given).raise_if_bad(
      f"the checkpoint {source}", "another model, size or class count? pass the config it was trained with")
  cast = {k: np.asarray(v, dtype=expected[k].dtype) for k, v in given.items()}
  return tree.unflatten(cast)


def restore_model(config_or_path: ConfigOrPath, checkpoint: Union[str, os.PathLike],
                  meta_data: Optional[Mapping[str, Any]] = None) -> Tuple[BaseModel, Dict[str, Any]]:
  """``(task model, variables)`` for inference; see the module docstring for what ``checkpoint`` may be.

  Args:
    config_or_path: the job config (or its ``.py`` / ``config.json`` path); None to use the one stored with
      the checkpoint (a workdir's ``config.json``, a converted file's config).
    checkpoint: a training workdir (or step folder), a converted model file or an official ``.pth``/``.npz``.
    meta_data: overrides ``num_classes`` / ``class_names`` / ``category_ids``.

  Raises:
    FileNotFoundError: ``checkpoint`` does not exist.
    ValueError: it does not fit the config (the message names the paths), or cannot be read.
  """
  source = pathlib.Path(checkpoint)
  if not source.exists():
    raise FileNotFoundError(f"checkpoint {source} does not exist (give a training workdir, a converted model "
                            "file or an official .pth/.npz)")
  found = workdir_checkpoint(source)
  if found is not None:
    step_dir, stored_config = found
    if config_or_path is None and stored_config is None:
      raise ValueError(f"{source} has no config.json beside its checkpoints; pass --config")
    config = load_job_config(config_or_path if config_or_path is not None else stored_config)
    variables = read_orbax_variables(step_dir)
    source_name = str(step_dir)
  elif source.is_dir():
    raise ValueError(f"{source} is a folder without trainer checkpoints (expected <workdir>/checkpoints/<step>)")
  elif source.suffix.lower() in files.OFFICIAL_SUFFIXES:
    if config_or_path is None:
      raise ValueError(f"official checkpoint {source} needs the config of its model: pass --config")
    config = load_job_config(config_or_path)
    variables = model_io.convert_official_checkpoint(str(source), config)
    source_name = str(source)
  else:
    stored, variables = model_io.load_model_file(str(source))
    stored = ml_collections.ConfigDict(stored)
    config = stored if config_or_path is None else load_job_config(config_or_path)
    if config_or_path is not None:  # the file's dataset facts still apply
      meta_data = {**config_meta_data(stored), **dict(meta_data or {})}
    source_name = str(source)
  meta = config_meta_data(config)
  meta.update(dict(meta_data or {}))
  meta = complete_meta_data(model_io.model_class(config), config, variables["params"], meta)
  model = model_io.build_model(config, meta, inference=True)
  return model, check_variables(model, variables, source_name)


def restore_for_evaluation(args: Any, task: str, dataset_keys: Sequence[str] = ("data_dir",)
                           ) -> Tuple[BaseModel, Dict[str, Any], ml_collections.ConfigDict]:
  """``(model, variables, config)`` for an ``evaluate`` command's parsed ``args`` (``--config``,
  ``--checkpoint``, ``--eval_batch_size`` and the ``dataset_keys`` options, which override
  ``config.dataset``). Exits with a one-line message when the checkpoint is another task's model."""
  model, variables = restore_model(args.config, args.checkpoint)
  check_task(model, task, args.checkpoint, "evaluate")
  config = ml_collections.ConfigDict(model.config)
  with config.unlocked():
    for key in dataset_keys:
      if getattr(args, key):
        config.dataset[key] = getattr(args, key)
    if args.eval_batch_size:
      config.eval_batch_size = args.eval_batch_size
  return model, variables, config


def check_task(model: BaseModel, task: str, checkpoint: Any, command: str) -> None:
  """Exits with one line when ``model`` belongs to another task than the command's ``task``."""
  if model.task != task:
    raise SystemExit(f"{checkpoint} is not a {task} model; use projects.{model.task}.{command} (it holds "
                     f"{model.name})")


@flax.struct.dataclass
class InferenceState:
  """The part of a ``TrainState`` that evaluation uses (``variables()``), for restored models; a pytree, so
  it can be passed to jitted eval steps: ``InferenceState(tree=variables)``."""
  tree: Dict[str, Any]

  def variables(self) -> Dict[str, Any]:
    return dict(self.tree)
