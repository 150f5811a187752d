"""The one output-safety rule of every command that maps input images to output files (extract, predict).

* Inputs: one image file, or every image under a folder (recursively, sorted), never the files inside the
  command's own output folder when that lies in the input folder (a second run must not process its outputs).
* Names: ``OUT/<relative stem><suffix>`` for each suffix the command writes. When two inputs would write the
  same file (``photo.jpg`` and ``photo.png``, or ``a.jpg`` and ``a.jpg.png``), the inputs involved are named
  by their whole relative name (``photo_jpg``, ``photo_png``); the mapping is checked to be injective, with the
  full relative name (always distinct) as the last resort.
* Provenance: every output records the absolute path of its input (PNG text chunk, JSON key or ``.npz`` array
  ``source``). An existing output is replaced only when it records the same input (a re-run) or with
  ``overwrite``; otherwise that input is skipped with a message naming both.
"""

import json
import os
import pathlib
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
SOURCE_KEY = "source"


def list_inputs(path: pathlib.Path, output_dir: Optional[pathlib.Path] = None
                ) -> Tuple[List[pathlib.Path], Optional[pathlib.Path]]:
  """``(image files, root folder or None)`` of an image file or a folder (searched recursively, sorted),
  leaving out everything under ``output_dir``."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path], None
  if not path.is_dir():
    raise FileNotFoundError(f"--input {path}: no such image file or folder")
  skip = pathlib.Path(output_dir).resolve() if output_dir is not None else None
  files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
                 and not (skip is not None and p.resolve().is_relative_to(skip)))
  if not files:
    raise FileNotFoundError(f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
  return files, path


def _collisions(bases: Dict[pathlib.Path, pathlib.Path], suffixes: Sequence[str]) -> set:
  owners: Dict[str, List[pathlib.Path]] = {}
  for p, base in bases.items():
    for suffix in suffixes:
      owners.setdefault(os.path.normcase(str(base) + suffix), []).append(p)
  return {p for users in owners.values() if len(set(users)) > 1 for p in users}


def output_bases(inputs: Sequence[pathlib.Path], root: Optional[pathlib.Path], output_dir: pathlib.Path,
                 suffixes: Sequence[str]) -> Dict[pathlib.Path, pathlib.Path]:
  """``{input: output base path}`` such that no two inputs write the same ``base + suffix``."""
  def relative(p: pathlib.Path) -> pathlib.Path:
    return p.relative_to(root) if root is not None else pathlib.Path(p.name)

  def full(p: pathlib.Path) -> pathlib.Path:  # the extension kept: a.jpg -> a_jpg
    base = output_dir / relative(p).with_suffix("")
    return base.with_name(f"{base.name}_{p.suffix.lstrip('.').lower() or 'noext'}")

  bases = {p: output_dir / relative(p).with_suffix("") for p in inputs}
  for _ in range(3):
    clashing = _collisions(bases, suffixes)
    if not clashing:
      return bases
    bases.update({p: full(p) for p in clashing})
  # Adversarial names (a.jpg, a_jpg.jpg, ...): every input by its whole relative name, distinct by construction
  # for a fixed suffix set on a case-sensitive file system.
  bases = {p: output_dir / f"{relative(p)}" for p in inputs}
  if _collisions(bases, suffixes):
    raise ValueError(f"the inputs under {root} have names that differ only in letter case; rename them")
  return bases


def recorded_source(path: pathlib.Path) -> Optional[str]:
  """The input an existing output was written from (None when it records none or cannot be read)."""
  try:
    if path.suffix.lower() == ".json":
      payload = json.loads(path.read_text())
      return payload.get(SOURCE_KEY) if isinstance(payload, dict) else None
    if path.suffix.lower() == ".npz":
      with np.load(path, allow_pickle=False) as data:
        return str(data[SOURCE_KEY]) if SOURCE_KEY in data.files else None
    from PIL import Image  # pylint: disable=import-outside-toplevel
    with Image.open(path) as image:
      return getattr(image, "text", {}).get(SOURCE_KEY)
  except Exception:  # pylint: disable=broad-except  (any unreadable file is "not ours")
    return None


def refuse_reason(paths: Sequence[pathlib.Path], source: str, overwrite: bool) -> Optional[str]:
  """Why writing ``paths`` for input ``source`` would overwrite another input's output (None if it would not)."""
  if overwrite:
    return None
  for path in paths:
    if path.exists():
      previous = recorded_source(path)
      if previous != source:
        owner = f"the output of {previous}" if previous else "a file not written by this command"
        return f"{path} exists and is {owner}; choose another --output_dir or pass --overwrite"
  return None


def refuse_existing(path: pathlib.Path, flag: str = "--output") -> None:
  """The rule for a command's single output file or folder: an existing one is replaced only with
  ``--overwrite`` (``ValueError`` naming it otherwise)."""
  if pathlib.Path(path).exists():
    raise ValueError(f"{flag} {path} already exists; choose another path or pass --overwrite to replace it")
