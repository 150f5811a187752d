"""The console scripts: one command per job, whatever the task of the model.

    crossformer-train --config upernet_crossformer_s_ade20k --workdir runs/upernet   # a shipped recipe by name
    crossformer-predict --checkpoint runs/upernet --input photos/ --output_dir out/
    crossformer-evaluate --checkpoint runs/upernet
    crossformer-extract / crossformer-convert / crossformer-export                       # backbones, weights

``train``, ``predict`` and ``evaluate`` find the model of the config or checkpoint (``config.model_name`` in the
registry), and hand the same arguments to its task's command (``projects/<task>/{main,predict,evaluate}.py``):
the task is the model's declared ``task``. ``--config`` takes a path or the name of a shipped recipe, so the
commands work from any directory and from an installed wheel.
"""

import importlib
import sys
from typing import List, Optional, Sequence

from projects.common import config_utils


def _option(argv: Sequence[str], name: str) -> Optional[str]:
  """The value of ``--name VALUE`` / ``--name=VALUE`` in ``argv`` (the last one), or None."""
  value = None
  for i, arg in enumerate(argv):
    if arg == f"--{name}" and i + 1 < len(argv):
      value = argv[i + 1]
    elif arg.startswith(f"--{name}="):
      value = arg.split("=", 1)[1]
  return value


def _with_resolved_config(argv: Sequence[str]) -> List[str]:
  """``argv`` with its ``--config`` turned into a path (a shipped recipe's name is resolved)."""
  out = []
  for i, arg in enumerate(argv):
    if arg.startswith("--config="):
      arg = "--config=" + config_utils.resolve_config_path(arg.split("=", 1)[1])
    elif i > 0 and argv[i - 1] == "--config":
      arg = config_utils.resolve_config_path(arg)
    out.append(arg)
  return out


def task_of(argv: Sequence[str]) -> str:
  """The task of the model that ``--config`` or ``--checkpoint`` in ``argv`` describes."""
  from projects.common import model_io, restore  # pylint: disable=import-outside-toplevel
  config, checkpoint = _option(argv, "config"), _option(argv, "checkpoint")
  if config is None and checkpoint is not None:
    found = restore.workdir_checkpoint(checkpoint)
    if found is not None:
      config = found[1]
    elif restore.is_task_checkpoint(checkpoint):
      return model_io.model_class(model_io.load_model_file(checkpoint)[0]).task
  if config is None:
    raise SystemExit("error: give --config (a path or a shipped recipe's name), or a --checkpoint that carries its "
                     "config (a training workdir or a converted model file)")
  return model_io.model_class(restore.load_job_config(config)).task


def _run(command: str, argv: Optional[Sequence[str]] = None) -> None:
  argv = _with_resolved_config(list(sys.argv[1:] if argv is None else argv))
  try:
    task = task_of(argv)
  except (FileNotFoundError, ValueError) as e:
    raise SystemExit(f"error: {e}") from None
  module = importlib.import_module(f"projects.{task}.{command}")
  if command == "main":  # an absl job: its flags are parsed from sys.argv
    from absl import app  # pylint: disable=import-outside-toplevel
    sys.argv = [sys.argv[0]] + argv
    app.run(module.main)
  else:
    result = module.main(argv)
    if isinstance(result, dict) and result.get("skipped"):
      sys.exit(1)


def train(argv: Optional[Sequence[str]] = None) -> None:
  """``crossformer-train``: the training job of the config's model."""
  _run("main", argv)


def predict(argv: Optional[Sequence[str]] = None) -> None:
  """``crossformer-predict``: the predict command of the checkpoint's model."""
  _run("predict", argv)


def evaluate(argv: Optional[Sequence[str]] = None) -> None:
  """``crossformer-evaluate``: the evaluate command of the checkpoint's model."""
  _run("evaluate", argv)
