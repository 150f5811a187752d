"""The COCO detection job: recipe configs, epoch -> step conversion, evaluator pictures, and the tiny job end to
end (through its CLI) and learning."""

import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import detection_base
from projects.common import config_utils
from projects.common import optim
from projects.common import sharding
from projects.detection import train
from projects.detection import visualize
from projects.detection.data import make_synthetic_coco
from projects.detection.retinanet import RetinaNetModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Shared by the two tiny runs so that the second one finds its programs in the compilation cache.
TINY_OVERRIDES = {
    "num_training_epochs": 0, "progress_bar": False, "log_eval_steps": 0, "lr_configs.warmup_steps": 0,
    "dataset.image_scale": (128, 128), "dataset.num_parallel_calls": 1,
}


def _config_path(name):
  return os.path.join(REPO, "configs", f"{name}.py")


@pytest.mark.parametrize("variant", ["s", "b"])
def test_recipe_configs_match_the_official_recipe(variant):
  config = config_utils.load_config(_config_path(f"retinanet_crossformer_{variant}_coco"))
  assert config.batch_size == 16
  assert (config.optimizer, config.optimizer_configs.weight_decay, config.lr_configs.base_learning_rate) == (
      "adamw", 1e-4, 1e-4)
  assert not config.optimizer_configs.grad_clip.clip_value
  assert (config.model_name, config.dataset_name) == ("crossformer_retinanet", "coco")
  schedule = config.lr_configs
  assert (schedule.factors, schedule.warmup_steps, schedule.warmup_alpha) == (
      "constant * piecewise_constant * linear_warmup", 500, 0.001)
  assert config.num_training_epochs == 12 and tuple(schedule.decay_epochs) == (8, 11)
  # Scenic's rule: epochs, not steps. Nominal COCO train2017 values at batch 16: ceil(117266 / 16) = 7330 steps
  # per epoch; Scenic lowers the rate after each decay event, mmcv from the milestone step on.
  assert config.num_training_steps is None
  assert list(schedule.decay_events) == [8 * 7330 - 1, 11 * 7330 - 1]
  assert list(schedule.decay_factors) == pytest.approx([0.1, 0.01])
  backbone = config.model.backbone
  assert backbone.name == f"crossformer_{variant}"
  assert backbone.drop_path_rate == {"s": 0.2, "b": 0.3}[variant]
  assert tuple(backbone.overrides.group_sizes) == (7, 7, 7, 7)
  assert tuple(backbone.overrides.intervals) == (8, 4, 2, 1)
  neck, head = config.model.neck, config.model.bbox_head
  assert (neck.out_channels, neck.start_level, neck.add_extra_convs, neck.num_outs) == (256, 1, "on_input", 5)
  assert (head.feat_channels, head.stacked_convs) == (256, 4)
  assert tuple(config.dataset.image_scale) == (1333, 800)
  assert (config.dataset.flip_prob, config.dataset.size_divisor) == (0.5, 32)
  assert config.synthetic_data is None


def test_retinanet_s_parameter_count_matches_readme():
  """40.8 M for RetinaNet-CrossFormer-S (official README), from shapes only."""
  config = config_utils.load_config(_config_path("retinanet_crossformer_s_coco"))
  model = RetinaNetModel(config, {"num_classes": 80})
  shapes = jax.eval_shape(lambda: model.flax_model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, jnp.zeros((1, 64, 64, 3)),
      train=True))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert round(count / 1e6, 1) == 40.8


def test_epoch_schedule_is_converted_with_the_pipelines_steps_per_epoch():
  config = config_utils.load_config(_config_path("retinanet_crossformer_s_coco"))
  resolved = train.resolve_epoch_schedule(config, steps_per_epoch=7336)
  assert resolved.num_training_steps == 12 * 7336
  assert list(resolved.lr_configs.decay_events) == [8 * 7336 - 1, 11 * 7336 - 1]
  assert resolved.log_eval_steps == resolved.checkpoint_steps == 7336
  assert config.num_training_steps is None  # the input config is not modified
  schedule = optim.create_lr_schedule(resolved.lr_configs, resolved.num_training_steps)
  lr = lambda step: float(schedule(jnp.asarray(step)))
  assert lr(0) == pytest.approx(1e-7)  # warm-up from ratio 0.001
  assert lr(500) == pytest.approx(1e-4)
  # Last step of epoch 8 / first of epoch 9 (1-based), last of epoch 11 / first of epoch 12.
  assert lr(8 * 7336 - 1) == pytest.approx(1e-4) and lr(8 * 7336) == pytest.approx(1e-5)
  assert lr(11 * 7336 - 1) == pytest.approx(1e-5) and lr(11 * 7336) == pytest.approx(1e-6)
  step_based = config_utils.apply_overrides(config, {"num_training_epochs": 0, "num_training_steps": 50})
  assert train.resolve_epoch_schedule(step_based, 7336).num_training_steps == 50
  with pytest.raises(ValueError, match="steps_per_epoch"):
    train.resolve_epoch_schedule(config, 0)


def test_tiny_config_is_tiny_and_synthetic():
  config = config_utils.load_config(_config_path("tiny_coco"))
  assert config.synthetic_data.num_train > config.batch_size
  assert config.model.backbone.overrides.depths == (1, 1, 1, 1)
  assert config.model.neck.out_channels <= 64 and config.model.bbox_head.feat_channels <= 64
  assert max(config.dataset.image_scale) <= 320
  assert detection_base.epochs_to_steps(2, 127, 8) == 32


def test_detection_evaluator_keeps_examples_and_draws_them(tmp_path):
  paths = make_synthetic_coco.make_synthetic_coco(str(tmp_path / "tree"), num_train=2, num_val=3, seed=0)
  val = json.load(open(paths["val2017"]))
  ids = [image["id"] for image in val["images"]]
  meta = {"annotation_file": paths["val2017"], "category_ids": [3, 7, 12]}

  def predict(outputs, batch):  # one box per image: a perfect copy of the first ground-truth box
    boxes = batch["label"]["boxes"][:, :1] / jnp.tile(batch["label"]["scale"][:, None, ::-1], 2)
    return {"boxes": boxes, "scores": jnp.full(boxes.shape[:2], 0.9), "labels": batch["label"]["labels"][:, :1],
            "valid": (batch["label"]["labels"][:, :1] >= 0) & (batch["batch_mask"][:, None] > 0)}

  evaluator = train.DetectionEvaluator(meta, predict, output_dir=str(tmp_path / "out"), num_examples=2)
  mesh = sharding.create_mesh()
  process = jax.jit(evaluator.process_fn)
  host = {"inputs": np.zeros((4, 64, 64, 3), np.float32), "batch_mask": np.array([1, 1, 1, 0], np.float32),
          "label": {"boxes": np.zeros((4, 2, 4), np.float32), "labels": np.full((4, 2), -1, np.int32),
                    "image/id": np.array(ids + [-1], np.int64), "image_size": np.full((4, 2), 48, np.int32),
                    "scale": np.full((4, 2), 0.5, np.float32)}}
  host["label"]["boxes"][1, 0] = host["label"]["boxes"][2, 0] = [8, 10, 30, 40]
  host["label"]["labels"][1, 0] = 1
  host["label"]["labels"][2, 0] = 2
  evaluator.reset()
  evaluator.update(process({}, sharding.shard_batch(host, mesh)), host)
  results = evaluator.compute()
  assert 0.0 <= results["AP"] <= 1.0
  assert results["num_detections"] == 2  # image 0 has no objects, the filler row is dropped
  examples = results["examples"]
  assert examples["inputs"].shape == (2, 64, 64, 3)  # the first two real examples
  np.testing.assert_array_equal(examples["label"]["image/id"], ids[:2])
  assert os.path.isfile(tmp_path / "out" / "coco_bbox_detections.json")
  png = train.write_detection_png(examples, str(tmp_path / "detections.png"), ["a", "b", "c"])
  from PIL import Image  # pylint: disable=g-import-not-at-top
  picture = np.asarray(Image.open(png))
  assert picture.shape == (48, 48 + 4 + 48, 3)  # two 48 x 48 valid regions side by side
  second = picture[:, 52:]
  np.testing.assert_array_equal(second[25, 8], visualize.class_colour(1))  # detection over the GT box
  assert train.write_detection_png(None, str(tmp_path / "none.png")) is None


def _flag(key, value):
  if isinstance(value, tuple):
    value = "(" + ",".join(str(v) for v in value) + ")"
  return f"--config.{key}={value}"


@pytest.mark.slow
def test_tiny_job_end_to_end_through_cli(tmp_path, event_scalars):
  """``python -m projects.detection.main --config configs/tiny_coco.py ...``: a few steps, every output."""
  workdir = str(tmp_path / "work")
  overrides = {**TINY_OVERRIDES, "num_training_steps": 8, "log_summary_steps": 1, "checkpoint_steps": 4,
               "max_checkpoint_keep": 2,
               "synthetic_data.num_train": 24, "synthetic_data.num_val": 4, "dataset.data_dir": tmp_path / "data"}
  command = [sys.executable, "-m", "projects.detection.main", f"--config={_config_path('tiny_coco')}",
             f"--workdir={workdir}"] + [_flag(k, v) for k, v in overrides.items()]
  done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-3000:]
  assert "final COCO box AP" in done.stdout
  config = json.load(open(os.path.join(workdir, "config.json")))
  assert config["num_training_steps"] == 8 and config["dataset"]["data_dir"] == str(tmp_path / "data")
  results = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert set(results) >= {"AP", "AP50", "AP75", "APs", "APm", "APl", "loss_cls", "num_detections"}
  assert 0.0 <= results["AP"] <= 1.0
  detections = json.load(open(os.path.join(workdir, "coco_bbox_detections.json")))
  assert len(detections) == results["num_detections"]
  val_ids = {image["id"] for image in json.load(open(
      tmp_path / "data" / "synthetic_coco" / "annotations" / "instances_val2017.json"))["images"]}
  assert all(d["image_id"] in val_ids and d["category_id"] in (3, 7, 12) for d in detections)
  assert os.path.getsize(os.path.join(workdir, train.PNG_FILE)) > 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4", "8"]
  losses = event_scalars(workdir, "train/loss")
  assert sorted(losses) == list(range(1, 9))
  assert np.mean([losses[7], losses[8]]) < np.mean([losses[1], losses[2]]) - 0.1, losses  # it learns


@pytest.mark.slow
def test_tiny_job_learns_to_detect(tmp_path):
  """A short training of the tiny config reaches a clearly non-zero box AP on the synthetic validation split."""
  overrides = {**TINY_OVERRIDES, "num_training_steps": 60, "log_summary_steps": 20, "checkpoint": False,
               "synthetic_data.num_train": 96, "synthetic_data.num_val": 16, "dataset.data_dir": str(tmp_path / "data")}
  config = config_utils.load_config(_config_path("tiny_coco"), overrides)
  result = train.run(config, str(tmp_path / "work"))
  print("tiny detection after 60 steps:", {k: round(result.eval_summary[k], 4) for k in ("AP", "AP50", "AP75")})
  assert int(jax.device_get(result.state.step)) == 60
  assert result.eval_summary["AP50"] > 0.1, result.eval_summary
  assert result.eval_summary["AP"] > 0.05, result.eval_summary
  assert os.path.getsize(tmp_path / "work" / train.PNG_FILE) > 0
