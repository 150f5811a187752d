"""Loading user-supplied weight files without running code from them.

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
import zipfile
from typing import Any, Dict, Union

import numpy as np

PathLike = Union[str, os.PathLike]
# Globals pickled by the released official checkpoints beyond PyTorch's weights-only defaults, mapped to the
# inert type they are rebuilt as. A yacs CfgNode is a dict subclass whose instance attributes (immutability
# flags, deprecated/renamed key tables) are restored onto the OrderedDict's ``__dict__``.
OFFICIAL_CHECKPOINT_GLOBALS = {"yacs.config.CfgNode": collections.OrderedDict}


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
    raise ImportError(f"reading {path} needs PyTorch (`pip install torch`), or convert it to .npz "
                      "elsewhere with numpy.savez(path, **state_dict)") from e
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
