"""The Mask R-CNN (instance segmentation) job: model selection, recipe configs, evaluator pictures with mask
overlays, and the tiny instance job end to end."""

import json
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from PIL import Image
import pytest

from projects.common import config_utils
from projects import registry
from projects.common import sharding
from projects.detection import train
from projects.detection import visualize
from projects.detection.data import make_synthetic_coco
from projects.detection.mask_rcnn import MaskRCNNModel
from projects.detection.retinanet import RetinaNetModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _config_path(name):
  return os.path.join(REPO, "configs", f"{name}.py")


def test_model_name_selects_the_model_and_the_masks():
  assert train.model_spec(ml_collections.ConfigDict({})) == (RetinaNetModel, ("bbox",), False)
  retina = config_utils.load_config(_config_path("retinanet_crossformer_s_coco"))
  assert train.model_spec(retina).model_class is RetinaNetModel and not retina.dataset.with_masks
  spec = train.model_spec(config_utils.load_config(_config_path("tiny_coco_instance")))
  assert spec == (MaskRCNNModel, ("bbox", "segm"), True)
  with pytest.raises(ValueError, match=r"config.model_name 'yolo' is not a detection model"):
    train.model_spec(ml_collections.ConfigDict({"model_name": "yolo"}))
  assert registry.get_model_cls("crossformer_mask_rcnn") is MaskRCNNModel


@pytest.mark.parametrize("variant", ["s", "b"])
def test_mask_rcnn_configs_follow_the_official_recipe(variant):
  config = config_utils.load_config(_config_path(f"mask_rcnn_crossformer_{variant}_coco"))
  assert config.model_name == "crossformer_mask_rcnn" and config.dataset.with_masks
  assert config.dataset.builder == "coco_tree"  # the stock coco/2017 has no masks
  assert config.batch_size == 16 and tuple(config.dataset.image_scale) == (1333, 800)
  assert (config.optimizer, config.optimizer_configs.weight_decay, config.lr_configs.base_learning_rate) == (
      "adamw", 1e-4, 1e-4)
  schedule = config.lr_configs
  assert (schedule.warmup_steps, schedule.warmup_alpha) == (500, 0.001)
  assert tuple(schedule.decay_factors) == pytest.approx((0.1, 0.01))
  assert config.num_training_epochs == 12 and tuple(schedule.decay_epochs) == (8, 11)
  backbone = config.model.backbone
  assert backbone.name == f"crossformer_{variant}"
  assert backbone.drop_path_rate == {"s": 0.2, "b": 0.3}[variant]
  assert tuple(backbone.overrides.group_sizes) == (7, 7, 7, 7)
  assert tuple(backbone.overrides.intervals) == (8, 4, 2, 1)
  model = config.model
  assert (model.neck.out_channels, model.rpn_head.feat_channels, model.bbox_head.fc_out_channels) == (256, 256,
                                                                                                       1024)
  assert (model.mask_head.conv_out_channels, model.mask_head.num_convs) == (256, 4)
  assert (model.train_cfg.rpn_nms_pre, model.train_cfg.rpn_num, model.train_cfg.rcnn_num) == (2000, 256, 512)
  assert (model.test_cfg.rpn_nms_pre, model.test_cfg.max_per_img, model.test_cfg.mask_thr_binary) == (1000, 100,
                                                                                                      0.5)


def test_mask_rcnn_s_parameter_count_is_the_official_one():
  """50,160,762 parameters for Mask R-CNN-CrossFormer-S (official 50.2 M), from shapes only."""
  config = config_utils.load_config(_config_path("mask_rcnn_crossformer_s_coco"))
  model = MaskRCNNModel(config, {"num_classes": 80})
  shapes = jax.eval_shape(lambda: model.flax_model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, jnp.zeros((1, 64, 64, 3)),
      train=False))
  assert sum(x.size for x in jax.tree.leaves(shapes["params"])) == 50_160_762


def test_evaluator_keeps_masks_and_draws_overlays(tmp_path):
  paths = make_synthetic_coco.make_synthetic_coco(str(tmp_path / "tree"), num_train=2, num_val=3, seed=0)
  ids = [image["id"] for image in json.load(open(paths["val2017"]))["images"]]
  meta = {"annotation_file": paths["val2017"], "category_ids": [3, 7, 12]}

  def predict(outputs, batch):  # one detection per image: the first ground-truth box with a full mask
    boxes = batch["label"]["boxes"][:, :1] / jnp.tile(batch["label"]["scale"][:, None, ::-1], 2)
    valid = (batch["label"]["labels"][:, :1] >= 0) & (batch["batch_mask"][:, None] > 0)
    return {"boxes": boxes, "scores": jnp.full(boxes.shape[:2], 0.9), "labels": batch["label"]["labels"][:, :1],
            "valid": valid, "mask_probs": jnp.ones(boxes.shape[:2] + (7, 7))}

  evaluator = train.DetectionEvaluator(meta, predict, output_dir=str(tmp_path / "out"), num_examples=2,
                                       iou_types=("bbox", "segm"))
  host = {"inputs": np.zeros((4, 64, 64, 3), np.float32), "batch_mask": np.array([1, 1, 1, 0], np.float32),
          "label": {"boxes": np.zeros((4, 2, 4), np.float32), "labels": np.full((4, 2), -1, np.int32),
                    "image/id": np.array(ids + [-1], np.int64), "image_size": np.full((4, 2), 48, np.int32),
                    "orig_size": np.full((4, 2), 96, np.int32), "scale": np.full((4, 2), 0.5, np.float32)}}
  host["label"]["boxes"][1, 0] = [8, 10, 30, 40]
  host["label"]["labels"][1, 0] = 1
  evaluator.reset()
  evaluator.update(jax.jit(evaluator.process_fn)({}, sharding.shard_batch(host, sharding.create_mesh())), host)
  results = evaluator.compute()
  assert results["num_masks"] == results["num_detections"] == 1 and 0.0 <= results["mask_AP"] <= 1.0
  segm = json.load(open(tmp_path / "out" / "coco_segm_detections.json"))
  assert segm[0]["segmentation"]["size"] == [96, 96] and segm[0]["image_id"] == ids[1]
  examples = results["examples"]
  assert examples["predictions"]["mask_probs"].shape == (2, 1, 7, 7)
  picture = np.asarray(Image.open(train.write_detection_png(examples, str(tmp_path / "d.png"), ["a", "b", "c"])))
  second = picture[:, 52:]  # the second 48 x 48 example, its detection (label 1) inside x 8..30, y 10..40
  background = visualize.denormalize(examples["inputs"][1], (48, 48))[25, 20].astype(float)
  blended = (1 - visualize.MASK_ALPHA) * background + visualize.MASK_ALPHA * np.asarray(visualize.class_colour(1))
  np.testing.assert_allclose(second[25, 20], blended, atol=1)  # inside the mask: the class colour blended in
  np.testing.assert_array_equal(second[45, 45], visualize.denormalize(examples["inputs"][1], (48, 48))[45, 45])


@pytest.mark.slow
def test_tiny_instance_job_end_to_end(tmp_path):
  """The tiny Mask R-CNN job for a few steps: it trains, evaluates box and mask AP, writes every output.

  One device: on the 4 virtual CPU devices of the tests, XLA's CPU collectives of the Mask R-CNN program have
  hit their 40 s rendezvous timeout on a loaded 2-core machine (the RoI work per device is uneven); the
  multi-device trainer path is covered by the RetinaNet job tests.
  """
  overrides = {"num_training_epochs": 0, "num_training_steps": 4, "log_summary_steps": 2, "log_eval_steps": 0,
               "checkpoint": False, "progress_bar": False, "lr_configs.warmup_steps": 0,
               "dataset.image_scale": (128, 128), "dataset.num_parallel_calls": 1,
               "synthetic_data.num_train": 16, "synthetic_data.num_val": 4,
               "dataset.data_dir": str(tmp_path / "data")}
  config = config_utils.load_config(_config_path("tiny_coco_instance"), overrides)
  workdir = str(tmp_path / "work")
  result = train.run(config, workdir, mesh=sharding.create_mesh(jax.devices()[:1]))
  assert int(jax.device_get(result.state.step)) == 4
  results = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert {"AP", "AP50", "mask_AP", "mask_AP50", "mask_AP75", "num_masks"} <= set(results)
  assert 0.0 <= results["mask_AP"] <= 1.0
  segm = json.load(open(os.path.join(workdir, "coco_segm_detections.json")))
  assert len(segm) == results["num_masks"]
  assert all(isinstance(s["segmentation"]["counts"], str) for s in segm)
  assert json.load(open(os.path.join(workdir, "config.json")))["dataset"]["with_masks"] is True
  assert os.path.getsize(os.path.join(workdir, train.PNG_FILE)) > 0
