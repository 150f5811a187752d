"""Weights as safetensors, and models on the Hugging Face Hub in timm's layout.

A converted model is one ``.safetensors`` file: the variables as flat tensors named by their Flax path
(``params/stage_1/blocks_0/attn/qkv/kernel``) and, in the safetensors header metadata, the format tag, the
module class and its architecture arguments as JSON. A Hub repository (timm's layout) holds that file as
``model.safetensors`` plus a ``config.json`` with ``architecture``, ``model_args`` and ``pretrained_cfg``.

    save_pretrained("out/crossformer_s", module, variables)          # a folder in the Hub layout
    push_to_hub("ORG/crossformer_s", module, variables)              # the same, uploaded
    module, variables = load_pretrained("hf-hub:ORG/crossformer_s")   # downloaded once, then cached
    module, variables = load_pretrained("out/crossformer_s")          # a local folder
    module, variables = create_model("crossformer_s", pretrained="hf-hub:ORG/crossformer_s")

Downloads go through ``huggingface_hub`` and its cache (``HF_HOME`` / ``HF_HUB_CACHE``); with
``HF_HUB_OFFLINE=1`` only the cache is read. Nothing in these files is executed: safetensors holds raw
tensors and the metadata is parsed as JSON.
"""

import json
import os
import pathlib
import tempfile
from typing import Any, Dict, Mapping, Optional, Tuple, Union

import flax.linen as nn
import numpy as np

from backbones.weights import description
from backbones.weights import files
from backbones.weights import tree

HUB_PREFIX = "hf-hub:"
WEIGHTS_NAME = "model.safetensors"
CONFIG_NAME = "config.json"
PathLike = Union[str, os.PathLike]


def is_hub_id(source: Any) -> bool:
  """Whether ``source`` names a Hub repository (``hf-hub:ORG/NAME[@REVISION]``)."""
  return isinstance(source, str) and source.startswith(HUB_PREFIX)


def write_safetensors(path: PathLike, module: nn.Module, variables: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``module``'s architecture and ``variables`` as one ``.safetensors`` file, atomically."""
  from safetensors.numpy import save  # pylint: disable=g-import-not-at-top  (optional dependency)
  metadata = {"format": description.FORMAT, "module": type(module).__name__,
              "kwargs": description.architecture_json(module)}
  tensors = {k: np.ascontiguousarray(np.asarray(v)) for k, v in tree.flatten(variables).items()}
  return files.write_atomic(path, save(tensors, metadata=metadata))


def read_safetensors(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
  """Reads a file written by :func:`write_safetensors`: ``(module, variables)``."""
  from safetensors import SafetensorError, safe_open  # pylint: disable=g-import-not-at-top  (optional)
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"checkpoint not found: {path}")
  try:
    with safe_open(str(path), framework="numpy") as f:
      metadata = f.metadata() or {}
      tensors = {key: f.get_tensor(key) for key in f.keys()}
  except (SafetensorError, OSError, ValueError) as e:
    raise ValueError(f"{path} is not a valid .safetensors file: {e}") from None
  if metadata.get("format") != description.FORMAT or "module" not in metadata:
    raise ValueError(f"{path} is a safetensors file but not a converted CrossFormer checkpoint (its "
                     f"metadata lacks format {description.FORMAT!r}); convert official weights with "
                     "`python -m projects.convert_checkpoint`")
  module = description.module_from_description(metadata["module"], metadata.get("kwargs", "{}"), path)
  return module, tree.unflatten(tensors)


def save_pretrained(directory: PathLike, module: nn.Module, variables: Mapping[str, Any],
                    pretrained_cfg: Optional[Mapping[str, Any]] = None) -> pathlib.Path:
  """Writes ``directory/model.safetensors`` and ``directory/config.json`` (timm's Hub layout)."""
  directory = pathlib.Path(directory)
  write_safetensors(directory / WEIGHTS_NAME, module, variables)
  config = {"architecture": type(module).__name__,
            "model_args": description.architecture(module),
            "pretrained_cfg": dict(pretrained_cfg or {})}
  text = json.dumps(config, indent=2, sort_keys=True) + "\n"
  files.write_atomic(directory / CONFIG_NAME, text)
  return directory


def push_to_hub(repo_id: str, module: nn.Module, variables: Mapping[str, Any],
                pretrained_cfg: Optional[Mapping[str, Any]] = None, private: bool = False,
                commit_message: str = "Upload CrossFormer weights") -> str:
  """Uploads the :func:`save_pretrained` layout to ``repo_id`` (needs a Hub token); returns the Hub id."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  api = huggingface_hub.HfApi()
  api.create_repo(repo_id, private=private, exist_ok=True)
  with tempfile.TemporaryDirectory() as tmp:
    save_pretrained(tmp, module, variables, pretrained_cfg)
    api.upload_folder(repo_id=repo_id, folder_path=tmp, commit_message=commit_message)
  return HUB_PREFIX + repo_id


def download(hub_id: str) -> pathlib.Path:
  """The local folder of ``hf-hub:ORG/NAME[@REVISION]`` (downloaded once; the cache only when offline)."""
  import huggingface_hub  # pylint: disable=g-import-not-at-top
  repo_id, _, revision = hub_id[len(HUB_PREFIX):].partition("@")
  if repo_id.count("/") != 1:
    raise ValueError(f"bad Hub id {hub_id!r}: expected hf-hub:ORG/NAME or hf-hub:ORG/NAME@REVISION")
  try:
    folder = huggingface_hub.snapshot_download(repo_id, revision=revision or None,
                                               allow_patterns=[WEIGHTS_NAME, CONFIG_NAME])
  except Exception as e:  # pylint: disable=broad-except  (the hub raises many types; all mean "not here")
    offline = os.environ.get("HF_HUB_OFFLINE", "") not in ("", "0")
    raise FileNotFoundError(
        f"cannot get {hub_id}: {type(e).__name__}: {e}"
        + (" (HF_HUB_OFFLINE is set: only the local Hub cache is read)" if offline else "")) from None
  return pathlib.Path(folder)


def load_pretrained(source: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
  """``(module, variables)`` from ``hf-hub:ORG/NAME``, a folder in the Hub layout, or a ``.safetensors``."""
  path = download(str(source)) if is_hub_id(source) else pathlib.Path(source)
  if path.is_dir():
    weights = path / WEIGHTS_NAME
    if not weights.is_file():
      raise FileNotFoundError(f"{source}: no {WEIGHTS_NAME} in {path}")
    return read_safetensors(weights)
  return read_safetensors(path)
