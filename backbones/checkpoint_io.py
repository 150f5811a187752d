"""Converted Flax checkpoints on disk: one msgpack file holding the module description and variables."""

import json
import os
import pathlib
import tempfile
from typing import Any, Dict, Tuple, Union

import flax
import flax.linen as nn
import jax
import numpy as np

from backbones import hub
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone

FORMAT = "crossformer-jax/1"
_MODULES = {"CrossFormerBackbone": CrossFormerBackbone, "CrossFormer": CrossFormer}
# Module fields that describe the architecture (dtype, remat, out_indices are choices of the user).
_RUNTIME_FIELDS = ("dtype", "remat", "out_indices", "parent", "name")
PathLike = Union[str, os.PathLike]
_TMP_SUFFIX = ".tmp"


def architecture_json(module: nn.Module) -> str:
  """The module's architecture arguments as JSON (msgpack cannot hold tuples)."""
  return json.dumps({f: getattr(module, f) for f in module.__dataclass_fields__
                     if f not in _RUNTIME_FIELDS})


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:
    return True
  return True


def _remove_stale_temp_files(path: pathlib.Path) -> None:
  """Deletes temp files of earlier writes of ``path`` whose writer process is gone (failed or killed)."""
  for tmp in path.parent.glob(f".{path.name}.*{_TMP_SUFFIX}"):
    pid = tmp.name[len(path.name) + 2:-len(_TMP_SUFFIX)].split(".", 1)[0]
    if not pid.isdigit() or not _pid_alive(int(pid)):
      tmp.unlink(missing_ok=True)


def write_atomic(path: PathLike, data: bytes) -> pathlib.Path:
  """Writes ``data`` to ``path`` atomically (temp file beside it + rename) with the normal permissions of a
  new file (``0666 & ~umask``, 0644 usually). A failed write removes its temp file; temp files left by a
  killed earlier write of the same ``path`` are removed first."""
  path = pathlib.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  _remove_stale_temp_files(path)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=_TMP_SUFFIX)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(data)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, path)
  except BaseException:
    pathlib.Path(tmp).unlink(missing_ok=True)
    raise
  return path


def save_converted(path: PathLike, module: nn.Module, variables: Dict[str, Any]) -> pathlib.Path:
  """Writes ``module``'s architecture and ``variables`` to ``path`` atomically (``write_atomic``).

  A ``.safetensors`` path gets a safetensors file (``backbones.hub``), any other a msgpack file.
  """
  if pathlib.Path(path).suffix == ".safetensors":
    return hub.write_safetensors(path, module, variables)
  payload = {"format": FORMAT, "module": type(module).__name__, "kwargs": architecture_json(module),
             "variables": jax.tree.map(np.asarray, variables)}
  return write_atomic(path, flax.serialization.msgpack_serialize(payload))


def load_converted(path: PathLike) -> Tuple[nn.Module, Dict[str, Any]]:
  """Reads a file written by :func:`save_converted`, a Hub id ``hf-hub:ORG/NAME`` or a folder in the Hub
  layout (``backbones.hub``): ``(module, variables)``."""
  if hub.is_hub_id(path) or pathlib.Path(path).is_dir() or str(path).endswith(".safetensors"):
    return hub.load_pretrained(path)
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no converted CrossFormer checkpoint at {path}; make one with "
                            "`python -m backbones.convert_checkpoint --input OFFICIAL.pth "
                            f"--variant crossformer_s --output {path}`")
  try:
    payload = flax.serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # pylint: disable=broad-except  (msgpack raises several types on bad bytes)
    raise ValueError(f"{path} is not a readable converted CrossFormer checkpoint (truncated or another "
                     f"format: {type(e).__name__}); convert the official file again") from None
  if not isinstance(payload, dict) or payload.get("format") != FORMAT:
    raise ValueError(f"{path} is not a converted CrossFormer checkpoint (format {FORMAT!r})")
  return module_from_description(payload["module"], payload["kwargs"], path), payload["variables"]


def is_converted(source: Any) -> bool:
  """Whether ``source`` names a converted checkpoint (msgpack, safetensors, Hub id or Hub-layout folder)
  rather than an official state_dict."""
  return (hub.is_hub_id(source) or str(source).endswith((".msgpack", ".safetensors"))
          or pathlib.Path(source).is_dir())


def module_from_description(module_name: str, kwargs_json: str, source: Any) -> nn.Module:
  """The module a converted file describes (class name + architecture JSON); ``source`` names the file."""
  if module_name not in _MODULES:
    raise ValueError(f"{source} holds an unknown module {module_name!r}; known: {sorted(_MODULES)}")
  kwargs = {k: _as_tuples(v) for k, v in json.loads(kwargs_json).items()}
  return _MODULES[module_name](**kwargs)


def _as_tuples(value: Any) -> Any:
  return tuple(_as_tuples(v) for v in value) if isinstance(value, list) else value


def load_backbone_params(path: PathLike) -> Dict[str, Any]:
  """The dense backbone's ``params`` from a converted checkpoint (backbone or classifier)."""
  module, variables = load_converted(path)
  params = variables["params"]
  return params["backbone"] if isinstance(module, CrossFormer) else params
