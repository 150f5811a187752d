"""What the predict commands share: listing inputs, naming outputs, safe writes, the loop over a folder.

* Inputs: one image file, or every image under a folder (recursively, sorted); sub-folders are kept in the
  output tree.
* Names: ``OUT/<stem><suffix>`` for each suffix the task writes. When two inputs would write the same file
  (``photo.jpg`` and ``photo.png``, or ``a.jpg`` and ``a_overlay.jpg`` next to an ``_overlay`` suffix),
  every input involved is named ``<stem>_<extension>`` instead (``photo_jpg.png``, ``photo_png.png``).
* Provenance: every output records the absolute path of its input (PNG text chunk ``source``, JSON key
  ``source``). An existing output is replaced only when it records the same input (a re-run) or with
  ``overwrite``; otherwise that input is skipped with a message naming both.
* Writes are atomic (temporary file in the same folder + ``os.replace``).
* ``run_over_inputs`` shows a tqdm bar, reports an unreadable or refused file by name and goes on; the
  commands exit with status 1 at the end when anything was skipped.
"""

import io
import json
import os
import pathlib
import sys
import time
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm


IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
SOURCE_KEY = "source"


def list_inputs(path: pathlib.Path) -> Tuple[List[pathlib.Path], Optional[pathlib.Path]]:
  """``(image files, root folder or None)`` of an image file or a folder (searched recursively, sorted)."""
  path = pathlib.Path(path)
  if path.is_file():
    return [path], None
  if not path.is_dir():
    raise FileNotFoundError(f"--input {path}: no such image file or folder")
  files = sorted(p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
  if not files:
    raise FileNotFoundError(f"--input {path}: no images ({', '.join(IMAGE_SUFFIXES)}) in this folder")
  return files, path


def output_bases(inputs: Sequence[pathlib.Path], root: Optional[pathlib.Path], output_dir: pathlib.Path,
                 suffixes: Sequence[str]) -> Dict[pathlib.Path, pathlib.Path]:
  """``{input: output base path}`` such that ``base + suffix`` never collides between two inputs."""
  def relative(p: pathlib.Path) -> pathlib.Path:
    return p.relative_to(root) if root is not None else pathlib.Path(p.name)

  bases = {p: output_dir / relative(p).with_suffix("") for p in inputs}
  for _ in range(3):
    owners: Dict[str, List[pathlib.Path]] = {}
    for p, base in bases.items():
      for suffix in suffixes:
        owners.setdefault(os.path.normcase(str(base) + suffix), []).append(p)
    clashing = {p for users in owners.values() if len(set(users)) > 1 for p in users}
    if not clashing:
      return bases
    for p in clashing:
      ext = p.suffix.lstrip(".").lower() or "noext"
      base = output_dir / relative(p).with_suffix("")
      bases[p] = base.with_name(f"{base.name}_{ext}")
  # Still clashing (e.g. names that only differ in case of the extension): number them.
  return {p: base.with_name(f"{base.name}_{i}") for i, (p, base) in enumerate(sorted(bases.items()))}



def png_bytes(array: np.ndarray, source: str) -> bytes:
  """PNG encoding of an (H, W) uint8/uint16 or (H, W, 3) uint8 array with a ``source`` text chunk."""
  array = np.asarray(array)
  image = Image.fromarray(array.astype(np.uint16) if array.dtype == np.uint16 else array.astype(np.uint8))
  info = PngImagePlugin.PngInfo()
  info.add_text(SOURCE_KEY, source)
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", pnginfo=info)
  return buffer.getvalue()


def json_bytes(payload: Mapping[str, Any], source: str) -> bytes:
  """JSON encoding of ``payload`` with its ``source``."""
  return json.dumps({SOURCE_KEY: source, **payload}, indent=1).encode()


def recorded_source(path: pathlib.Path) -> Optional[str]:
  """The input an existing output was written from (None when it records none or cannot be read)."""
  try:
    if path.suffix.lower() == ".json":
      payload = json.loads(path.read_text())
      return payload.get(SOURCE_KEY) if isinstance(payload, dict) else None
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
        return (f"{path} exists and is {owner}; choose another --output_dir or pass --overwrite")
  return None


def run_over_inputs(input_path: str, output_dir: str, suffixes: Sequence[str],
                    predict_and_write: Callable[[pathlib.Path, pathlib.Path, str], None],
                    overwrite: bool = False, desc: str = "predict") -> Dict[str, Any]:
  """Calls ``predict_and_write(input, output base, source)`` for every input with a progress bar.

  A file that cannot be read (``OSError`` / ``ValueError`` from the callback) or whose outputs belong to
  another input is reported by name and skipped. Returns ``{"done": [...], "skipped": {path: reason},
  "first_image_seconds": ..., "seconds_per_image": ...}`` (the mean over the images after the first, whose
  time includes compilation; NaN for a single image).
  """
  inputs, root = list_inputs(pathlib.Path(input_path))
  out = pathlib.Path(output_dir)
  bases = output_bases(inputs, root, out, suffixes)
  done, skipped, durations = [], {}, []
  for path in tqdm(inputs, desc=desc, unit="img", disable=len(inputs) < 2, dynamic_ncols=True):
    source = str(path.resolve())
    base = bases[path]
    reason = refuse_reason([pathlib.Path(str(base) + s) for s in suffixes], source, overwrite)
    if reason is None:
      start = time.perf_counter()
      try:
        predict_and_write(path, base, source)
        durations.append(time.perf_counter() - start)
        done.append(str(path))
        continue
      except (OSError, ValueError) as e:
        reason = str(e) if str(path) in str(e) else f"{path}: {e}"
    skipped[str(path)] = reason
    tqdm.write(f"skipped {path}: {reason}")
  return {"done": done, "skipped": skipped,
          "seconds_per_image": float(np.mean(durations[1:])) if len(durations) > 1 else float("nan"),
          "first_image_seconds": durations[0] if durations else float("nan")}


def print_summary(summary: Mapping[str, Any], verb: str, output_dir: str) -> None:
  """The one-line report of a predict command (timings, skipped count) and one stderr line per skipped file."""
  print(f"{verb} {len(summary['done'])} image(s) into {output_dir} "
        f"(first {summary['first_image_seconds']:.2f} s with compilation, then "
        f"{summary['seconds_per_image']:.2f} s/image); skipped {len(summary['skipped'])}")
  for path, reason in summary["skipped"].items():
    print(f"  skipped {path}: {reason}", file=sys.stderr)
