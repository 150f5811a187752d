"""Job guards without a job: misspelled overrides, strict JSON, the non-finite check, corrupt checkpoints."""

import json
import os

from absl import flags
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from projects.common import checkpoint as checkpoint_lib
from projects.common import config_utils
from projects.common import guards

CONFIG = '''
import ml_collections
def get_config():
  return ml_collections.ConfigDict(dict(num_training_steps=3, lr_schedule=dict(name="poly", base_lr=1.0,
                                                                               min_lr=0.0)))
'''


def test_misspelled_override_is_one_line_naming_the_nearest_keys(tmp_path, monkeypatch):
  path = tmp_path / "config.py"
  path.write_text(CONFIG)
  config_utils.define_job_flags()
  argv = ["main", f"--config={path}", "--config.lr_schedule.base_lrr=2", f"--workdir={tmp_path}"]
  monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
  flags.FLAGS.unparse_flags()
  try:
    with pytest.raises(flags.IllegalFlagValueError) as error:
      flags.FLAGS(argv)
  finally:
    flags.FLAGS.unparse_flags()
  message = str(error.value)
  assert "\n" not in message
  assert "'lr_schedule.base_lrr'" in message and "did you mean 'lr_schedule.base_lr'" in message
  config = config_utils.load_config(str(path))
  with pytest.raises(ValueError,
                     match=r"unknown config key 'lr_schedul.base_lr' .*; did you mean 'lr_schedule.base_lr'"):
    config_utils.apply_overrides(config, {"lr_schedul.base_lr": 2.0})


def test_results_json_is_strict(tmp_path):
  path = config_utils.write_json(str(tmp_path / "eval_results.json"),
                                 {"mIoU": float("nan"), "aAcc": np.float32(0.5), "AP": float("inf")})
  text = open(path).read()
  assert "NaN" not in text and "Infinity" not in text
  assert json.loads(text) == {"mIoU": None, "aAcc": 0.5, "AP": None}


def test_non_finite_guard_names_the_first_bad_step_and_what_to_try():
  guard = guards.NonFiniteGuard()
  for step, (loss, grad_norm) in enumerate([(1.0, 2.0), (0.9, 3.0)], start=1):
    guard.add(step, {"loss": (jnp.float32(loss), 1.0), "grad_norm": (jnp.float32(grad_norm), 1.0)})
  guard.check()  # finite: nothing raised
  guard.add(3, {"loss": (jnp.float32(0.8), 1.0), "grad_norm": (jnp.float32(np.inf), 1.0)})
  guard.add(4, {"loss": (jnp.float32(np.nan), 1.0), "grad_norm": (jnp.float32(np.nan), 1.0)})
  with pytest.raises(guards.NonFiniteError, match="diverged at step 3: gradient norm = inf") as error:
    guard.check("/w/checkpoints", 2)
  message = str(error.value)
  for advice in ("lr_configs.base_learning_rate", "model.dtype=float32", "grad_clip.clip_value", "step 2"):
    assert advice in message


def test_config_differences_ignore_logging_and_flag_model_changes():
  stored = {"num_training_steps": 4, "log_summary_steps": 1, "model": {"backbone": {"lda_mode": "v1",
                                                                                      "group_sizes": [7, 7]}}}
  new = {"num_training_steps": 8, "log_summary_steps": 50, "model": {"backbone": {"lda_mode": "main",
                                                                                    "group_sizes": [7, 7]}}}
  assert guards.config_differences(stored, new) == {"model.backbone.lda_mode": ("v1", "main"),
                                                    "num_training_steps": (4, 8)}


def test_an_earlier_runs_config_json_resumes_under_todays_dataset_names(tmp_path):
  """Earlier runs stored dataset_name "ade20k" and the real dataset (tfds builder) in dataset.name."""
  os.makedirs(tmp_path / "checkpoints" / "4")
  stored = {"dataset_name": "ade20k", "dataset": {"name": "cityscapes_train_ids", "crop_size": [512, 1024]}}
  (tmp_path / "config.json").write_text(json.dumps(stored))
  today = ml_collections.ConfigDict({"dataset_name": "cityscapes", "dataset": {"crop_size": (512, 1024)}})
  guards.check_resume_config(str(tmp_path), today)  # the same run: resumes
  other = ml_collections.ConfigDict({"dataset_name": "ade20k", "dataset": {"crop_size": (512, 1024)}})
  with pytest.raises(guards.ConfigMismatchError, match=r"dataset_name: 'cityscapes' -> 'ade20k'"):
    guards.check_resume_config(str(tmp_path), other)
  stored["dataset"]["name"] = "pascal_voc"
  (tmp_path / "config.json").write_text(json.dumps(stored))
  with pytest.raises(guards.ConfigMismatchError, match=r"config.json: config.dataset.name='pascal_voc' .* set "
                     "dataset_name to one of"):
    guards.check_resume_config(str(tmp_path), today)


def _corrupt_data_file(step_dir):
  files = [os.path.join(root, f) for root, _, names in os.walk(step_dir) for f in names
           if os.sep + "d" + os.sep in os.path.join(root, f)]
  biggest = max(files, key=os.path.getsize)
  with open(biggest, "rb") as f:
    data = f.read()
  with open(biggest, "wb") as f:
    f.write(data[:len(data) // 2])


def test_corrupt_latest_checkpoint_falls_back_to_the_newest_intact_one(tmp_path, caplog):
  state = {"w": jnp.arange(1000, dtype=jnp.float32), "step": jnp.int32(0)}
  directory = tmp_path / "checkpoints"
  checkpointer = checkpoint_lib.Checkpointer(directory, save_every_steps=1, asynchronous=False)
  for step in (1, 2, 3):
    checkpointer.save(step, {"w": state["w"] * step, "step": jnp.int32(step)})
  checkpointer.close()
  _corrupt_data_file(directory / "3")

  checkpointer = checkpoint_lib.Checkpointer(directory, save_every_steps=1, asynchronous=False)
  restored = checkpointer.restore_or_keep(state)
  assert int(restored["step"]) == 2
  np.testing.assert_array_equal(restored["w"], np.arange(1000) * 2)
  assert any(f"{directory / '3'} is corrupt" in r.getMessage() for r in caplog.records)
  assert sorted(os.listdir(directory)) == ["1", "2", "3.corrupt"]  # kept for inspection, not restored
  assert checkpointer.wants_save(3)  # the run writes step 3 again
  checkpointer.close()

  for step in ("1", "2"):
    _corrupt_data_file(directory / step)
  checkpointer = checkpoint_lib.Checkpointer(directory, save_every_steps=1, asynchronous=False)
  with pytest.raises(checkpoint_lib.CheckpointError, match=f"no intact checkpoint in {directory}"):
    checkpointer.restore_or_keep(state)
  checkpointer.close()


def test_non_finite_parameters_are_refused_before_a_save():
  guards.check_params_finite(5, {"w": jnp.ones(3), "step": jnp.int32(1)})
  with pytest.raises(guards.NonFiniteError, match="diverged at step 5: parameters are NaN"):
    guards.check_params_finite(5, {"w": jnp.array([1.0, jnp.inf]), "b": jnp.zeros(2)})
