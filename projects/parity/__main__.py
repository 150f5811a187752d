"""``python -m projects.parity FIXTURE.npz [...]``: compare our models with mmseg/mmdet fixtures.

Prints one line per output and last ``parity: N outputs compared, worst error Rx of tolerance``; exits 1 when
an output is out of tolerance or cannot be compared, 2 when a file cannot be read.
"""

import argparse
import importlib
import sys
from typing import Optional, Sequence

from projects.parity import RUNNERS, Report, load_fixture


def run_fixture(path: str, report: Report) -> None:
  """Runs the runner of ``path``'s kind, adding its comparisons to ``report``."""
  arrays, meta = load_fixture(path)
  kind = meta["kind"]
  if kind not in RUNNERS:
    report.fail(f"{path}", f"no runner for fixture kind {kind!r} (known: {sorted(RUNNERS)})")
    return
  module_name, function = RUNNERS[kind].split(":")
  try:
    runner = getattr(importlib.import_module(module_name), function)
  except ModuleNotFoundError as e:
    if e.name != module_name:
      raise
    report.fail(f"{path}", f"the runner for kind {kind!r} ({module_name}) is not installed")
    return
  previous = report.prefix
  report.prefix = f"{meta.get('fixture', kind)}:"
  try:
    runner(arrays, meta, report)
  finally:
    report.prefix = previous


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m projects.parity", description=__doc__.split("\n")[0])
  parser.add_argument("fixtures", nargs="+", help="fixture .npz files (each with its .json sidecar)")
  args = parser.parse_args(argv)
  report = Report()
  try:
    for path in args.fixtures:
      run_fixture(path, report)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(report.summary())
  return 0 if report.ok else 1


if __name__ == "__main__":
  sys.exit(main())
