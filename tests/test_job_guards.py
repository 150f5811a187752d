"""The tiny segmentation job through its CLI: divergence stops it, a changed config or a corrupt checkpoint
on resume is handled before anything is lost."""

import json
import os

from absl import flags
import jax
import numpy as np
import pytest

from projects.common import checkpoint as checkpoint_lib
from projects.common import config_utils
from projects.segmentation import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "tiny_ade20k.py")


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
  """The synthetic ADE20K stand-in (24 train / 4 validation images), built once for the module."""
  root = tmp_path_factory.mktemp("ade")
  config = config_utils.load_config(TINY, {"synthetic_data.num_train": 24, "synthetic_data.num_val": 4,
                                           "dataset.data_dir": str(root / "data")})
  train.ensure_synthetic_data(config, str(root))
  return str(root / "data")


def run_cli(data_dir, workdir, *overrides, monkeypatch):
  """``python -m projects.segmentation.main --config configs/tiny_ade20k.py`` in-process, a few steps."""
  from projects.segmentation import main  # defines the flags  # pylint: disable=g-import-not-at-top
  argv = ["main", f"--config={TINY}", f"--workdir={workdir}", "--config.num_training_steps=4",
          "--config.log_summary_steps=1", "--config.log_eval_steps=0", "--config.lr_schedule.warmup_steps=0",
          "--config.checkpoint_steps=2", "--config.max_checkpoints_to_keep=2", "--config.progress_bar=False",
          "--config.steps_per_eval=1", "--config.synthetic_data.num_train=24", "--config.synthetic_data.num_val=4",
          "--config.dataset.eval_buckets=((256, 256),)", f"--config.dataset.data_dir={data_dir}", *overrides]
  monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
  flags.FLAGS.unparse_flags()
  for name in [n for n in flags.FLAGS if n.startswith("config.")]:
    delattr(flags.FLAGS, name)  # config_flags defines one flag per override at each parse
  flags.FLAGS(argv)
  try:
    main.main(["main"])
  finally:
    flags.FLAGS.unparse_flags()


def _snapshot(workdir):
  return {os.path.relpath(os.path.join(root, f), workdir): (os.path.getsize(os.path.join(root, f)),
                                                            os.path.getmtime(os.path.join(root, f)))
          for root, _, files in os.walk(workdir) for f in files}


@pytest.mark.slow
def test_divergence_stops_the_job_before_saving_or_evaluating(data_dir, tmp_path, monkeypatch):
  workdir = str(tmp_path / "nan")
  with pytest.raises(SystemExit) as error:
    run_cli(data_dir, workdir, "--config.lr_schedule.base_lr=1000", "--config.num_training_steps=6",
            monkeypatch=monkeypatch)
  message = str(error.value)
  assert "training diverged at step" in message and "lr_schedule.base_lr" in message, message
  assert "model.dtype=float32" in message and "grad_clip_norm" in message
  assert not os.path.exists(os.path.join(workdir, "eval_results.json"))
  directory = os.path.join(workdir, "checkpoints")
  steps = sorted(int(s) for s in os.listdir(directory) if s.isdigit()) if os.path.isdir(directory) else []
  bad_step = int(message.split("diverged at step ")[1].split(":")[0])
  assert all(s < bad_step for s in steps), (steps, bad_step)
  if steps:  # whatever was saved before the divergence is finite
    checkpointer = checkpoint_lib.Checkpointer(directory, asynchronous=False)
    restored = checkpointer.manager.restore(steps[-1])
    checkpointer.close()
    assert all(np.all(np.isfinite(np.asarray(x))) for x in jax.tree.leaves(restored)
               if np.issubdtype(np.asarray(x).dtype, np.floating))


@pytest.mark.slow
def test_resume_refuses_a_changed_config_and_skips_a_corrupt_checkpoint(data_dir, tmp_path, monkeypatch, caplog):
  workdir = str(tmp_path / "run")
  run_cli(data_dir, workdir, monkeypatch=monkeypatch)
  results = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["2", "4"]
  before = _snapshot(workdir)

  for override, needle in (("--config.model.backbone.lda_mode=main", "model.backbone.lda_mode: 'v1' -> 'main'"),
                           ("--config.model.backbone.overrides.group_sizes=(7, 7, 7, 1)",
                            "model.backbone.overrides.group_sizes"),
                           ("--config.num_training_steps=6", "--allow_config_change")):
    with pytest.raises(SystemExit) as error:
      run_cli(data_dir, workdir, override, monkeypatch=monkeypatch)
    assert needle in str(error.value) and "Nothing was changed" in str(error.value), str(error.value)
    assert _snapshot(workdir) == before, "a refused resume changed the workdir"
  with pytest.raises(SystemExit, match="cannot be resumed"):  # the flag never allows a model change
    run_cli(data_dir, workdir, "--config.model.backbone.lda_mode=main", "--allow_config_change",
            monkeypatch=monkeypatch)

  # A truncated data file in the newest checkpoint: the run resumes from step 2 and names step 4.
  step_dir = os.path.join(workdir, "checkpoints", "4")
  data_files = [os.path.join(root, f) for root, _, files in os.walk(step_dir) for f in files
                if os.sep + "d" + os.sep in os.path.join(root, f)]
  biggest = max(data_files, key=os.path.getsize)
  with open(biggest, "r+b") as f:
    f.truncate(os.path.getsize(biggest) // 2)
  run_cli(data_dir, workdir, "--config.num_training_steps=6", "--allow_config_change", monkeypatch=monkeypatch)
  warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
  assert any(f"{step_dir} is corrupt" in w for w in warnings), warnings
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4.corrupt", "6"] or sorted(
      os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "4.corrupt", "6"]
  assert json.load(open(os.path.join(workdir, "config.json")))["num_training_steps"] == 6
  assert set(json.load(open(os.path.join(workdir, "eval_results.json")))) == set(results)
