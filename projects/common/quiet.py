"""Quiet logs: the job's own INFO lines, not the libraries' chatter.

Orbax, TensorFlow Datasets and the other libraries log through the same ``absl`` logger as the jobs (about 120
INFO lines per demo, 68 of them orbax's). ``quiet_third_party()`` keeps every record of this library's packages
and only ERROR and above of the others; ``--verbose`` (a job flag) shows everything. It also asks TensorFlow's
C++ side for errors only (``TF_CPP_MIN_LOG_LEVEL``, unless already set).
"""

import logging
import os
import pathlib

OUR_PACKAGES = ("backbones", "heads", "projects", "configs")
_ROOT = pathlib.Path(__file__).resolve().parents[2]


class ThirdPartyFilter(logging.Filter):
  """Passes records of our packages, and records of ERROR and above from anywhere."""

  def __init__(self, min_level: int = logging.ERROR):
    super().__init__()
    self.min_level = min_level
    self._ours = tuple(str(_ROOT / name) + os.sep for name in OUR_PACKAGES)

  def filter(self, record: logging.LogRecord) -> bool:
    return record.levelno >= self.min_level or str(record.pathname).startswith(self._ours)


def quiet_third_party(verbose: bool = False) -> None:
  """Installs the filter on the absl logger's handlers (idempotent); ``verbose`` removes it."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  logger = absl_logging.get_absl_logger()
  targets = [logger] + list(logger.handlers) + [absl_logging.get_absl_handler()]
  for target in targets:
    for existing in [f for f in target.filters if isinstance(f, ThirdPartyFilter)]:
      target.removeFilter(existing)
    if not verbose:
      target.addFilter(ThirdPartyFilter())
