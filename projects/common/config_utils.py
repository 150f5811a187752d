"""Loading ``ml_collections`` job configs: command-line flags and programmatic use.

A job's ``main.py`` calls ``define_job_flags()`` at import time, which defines ``--config`` through
``config_flags.DEFINE_config_file`` (so ``--config configs/x.py --config.a.b=c`` overrides work, and
``--config configs/x.py:arg`` passes ``arg`` to ``get_config``), ``--workdir``, ``--multihost`` and
``--allow_config_change``. A misspelled override is a one-line flags error naming the nearest valid keys;
``save_config`` refuses a workdir whose checkpoints belong to another config; ``write_json`` writes strict
JSON (NaN -> null).
"""

import copy
import difflib
import importlib.util
import json
import math
import os
import pathlib
from typing import Any, Callable, Mapping, Optional, Sequence

from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from backbones.weights import files


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
  _name_unknown_overrides(flags.FLAGS["config"])
  flags.DEFINE_string("workdir", None, "Directory for checkpoints, TensorBoard summaries and outputs.")
  flags.DEFINE_bool("multihost", None, "Call jax.distributed.initialize() (default: read the "
                    "CROSSFORMER_MULTIHOST environment variable).")
  flags.DEFINE_bool("verbose", False, "Show the libraries' log lines too (orbax, tfds, TensorFlow); by default "
                    "only this library's lines and other libraries' errors are shown.")
  flags.DEFINE_bool("allow_config_change", False, "Resume a workdir although the number of steps, the "
                    "learning-rate schedule, gradient clipping or model.dtype differ from its config.json "
                    "(sets config.allow_config_change; model and data changes are always refused).")


def dotted_keys(config: Any, prefix: str = "") -> list:
  """Every key of ``config`` as a dotted path (``"lr_schedule.base_lr"``), parents included."""
  keys = []
  if isinstance(config, (ml_collections.ConfigDict, dict)):
    for name in config.keys():
      path = f"{prefix}{name}"
      keys.append(path)
      keys.extend(dotted_keys(config[name], path + "."))
  return keys


def unknown_key_message(config: Any, dotted: str) -> Optional[str]:
  """``None`` when ``dotted`` names a key of ``config``; else one line naming it and the nearest valid keys."""
  node, parents = config, []
  for name in dotted.split("."):
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or name not in node:
      where = f"config.{'.'.join(parents)}" if parents else "the config"
      nearest = difflib.get_close_matches(dotted, dotted_keys(config), n=3, cutoff=0.6)
      hint = f"; did you mean {', '.join(repr(k) for k in nearest)}?" if nearest else (
          "; no similar key (see the config file)")
      return f"unknown config key {dotted!r} (no key {name!r} in {where}){hint}"
    node = node[name]
    parents.append(name)
  return None


def _name_unknown_overrides(config_flag: flags.Flag) -> None:
  """Makes ``--config.<misspelled key>=v`` a one-line flags error (absl: ``FATAL Flags parsing error``)
  naming the key and the nearest valid ones, instead of a traceback from inside ``config_flags``."""
  parse = config_flag._parse  # pylint: disable=protected-access

  def checked_parse(argument):
    try:
      return parse(argument)
    except (KeyError, AttributeError) as e:
      path, _, arg = str(argument).partition(":")
      try:
        config = load_config(path, arg=arg or None)
      except Exception:  # pylint: disable=broad-except
        raise e from None
      overrides = [a.split("=", 1)[0][len("--config."):] for a in config_flag._GetArgv()  # pylint: disable=protected-access
                   if a.startswith("--config.")]
      for dotted in overrides:
        message = unknown_key_message(config, dotted)
        if message:
          raise flags.IllegalFlagValueError(f"--config.{dotted}: {message}") from None
      raise

  config_flag._parse = checked_parse  # pylint: disable=protected-access


def resolve_config_path(path: Any) -> str:
  """``path`` when it is a file, else the recipe of that name shipped in the ``configs`` package
  (``upernet_crossformer_s_ade20k``, ``configs/tiny_ade20k.py``), so configs work from any directory and from
  an installed wheel; ``ValueError`` naming both places otherwise."""
  path = os.fspath(path)
  if os.path.isfile(path):
    return path
  import configs  # pylint: disable=import-outside-toplevel
  shipped = pathlib.Path(configs.__file__).parent / (pathlib.Path(path).stem + ".py")
  if shipped.is_file():
    return str(shipped)
  raise ValueError(f"config file {path!r} does not exist, and no shipped recipe is named "
                   f"{pathlib.Path(path).stem!r} (see the configs/ folder)")


def load_config(path: str, overrides: Optional[Mapping[str, Any]] = None,
                arg: Optional[str] = None) -> ml_collections.ConfigDict:
  """Imports ``path`` and returns ``get_config()`` (or ``get_config(arg)``) with dotted ``overrides``.

  ``overrides`` maps dotted keys to values, e.g. ``{"optimizer.weight_decay": 0.0}``.
  """
  path = resolve_config_path(path)
  spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, "get_config"):
    raise ValueError(f"config file {path!r} has no get_config()")
  config = module.get_config(arg) if arg is not None else module.get_config()
  return apply_overrides(config, overrides or {})


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    allow_new: Optional[Mapping[str, Any]] = None) -> ml_collections.ConfigDict:
  """Sets dotted keys (``"a.b.c": value``) on an unlocked copy of ``config``; unknown keys raise.

  ``allow_new`` sets top-level keys that may be absent from the config (e.g. ``allow_config_change``). The copy
  is deep: it shares no ``FieldReference`` (placeholders, ``get_ref``) with ``config``, while references inside
  it still follow (e.g. ``lr_configs.decay_steps`` follows ``num_training_steps``).
  """
  config = copy.deepcopy(config)
  with config.unlocked():
    for key, value in (allow_new or {}).items():
      config[key] = value
    for dotted, value in overrides.items():
      message = unknown_key_message(config, dotted)
      if message:
        raise ValueError(message)
      *parents, leaf = dotted.split(".")
      node = config
      for name in parents:
        node = node[name]
      node[leaf] = value
  return config


def save_config(config: ml_collections.ConfigDict, workdir: str) -> str:
  """Writes ``config.json`` (human-readable record of the run) into ``workdir`` atomically; returns its path.

  A workdir that already holds checkpoints of a different config is refused first (nothing is written;
  ``guards.check_resume_config``).
  """
  from projects.common import guards  # pylint: disable=import-outside-toplevel
  guards.check_resume_config(workdir, config)
  path = os.path.join(workdir, "config.json")
  files.write_atomic(path, config.to_json_best_effort(indent=2, sort_keys=True))
  return path


def _json_safe(value: Any) -> Any:
  if isinstance(value, Mapping):
    return {str(k): _json_safe(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_safe(v) for v in value]
  if hasattr(value, "item") and getattr(value, "ndim", None) == 0:
    value = value.item()
  if isinstance(value, float) and not math.isfinite(value):
    return None
  return value


def write_json(path: str, obj: Any) -> str:
  """Writes ``obj`` as strict JSON atomically: NaN/Inf become ``null`` (never a bare ``NaN``); returns ``path``."""
  files.write_atomic(path, json.dumps(_json_safe(obj), indent=2, sort_keys=True, allow_nan=False))
  return path


def job_main(run: Callable[[ml_collections.ConfigDict, str], Any],
             summarize: Callable[[Any], str]) -> Callable[[Sequence[str]], None]:
  """The absl ``main`` of a training job: checks the flags, starts multi-host JAX when asked, calls
  ``run(config, workdir)`` and prints ``summarize(result)`` on process 0."""
  from absl import app  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from backbones import compilation_cache  # pylint: disable=import-outside-toplevel
  from projects.common import guards  # pylint: disable=import-outside-toplevel
  from projects.common import quiet  # pylint: disable=import-outside-toplevel
  from projects.common import sharding  # pylint: disable=import-outside-toplevel
  from projects.common import workdir_lock  # pylint: disable=import-outside-toplevel

  def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
      raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    if flags.FLAGS.config is None or flags.FLAGS.workdir is None:
      raise app.UsageError("--config and --workdir are required")
    quiet.quiet_third_party(flags.FLAGS.verbose)
    compilation_cache.enable()
    sharding.maybe_initialize_distributed(flags.FLAGS.multihost)
    logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(),
                 jax.devices())
    config = flags.FLAGS.config
    if flags.FLAGS.allow_config_change:
      config = apply_overrides(config, {}, allow_new={"allow_config_change": True})
    try:
      with workdir_lock.hold(flags.FLAGS.workdir, take=jax.process_index() == 0):
        result = run(config, flags.FLAGS.workdir)
    except guards.JobError as e:  # a message for the user, not a traceback
      logging.error("%s", e)
      raise SystemExit(f"error: {e}") from None
    if jax.process_index() == 0 and result.eval_summary:
      print(f"{summarize(result)}  (step {int(jax.device_get(result.state.step))}, results in "
            f"{flags.FLAGS.workdir})")

  return main
