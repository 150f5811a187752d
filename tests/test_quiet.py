"""Quiet logs: our lines and other libraries' errors pass, the libraries' INFO/WARNING chatter does not."""

import logging
import pathlib

from projects.common import quiet

ROOT = pathlib.Path(quiet.__file__).resolve().parents[2]


def _record(path, level):
  return logging.LogRecord("absl", level, str(path), 1, "message", None, None)


def test_filter_keeps_ours_and_third_party_errors_only():
  keep = quiet.ThirdPartyFilter()
  assert keep.filter(_record(ROOT / "projects" / "common" / "trainer.py", logging.INFO))
  assert keep.filter(_record(ROOT / "backbones" / "registry.py", logging.DEBUG))
  orbax = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpointer.py"
  assert not keep.filter(_record(orbax, logging.INFO))
  assert not keep.filter(_record("/venv/site-packages/tensorflow_datasets/core/file_utils.py", logging.WARNING))
  assert keep.filter(_record(orbax, logging.ERROR))


def test_verbose_removes_the_filter():
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  logger = absl_logging.get_absl_logger()
  quiet.quiet_third_party()
  quiet.quiet_third_party()  # idempotent
  assert sum(isinstance(f, quiet.ThirdPartyFilter) for f in logger.filters) == 1
  quiet.quiet_third_party(verbose=True)
  assert not any(isinstance(f, quiet.ThirdPartyFilter) for f in logger.filters)
