"""What the predict commands share: encoding outputs with their provenance and the loop over a folder.

* Inputs, names and overwrite refusal follow the one output-safety rule of ``backbones.outputs`` (also used by
  feature extraction): sub-folders are kept in the output tree, names never collide, the output folder is
  never read as input, and another input's or a foreign file is never replaced without ``overwrite``.
* Writes are atomic (temporary file in the same folder + ``os.replace``).
* ``run_over_inputs`` shows a tqdm bar, reports an unreadable or refused file by name and goes on; the
  commands exit with status 1 at the end when anything was skipped.
"""

import io
import json
import pathlib
import sys
import time
from typing import Any, Callable, Dict, Mapping, Sequence

import numpy as np
from PIL import Image, PngImagePlugin
from tqdm import tqdm

from backbones import outputs
from backbones.outputs import SOURCE_KEY


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


def run_over_inputs(input_path: str, output_dir: str, suffixes: Sequence[str],
                    predict_and_write: Callable[[pathlib.Path, pathlib.Path, str], None],
                    overwrite: bool = False, desc: str = "predict") -> Dict[str, Any]:
  """Calls ``predict_and_write(input, output base, source)`` for every input with a progress bar.

  A file that cannot be read (``OSError`` / ``ValueError`` from the callback) or whose outputs belong to
  another input is reported by name and skipped. Returns ``{"done": [...], "skipped": {path: reason},
  "first_image_seconds": ..., "seconds_per_image": ...}`` (the mean over the images after the first, whose
  time includes compilation; NaN for a single image).
  """
  out = pathlib.Path(output_dir)
  inputs, root = outputs.list_inputs(pathlib.Path(input_path), out)
  bases = outputs.output_bases(inputs, root, out, suffixes)
  done, skipped, durations = [], {}, []
  for path in tqdm(inputs, desc=desc, unit="img", disable=len(inputs) < 2, dynamic_ncols=True):
    source = str(path.resolve())
    base = bases[path]
    reason = outputs.refuse_reason([pathlib.Path(str(base) + s) for s in suffixes], source, overwrite)
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
  """The one-line report of a predict command (timings, skipped count) and one stderr line per skipped file;
  a timing that was not measured (one image: no second one to time) is left out rather than shown as nan."""
  timings = []
  if np.isfinite(summary["first_image_seconds"]):
    timings.append(f"first {summary['first_image_seconds']:.2f} s with compilation")
  if np.isfinite(summary["seconds_per_image"]):
    timings.append(f"then {summary['seconds_per_image']:.2f} s/image")
  print(f"{verb} {len(summary['done'])} image(s) into {output_dir}"
        + (f" ({', '.join(timings)})" if timings else "") + f"; skipped {len(summary['skipped'])}")
  for path, reason in summary["skipped"].items():
    print(f"  skipped {path}: {reason}", file=sys.stderr)
