"""Test-session set-up: four virtual CPU devices, a persistent compilation cache, the parity fixtures
(bundled in ``tests/fixtures``, the rest from the shared folder)."""

import glob
import os
import pathlib
from typing import Dict, List, Optional

# Must happen before JAX is imported anywhere: multi-device tests shard over 4 virtual CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".cache" / "jax"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

BUNDLED_FIXTURES = REPO_ROOT / "tests" / "fixtures"
SHARED_ENV = "CROSSFORMER_SHARED"


def shared_fixtures() -> Optional[pathlib.Path]:
  """``fixtures/`` of the shared folder (``$CROSSFORMER_SHARED``, else ``shared/`` beside the checkout), if any."""
  root = pathlib.Path(os.environ[SHARED_ENV]) if os.environ.get(SHARED_ENV) else REPO_ROOT.parent / "shared"
  return root / "fixtures" if (root / "fixtures").is_dir() else None


class FixtureDir:
  """One fixture folder (``crossformer`` or ``heads``) looked up file by file: the copy bundled in
  ``tests/fixtures/<sub>`` first, then the shared folder's; ``folder / name`` skips the test when neither has it."""

  def __init__(self, sub: str):
    self.sub = sub

  def roots(self) -> List[pathlib.Path]:
    shared = shared_fixtures()
    return [BUNDLED_FIXTURES / self.sub] + ([shared / self.sub] if shared else [])

  def all(self, name: str) -> List[pathlib.Path]:
    """Every copy of ``name``: the bundled one first."""
    return [root / name for root in self.roots() if (root / name).is_file()]

  def find(self, name: str) -> Optional[pathlib.Path]:
    return next(iter(self.all(name)), None)

  def __truediv__(self, name: str) -> pathlib.Path:
    path = self.find(name)
    if path is None:
      shared = shared_fixtures()
      where = (f"{shared / self.sub}" if shared else
               f"${SHARED_ENV}={os.environ[SHARED_ENV]} has no fixtures/" if os.environ.get(SHARED_ENV) else
               f"${SHARED_ENV} unset and no {REPO_ROOT.parent / 'shared'}")
      pytest.skip(f"fixture {self.sub}/{name} is neither bundled in tests/fixtures/{self.sub} nor in the shared "
                  f"folder ({where}); point {SHARED_ENV} at the shared/ folder to run it")
    return path

  def files(self, pattern: str) -> List[pathlib.Path]:
    """Every fixture file matching ``pattern`` in either place, one per name (the bundled one first)."""
    found: Dict[str, pathlib.Path] = {}
    for root in self.roots():
      for path in sorted(root.glob(pattern)):
        found.setdefault(path.name, path)
    return [found[name] for name in sorted(found)]


@pytest.fixture(scope="session")
def official_fixtures_dir() -> FixtureDir:
  """The backbone fixtures (``crossformer/``): bundled ones, then the shared folder's; a missing file skips."""
  return FixtureDir("crossformer")


@pytest.fixture(scope="session")
def head_fixtures_dir() -> FixtureDir:
  """The head and detector fixtures (``heads/``): bundled ones, then the shared folder's; a missing file skips."""
  return FixtureDir("heads")


@pytest.fixture(autouse=True)
def _forget_config_override_flags():
  """``config_flags`` defines the ``--config.a.b`` override flags of the config it parses; an in-process CLI
  test that parses another config would then redefine them (``DuplicateFlagError``). Forget them after every
  test."""
  yield
  from absl import flags  # pylint: disable=import-outside-toplevel
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)


@pytest.fixture
def event_scalars():
  """``read(workdir, tag) -> {step: value}`` from the TensorBoard event files a job wrote."""
  def read(workdir, tag):
    import tensorflow as tf  # pylint: disable=import-outside-toplevel
    values = {}
    for path in glob.glob(os.path.join(workdir, "events.out.tfevents*")):
      for event in tf.compat.v1.train.summary_iterator(path):
        for value in event.summary.value:
          if value.tag == tag:
            values[event.step] = float(tf.make_ndarray(value.tensor))
    return values
  return read
