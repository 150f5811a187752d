"""Test-session set-up: four virtual CPU devices, a persistent compilation cache, shared fixtures."""

import glob
import os
import pathlib

# Must happen before JAX is imported anywhere: multi-device tests shard over 4 virtual CPU devices.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", str(REPO_ROOT / ".cache" / "jax"))

import jax  # noqa: E402
import pytest  # noqa: E402

jax.config.update("jax_compilation_cache_dir", os.environ["JAX_COMPILATION_CACHE_DIR"])
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)

# CROSSFORMER_SHARED: the shared/ folder when it is not beside the checkout (e.g. a git worktree).
SHARED = pathlib.Path(os.environ.get("CROSSFORMER_SHARED", REPO_ROOT.parent / "shared"))
SHARED_FIXTURES = SHARED / "fixtures" / "crossformer"


@pytest.fixture(scope="session")
def official_fixtures_dir() -> pathlib.Path:
  """The official-output fixtures in ``../shared``; skips the test when that folder is absent."""
  if not SHARED_FIXTURES.is_dir():
    pytest.skip(f"official parity fixtures not found at {SHARED_FIXTURES} "
                "(they live in the shared/ folder beside the checkout)")
  return SHARED_FIXTURES


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
