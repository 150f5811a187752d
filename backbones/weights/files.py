"""Weight files on disk: the one atomic writer and the readers of external files, none of which runs code.

* ``write_atomic(path, data)``: temp file beside ``path`` + rename, normal permissions; every file this
  project writes (converted weights, model files, configs, predictions) goes through it.
* ``read_official(path)``: an official ``.pth``/``.pt``/``.bin`` or ``.npz`` checkpoint as ``(state_dict, meta)``:
  numpy arrays, the ``state_dict``/``model`` wrapper opened, ``module.`` prefixes removed, the ``sd/`` keys of
  an ``.npz`` (the parity fixtures' layout) preferred; ``meta`` is the mmcv ``meta`` dict (else ``{}``).
* ``load_torch_checkpoint(path)``: ``torch.load(weights_only=True)`` with one explicit addition to PyTorch's
  allow-list: the yacs ``CfgNode`` config that the released official CrossFormer checkpoints pickle beside
  their weights (``utils.save_checkpoint`` of cheerss/CrossFormer saves ``{'model', 'optimizer',
  'lr_scheduler', 'max_accuracy', 'epoch', 'config'}``). The ``CfgNode`` is rebuilt as an inert
  ``collections.OrderedDict`` (its attributes become plain data); no class of the file is imported and there
  is never a fall-back to an unrestricted load.
* ``load_npz(path)``: ``np.load(allow_pickle=False)``, every array read eagerly.

Every error names the file: a missing file says "not found", a file that is not what it claims says so.
"""

import collections
import os
import pathlib
import tempfile
import zipfile
from typing import Any, Dict, Mapping, Tuple, Union

import numpy as np

PathLike = Union[str, os.PathLike]
# Globals pickled by the released official checkpoints beyond PyTorch's weights-only defaults, mapped to the
# inert type they are rebuilt as. A yacs CfgNode is a dict subclass whose instance attributes (immutability
# flags, deprecated/renamed key tables) are restored onto the OrderedDict's ``__dict__``.
OFFICIAL_CHECKPOINT_GLOBALS = {"yacs.config.CfgNode": collections.OrderedDict}
_TMP_SUFFIX = ".tmp"
# Keys under which official checkpoints nest their state_dict: mmcv (``state_dict``), classification (``model``).
STATE_DICT_KEYS = ("state_dict", "model")
# File name endings of official checkpoints (torch pickles and their .npz re-saves), lower case.
OFFICIAL_SUFFIXES = (".pth", ".pt", ".bin", ".npz")
NPZ_STATE_DICT_PREFIX = "sd/"


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


def write_atomic(path: PathLike, data: Union[bytes, str]) -> pathlib.Path:
  """Writes ``data`` (bytes, or text as UTF-8) to ``path`` atomically (temp file beside it + rename) with the
  normal permissions of a new file (``0666 & ~umask``, 0644 usually). A failed write removes its temp file;
  temp files left by a killed earlier write of the same ``path`` are removed first."""
  path = pathlib.Path(path)
  data = data.encode() if isinstance(data, str) else data
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


def _require_file(path: PathLike, what: str) -> pathlib.Path:
  path = pathlib.Path(path)
  if not path.exists():
    raise FileNotFoundError(f"{what} not found: {path}")
  if not path.is_file():
    raise ValueError(f"{path} is not a file (expected a {what})")
  return path


def load_torch_checkpoint(path: PathLike) -> Any:
  """Reads a PyTorch ``.pth``/``.pt`` checkpoint safely (tensors, containers, the official yacs config).

  Raises:
    FileNotFoundError: ``path`` does not exist.
    ImportError: PyTorch is not installed (the message says how to convert the file elsewhere).
    ValueError: the file is not a PyTorch checkpoint, or it pickles objects outside the allow-list (the
      message lists them); such a file is refused, never loaded unrestricted.
  """
  path = _require_file(path, "PyTorch checkpoint")
  try:
    import torch  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    raise ImportError(f"reading {path} needs PyTorch (`pip install torch`, CPU is enough), or convert it to "
                      ".npz elsewhere: numpy.savez(OUT, **{k: v.numpy() for k, v in state_dict.items()})") from e
  allowed = [(cls, name) for name, cls in OFFICIAL_CHECKPOINT_GLOBALS.items()]
  try:
    with torch.serialization.safe_globals(allowed):
      return torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"{path}: refused to load ({_torch_load_problem(path, e)}). Only tensors, plain "
                     "containers and the official checkpoints' yacs config are read from a .pth; re-save "
                     "the state_dict alone (torch.save(model.state_dict(), path)) or as .npz") from None


def _torch_load_problem(path: pathlib.Path, error: Exception) -> str:
  """A one-line reason for a refused ``torch.load``: the disallowed globals when the file can be scanned."""
  try:
    import torch  # pylint: disable=import-outside-toplevel
    found = torch.serialization.get_unsafe_globals_in_checkpoint(str(path))
  except Exception:  # pylint: disable=broad-except  (not a zip checkpoint: report torch's own reason)
    found = None
  unsafe = sorted(set(found or ()) - set(OFFICIAL_CHECKPOINT_GLOBALS))
  if unsafe:
    return "it pickles objects outside the allow-list: " + ", ".join(unsafe[:10])
  first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
  return f"not a readable PyTorch checkpoint: {first_line[:200]}"


def load_npz(path: PathLike) -> Dict[str, np.ndarray]:
  """Reads every array of a numeric ``.npz`` (never unpickling); raises naming ``path`` when it is not one."""
  path = _require_file(path, ".npz file")
  try:
    data = np.load(path, allow_pickle=False)
    if not isinstance(data, np.lib.npyio.NpzFile):
      raise ValueError("it holds a single .npy array, not an archive of named arrays")
    with data:
      return {name: np.asarray(data[name]) for name in data.files}
  except (ValueError, OSError, EOFError, zipfile.BadZipFile, KeyError) as e:
    reason = str(e).splitlines()[0] if str(e) else type(e).__name__
    if "pickle" in reason.lower() or "object arrays" in reason.lower():
      reason = "it holds pickled Python objects, which are never loaded"
    raise ValueError(f"{path} is not a valid .npz of numeric arrays ({reason})") from None


def to_numpy(value: Any) -> np.ndarray:
  """A torch tensor (never importing torch) or array-like as a numpy array."""
  if hasattr(value, "detach"):
    value = value.detach().cpu().numpy()
  return np.asarray(value)


def read_official(path: PathLike) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
  """``(state_dict, meta)`` of an official checkpoint file, nothing in it executed.

  ``.npz``: :func:`load_npz`, only the ``sd/`` keys (prefix removed) when there are any. Anything else: a
  PyTorch checkpoint read by :func:`load_torch_checkpoint`, its state_dict taken from the ``state_dict``
  (mmcv) or ``model`` (classification) key when present; ``meta`` is its mmcv ``meta`` dict or ``{}``.
  ``module.`` prefixes (DataParallel) are removed; values become numpy arrays.

  Raises:
    FileNotFoundError: "official checkpoint not found: PATH".
    ImportError: a ``.pth`` without PyTorch installed (how to convert it elsewhere is said).
    ValueError: naming ``path``: not a checkpoint, refused pickles, or no state_dict mapping inside.
  """
  path = _require_file(path, "official checkpoint")
  if path.suffix == ".npz":
    data = load_npz(path)
    keys = [k for k in data if k.startswith(NPZ_STATE_DICT_PREFIX)] or list(data)
    return _strip_module({k.removeprefix(NPZ_STATE_DICT_PREFIX): data[k] for k in keys}), {}
  checkpoint = load_torch_checkpoint(path)
  if not isinstance(checkpoint, Mapping):
    raise ValueError(f"{path} holds a {type(checkpoint).__name__}, not a checkpoint dict")
  meta = checkpoint.get("meta") if isinstance(checkpoint.get("meta"), Mapping) else {}
  state_dict = checkpoint
  for key in STATE_DICT_KEYS:
    if key in checkpoint:
      state_dict = checkpoint[key]
      if not isinstance(state_dict, Mapping):
        raise ValueError(f"{path}: {key!r} is a {type(state_dict).__name__}, not a mapping of weights")
      break
  return _strip_module({k: to_numpy(v) for k, v in state_dict.items()}), dict(meta)


def _strip_module(state_dict: Mapping[str, Any]) -> Dict[str, Any]:
  return {k.removeprefix("module."): v for k, v in state_dict.items()}
