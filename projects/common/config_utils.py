"""Loading ``ml_collections`` job configs: command-line flags and programmatic use.

A job's ``main.py`` calls ``define_job_flags()`` at import time, which defines ``--config`` through
``config_flags.DEFINE_config_file`` (so ``--config configs/x.py --config.a.b=c`` overrides work, and
``--config configs/x.py:arg`` passes ``arg`` to ``get_config``), ``--workdir`` and ``--multihost``.
"""

import copy
import importlib.util
import json
import os
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags


def define_job_flags() -> None:
  """Defines ``--config``, ``--workdir`` and ``--multihost`` at import time of a job's ``main``.

  Idempotent: when another job's ``main`` already defined them in this process (tests importing several
  jobs), the existing flags are kept.
  """
  if "config" in flags.FLAGS:
    return
  config_flags.DEFINE_config_file(
      "config", None, "Path to a config file with get_config(); override keys with --config.a.b=value.",
      lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard summaries and outputs.")
  flags.DEFINE_bool("multihost", None, "Call jax.distributed.initialize() (default: read the "
                    "CROSSFORMER_MULTIHOST environment variable).")


def load_config(path: str, overrides: Optional[Mapping[str, Any]] = None,
                arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Imports ``path`` and returns ``get_config()`` (or ``get_config(arg)``) with dotted ``overrides``.

  ``overrides`` maps dotted keys to values, e.g. ``{"optimizer.weight_decay": 0.0}``.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise ValueError(f"config file {path!r} does not exist")
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} has no get_config()")
  config = module.get_config(arg) if arg is not None else module.get_config()
  return apply_overrides(config, overrides or {})


def apply_overrides(config: ml_collections.ConfigDict,
                    overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
  """Sets dotted keys (``"a.b.c": value``) on an unlocked copy of ``config``; unknown keys raise.

  The copy is deep: it shares no ``FieldReference`` (placeholders, ``get_ref``) with ``config``, while
  references inside it still follow (e.g. ``lr_configs.decay_steps`` follows ``num_training_steps``).
  """
  config = copy.deepcopy(config)
  with config.unlocked():
    for dotted, value in overrides.items():
      node = config
      *parents, leaf = dotted.split(".")
      for name in parents:
        if name not in node:
          raise ValueError(f"config override {dotted!r}: no key {name!r}")
        node = node[name]
      if leaf not in node:
        raise ValueError(f"config override {dotted!r}: no key {leaf!r} (known: {sorted(node.keys())})")
      node[leaf] = value
  return config


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``config.json`` (human-readable record of the run) into ``workdir``; returns its path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "config.json")
  with open(path, "w") as f:
    f.write(config.to_json_best_effort(indent=2, sort_keys=True))
  return path


def config_to_dict(config: ml_collections.ConfigDict) -> dict:
  """A JSON round-trip of ``config`` into plain Python containers."""
  return json.loads(config.to_json_best_effort())


def job_main(run: Callable[[ml_collections.ConfigDict, str], Any],
             summarize: Callable[[Any], str]) -> Callable[[Sequence[str]], None]:
  """The absl ``main`` of a training job: checks the flags, starts multi-host JAX when asked, calls
  ``run(config, workdir)`` and prints ``summarize(result)`` on process 0."""
  from absl import app  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from projects.common import sharding  # pylint: disable=import-outside-toplevel

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.config is None or flags.FLAGS.workdir is None:
      raise app.UsageError("--config and --workdir are required")
    sharding.maybe_initialize_distributed(flags.FLAGS.multihost)
    logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    result = run(flags.FLAGS.config, flags.FLAGS.workdir)
    if jax.process_index() == 0 and result.eval_summary:
      print(f"{summarize(result)}  (step {int(jax.device_get(result.state.step))}, results in "
            f"{flags.FLAGS.workdir})")

  return main
