"""Loading a fixture (npz + JSON sidecar) and recording comparisons with its stored outputs, relative to tolerance."""

import json
import pathlib
from typing import Any, Callable, Dict, List, Mapping, Optional, Tuple

import numpy as np

from backbones.weights.files import load_npz

# shared/docs/fixtures.md: float32 tensors and losses atol = rtol = 1e-4; boxes 1e-3 px; scores 1e-5.
TENSOR_TOL = (1e-4, 1e-4)
BOX_TOL = (1e-3, 0.0)
SCORE_TOL = (1e-5, 0.0)


def load_fixture(path: Any) -> Tuple[Mapping[str, np.ndarray], Dict[str, Any]]:
  """``(arrays, meta)`` of ``FIXTURE.npz`` and its ``FIXTURE.json`` sidecar; clear errors for bad files.

  A sidecar may name arrays stored in another fixture of the same folder (``"shared_arrays": {"file": NAME.npz,
  "keys": [...]}``, as the derived fixtures of ``tests/fixtures`` do for weights two fixtures share); they are
  read from there.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"fixture not found: {path}")
  sidecar = path.with_suffix(".json")
  if not sidecar.is_file():
    raise FileNotFoundError(f"fixture {path} has no JSON sidecar {sidecar.name} beside it")
  arrays = load_npz(path)
  try:
    meta = json.loads(sidecar.read_text())
  except ValueError as e:
    raise ValueError(f"{sidecar} is not valid JSON: {e}") from None
  if "kind" not in meta:
    raise ValueError(f"{sidecar} has no 'kind' field: not a fixture (see shared/docs/fixtures.md)")
  shared = meta.get("shared_arrays")
  if shared:
    other = path.parent / pathlib.Path(shared["file"]).name
    if not other.is_file():
      raise FileNotFoundError(f"{sidecar}: shared_arrays file {other.name} not found beside it")
    other_arrays = load_npz(other)
    for key in shared["keys"]:
      if key not in other_arrays or key in arrays:
        raise ValueError(f"{sidecar}: shared_arrays key {key!r} is " +
                         ("not in " + other.name if key not in other_arrays else "also stored in " + path.name))
      arrays[key] = other_arrays[key]
  return arrays, meta


class Report:
  """Collects one line per compared output: its worst error as a multiple of the tolerance.

  An element passes when ``|ours - ref| <= atol + rtol * |ref|`` (``numpy.isclose``); the reported ratio is
  ``max |ours - ref| / (atol + rtol * |ref|)``, so ``<= 1`` passes. ``allowed`` elements may exceed it (the
  near ties a fixture counts); the ratio is then that of the worst element outside the ``allowed`` worst.
  """

  def __init__(self, prefix: str = "", echo: Optional[Callable[[str], None]] = print):
    self.prefix = prefix
    self.echo = echo
    self.lines: List[Tuple[str, float, bool, str]] = []

  def _add(self, name: str, ratio: float, ok: bool, detail: str = "") -> bool:
    self.lines.append((self.prefix + name, ratio, ok, detail))
    if self.echo is not None:
      shown = "n/a" if not np.isfinite(ratio) else f"{ratio:.3g}x"
      self.echo(f"{'ok  ' if ok else 'FAIL'} {self.prefix + name}: {shown} of tolerance"
                + (f" ({detail})" if detail else ""))
    return ok

  def tensor(self, name: str, ours: Any, ref: Any, atol: float = TENSOR_TOL[0], rtol: float = TENSOR_TOL[1],
             allowed: int = 0) -> bool:
    """Compares two arrays of the same shape elementwise (float64 arithmetic)."""
    ours, ref = np.asarray(ours, np.float64), np.asarray(ref, np.float64)
    if ours.shape != ref.shape:
      return self._add(name, float("inf"), False, f"shape {ours.shape} vs stored {ref.shape}")
    if ours.size == 0:
      return self._add(name, 0.0, True, "empty")
    ratios = np.abs(ours - ref) / (atol + rtol * np.abs(ref))
    ratios = np.where(np.isnan(ratios), np.inf, ratios).ravel()
    over = int(np.sum(ratios > 1.0))
    if allowed > 0:
      ratios = np.sort(ratios)[:-allowed] if allowed < ratios.size else np.zeros(1)
    worst = float(ratios.max()) if ratios.size else 0.0
    detail = f"{over} elements over tolerance, {allowed} allowed" if over else ""
    return self._add(name, worst, worst <= 1.0, detail)

  def exact(self, name: str, ours: Any, ref: Any, allowed: int = 0) -> bool:
    """Integer / boolean arrays that must be equal (up to ``allowed`` differing elements)."""
    ours, ref = np.asarray(ours), np.asarray(ref)
    if ours.shape != ref.shape:
      return self._add(name, float("inf"), False, f"shape {ours.shape} vs stored {ref.shape}")
    wrong = int(np.sum(ours != ref))
    ok = wrong <= allowed
    return self._add(name, 0.0 if wrong == 0 else (wrong / max(allowed, 1) if allowed else float("inf")), ok,
                     f"{wrong} of {ref.size} differ, {allowed} allowed" if wrong else "")

  def fail(self, name: str, why: str) -> bool:
    """An output that could not be compared: counts as a failure."""
    return self._add(name, float("inf"), False, why)

  @property
  def ok(self) -> bool:
    return all(line[2] for line in self.lines)

  @property
  def worst(self) -> float:
    return max((line[1] for line in self.lines), default=0.0)

  def summary(self) -> str:
    worst = self.worst
    shown = f"{worst:.3g}x" if np.isfinite(worst) else "inf"
    failed = sum(not line[2] for line in self.lines)
    tail = "" if failed == 0 else f", {failed} FAILED"
    return f"parity: {len(self.lines)} outputs compared, worst error {shown} of tolerance{tail}"
