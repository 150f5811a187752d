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
          "--config.log_summary_steps=1", "--config.log_eval_steps=0", "--config.lr_configs.warmup_steps=0",
          "--config.checkpoint_steps=2", "--config.max_checkpoint_keep=2", "--config.progress_bar=False",
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
    run_cli(data_dir, workdir, "--config.lr_configs.base_learning_rate=1000", "--config.num_training_steps=6",
            monkeypatch=monkeypatch)
  message = str(error.value)
  assert "training diverged at step" in message and "lr_configs.base_learning_rate" in message, message
  assert "model.dtype=float32" in message and "grad_clip.clip_value" in message
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


def _free_port():
  import socket  # pylint: disable=g-import-not-at-top
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _launch(record, workdir, data_dir, *flags_, devices):
  import subprocess  # pylint: disable=g-import-not-at-top
  import sys  # pylint: disable=g-import-not-at-top
  env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
             JAX_PLATFORMS="cpu", TF_CPP_MIN_LOG_LEVEL="2",
             JAX_COMPILATION_CACHE_DIR=os.environ.get("JAX_COMPILATION_CACHE_DIR", ""))
  return subprocess.Popen([sys.executable, os.path.join(REPO, "tests", "mp_seg_worker.py"), str(record),
                           f"--workdir={workdir}", f"--data_dir={data_dir}", *flags_], env=env, cwd=REPO,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _read(path):
  return [json.loads(line) for line in open(path)] if os.path.exists(path) else []


@pytest.mark.slow
def test_two_processes_killed_and_resumed_match_one_process(data_dir, tmp_path):
  """Two JAX processes (2 CPU devices each, gloo collectives over a local coordinator) train, die by SIGKILL
  after the step-2 checkpoint, resume, and match one 4-device process fed the same global batches."""
  workdir, reference_dir = tmp_path / "mp", tmp_path / "ref"

  def run_pair(phase, *extra):
    port = _free_port()
    procs = [_launch(tmp_path / f"{phase}_{i}.jsonl", workdir, data_dir, "--num_processes=2",
                     f"--process_id={i}", f"--port={port}", *extra, devices=2) for i in range(2)]
    return procs

  first = run_pair("first", "--die_at_step=3")
  reference = _launch(tmp_path / "ref.jsonl", reference_dir, data_dir, "--reference", devices=4)
  outputs = [p.communicate(timeout=900)[0] for p in first]
  assert all(p.returncode != 0 for p in first), outputs  # killed mid-run
  assert first[0].returncode == -9, outputs[0][-3000:]
  assert sorted(os.listdir(workdir / "checkpoints")) == ["2"]
  resumed = run_pair("resumed")
  outputs = [p.communicate(timeout=900)[0] for p in resumed]
  ref_output = reference.communicate(timeout=900)[0]
  assert all(p.returncode == 0 for p in resumed), [o[-3000:] for o in outputs]
  assert reference.returncode == 0, ref_output[-3000:]

  ref = _read(tmp_path / "ref.jsonl")
  ref_losses = {e["step"]: e["loss"] for e in ref if "step" in e}
  for i in range(2):
    killed, after = _read(tmp_path / f"first_{i}.jsonl"), _read(tmp_path / f"resumed_{i}.jsonl")
    losses = {e["step"]: e["loss"] for e in killed if "step" in e}
    assert sorted(losses) == [1, 2, 3]
    resumed_losses = {e["step"]: e["loss"] for e in after if "step" in e}
    assert sorted(resumed_losses) == [3, 4]  # restored step 2, re-ran step 3
    losses.update(resumed_losses)
    np.testing.assert_allclose([losses[s] for s in (1, 2, 3, 4)], [ref_losses[s] for s in (1, 2, 3, 4)],
                               rtol=1e-5)
    # This process read its own share of every global batch: the reference's half i, before and after.
    digests = [e["digest"] for e in killed if "batch_step" in e][:3] + [
        e["digest"] for e in after if "batch_step" in e][:2]
    share = [e["digest"] for e in ref if e.get("share") == i]
    assert digests == share[:3] + share[2:4], i
    wrote = {e["wrote"] for e in killed + after if "wrote" in e}
    if i == 0:
      assert {"config.json", "eval_results.json", "predictions.png"} <= wrote, wrote
    else:
      assert not wrote, f"process 1 wrote {wrote}"
  assert {e["digest"] for e in ref if e.get("share") == 0}.isdisjoint(
      {e["digest"] for e in ref if e.get("share") == 1})  # distinct shards
  mp_results = json.load(open(workdir / "eval_results.json"))
  ref_results = json.load(open(reference_dir / "eval_results.json"))
  # The weights agree to ~1e-6 (all-reduce order across processes); a few argmax flips move mIoU slightly.
  assert mp_results["mIoU"] == pytest.approx(ref_results["mIoU"], abs=0.01)
