"""The ADE20K segmentation job: evaluator, pictures, configs, and the tiny job end to end through its CLI."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from projects.common import config_utils
from projects.common import sharding
from projects.segmentation.models import encoder_decoder as seg_model
from projects.segmentation import train
from projects.segmentation import visualize

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = ["fpn_crossformer_t_ade20k", "fpn_crossformer_s_ade20k", "fpn_crossformer_b_ade20k",
           "fpn_crossformer_l_ade20k", "upernet_crossformer_t_ade20k", "upernet_crossformer_s_ade20k",
           "upernet_crossformer_b_ade20k", "upernet_crossformer_l_ade20k"]


def _config_path(name):
  return os.path.join(REPO, "configs", f"{name}.py")


@pytest.mark.parametrize("name", RECIPES)
def test_recipe_configs_match_the_official_recipes(name):
  config = config_utils.load_config(_config_path(name))
  variant = name.split("_")[2]
  assert config.batch_size == 16
  assert config.optimizer == "adamw"  # Scenic's layout: a name + optimizer_configs
  assert (config.model_name, config.dataset_name, config.trainer_name) == (
      "crossformer_segmentation", "ade20k", "crossformer_trainer")
  lr = config.lr_configs
  assert lr.decay_steps == config.num_training_steps and lr.end_factor == 0.0
  assert config.model.backbone.name == f"crossformer_{variant}"
  assert config.model.backbone.drop_path_rate == {"t": 0.1, "s": 0.2, "b": 0.3, "l": 0.5}[variant]
  overrides = config.model.backbone.overrides
  if name.startswith("fpn"):
    assert config.num_training_steps == 80_000
    assert (config.optimizer_configs.weight_decay, lr.base_learning_rate) == (1e-4, 1e-4)
    assert (lr.factors, lr.power, lr.warmup_steps) == ("constant * polynomial * linear_warmup", 0.9, 0)
    assert config.model.decode_head.type == "semantic_fpn" and config.model.decode_head.channels == 128
    assert config.model.neck.out_channels == 256 and config.model.auxiliary_head is None
    v1_groups = variant in ("s", "l")
    assert tuple(overrides.group_sizes) == ((14, 14, 7, 7) if v1_groups else (7, 7, 7, 7))
    assert tuple(overrides.intervals) == ((16, 8, 2, 1) if v1_groups else (8, 4, 2, 1))
  else:
    assert config.num_training_steps == 160_000
    assert (config.optimizer_configs.weight_decay, lr.base_learning_rate) == (0.01, 6e-5)
    assert (config.optimizer_configs.b1, config.optimizer_configs.b2) == (0.9, 0.999)
    assert (lr.power, lr.warmup_steps, lr.warmup_alpha) == (1.0, 1500, 1e-6)
    assert config.model.decode_head.type == "upernet" and config.model.decode_head.channels == 512
    assert config.model.auxiliary_head.loss_weight == 0.4 and config.model.auxiliary_head.in_index == 2
    assert tuple(overrides.group_sizes) == (7, 7, 7, 7) and tuple(overrides.intervals) == (8, 4, 2, 1)
  assert tuple(config.dataset.crop_size) == (512, 512)


def test_upernet_s_parameter_count_matches_readme():
  """62.3 M for UPerNet-CrossFormer-S (official README), from shapes only."""
  config = config_utils.load_config(_config_path("upernet_crossformer_s_ade20k"))
  model = seg_model.SegmentationModel(config, {"num_classes": 150})
  shapes = jax.eval_shape(lambda: model.flax_model.init(
      {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}, jnp.zeros((1, 64, 64, 3)),
      train=True))
  count = sum(x.size for x in jax.tree.leaves(shapes["params"]))
  assert round(count / 1e6, 1) == 62.3


def test_segmentation_evaluator_accumulates_confusion_and_keeps_examples():
  class _Model:  # the two SegmentationModel methods the evaluator uses
    num_classes = 3

    def confusion_matrix(self, outputs, batch):
      return seg_model.confusion_matrix(outputs["logits"], batch["label"], 3, batch["batch_mask"])

    def global_metrics(self, confusion):
      return seg_model.segmentation_metrics_from_confusion(confusion, ("a", "b", "c"))

  evaluator = train.SegmentationEvaluator(_Model(), num_examples=1)
  mesh = sharding.create_mesh()
  process = jax.jit(evaluator.process_fn)
  evaluator.reset()
  labels = np.array([[[0, 1], [2, -1]]] * 4, np.int32)
  logits = np.zeros((4, 2, 2, 3), np.float32)
  logits[..., 0] = 1.0  # always predicts class 0
  for _ in range(2):
    host_batch = {"inputs": np.zeros((4, 2, 2, 3), np.float32), "label": labels,
                  "batch_mask": np.array([1, 1, 1, 0], np.float32)}
    batch = sharding.shard_batch(host_batch, mesh)
    evaluator.update(process({"logits": sharding.shard_batch(logits, mesh)}, batch), host_batch)
  results = evaluator.compute()
  # 2 passes x 3 real examples: class 0 -> 6 correct; classes 1 and 2 (6 each) predicted as 0.
  np.testing.assert_array_equal(results["confusion_matrix"], [[6, 0, 0], [6, 0, 0], [6, 0, 0]])
  assert results["mIoU"] == pytest.approx((6 / 18 + 0 + 0) / 3)
  assert results["per_class"]["a"]["IoU"] == pytest.approx(1 / 3)
  assert results["examples"]["prediction"].shape == (1, 2, 2)


def test_comparison_panel_layout(tmp_path):
  images = np.zeros((2, 6, 8, 3), np.float32)
  labels = np.full((2, 6, 8), -1, np.int32)
  labels[:, :3] = 2
  predictions = np.full((2, 6, 8), 2, np.int32)
  panel = visualize.comparison_panel(images, labels, predictions, image_sizes=np.array([[6, 8], [4, 5]]))
  assert panel.dtype == np.uint8 and panel.shape == (6 + 4 + 4 + 4, 3 * 8 + 2 * 4, 3)
  colors = visualize.palette()
  np.testing.assert_array_equal(panel[0, 8 + 4], colors[2])  # ground truth, labelled row
  np.testing.assert_array_equal(panel[5, 8 + 4], (0, 0, 0))  # ignored pixels are black
  np.testing.assert_array_equal(panel[5, 2 * (8 + 4)], colors[2])  # prediction
  path = visualize.save_png(str(tmp_path / "p.png"), panel)
  assert os.path.getsize(path) > 0


@pytest.mark.slow
def test_tiny_job_end_to_end_through_cli(tmp_path, monkeypatch, event_scalars):
  """``python -m projects.segmentation.main --config configs/tiny_ade20k.py ...`` in-process, a few steps."""
  from absl import flags  # pylint: disable=g-import-not-at-top
  from projects.segmentation import main  # defines the flags  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "work")
  argv = ["main", f"--config={_config_path('tiny_ade20k')}", f"--workdir={workdir}",
          "--config.num_training_steps=8", "--config.log_summary_steps=1", "--config.log_eval_steps=0",
          "--config.lr_configs.warmup_steps=0", "--config.checkpoint_steps=4", "--config.progress_bar=False",
          "--config.synthetic_data.num_train=24", "--config.synthetic_data.num_val=4",
          "--config.dataset.eval_buckets=((256, 256),)",  # one eval program to compile
          f"--config.dataset.data_dir={tmp_path / 'data'}"]
  monkeypatch.setattr("sys.argv", argv)  # config_flags reads the overrides from sys.argv
  flags.FLAGS.unparse_flags()
  flags.FLAGS(argv)
  try:
    main.main(["main"])
  finally:
    flags.FLAGS.unparse_flags()
  assert json.load(open(os.path.join(workdir, "config.json")))["num_training_steps"] == 8
  results = json.load(open(os.path.join(workdir, "eval_results.json")))
  assert 0.0 <= results["mIoU"] <= 1.0 and results["num_batches"] >= 1
  with open(os.path.join(workdir, "per_class_iou.tsv")) as f:
    lines = f.read().splitlines()
  assert lines[0] == "class\tIoU\tAcc" and len(lines) == 1 + 150 and lines[1].startswith("wall\t")
  assert os.path.getsize(os.path.join(workdir, "predictions.png")) > 0
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["8"]  # keeps 1
  losses = event_scalars(workdir, "train/loss")
  assert sorted(losses) == list(range(1, 9))
  assert np.mean([losses[7], losses[8]]) < np.mean([losses[1], losses[2]]) - 0.3, losses  # it learns


def test_converted_backbone_checkpoint_loads_into_segmentation_params(tmp_path):
  """A converted checkpoint (lead's format) fits ``params["backbone"]`` of the segmentation network."""
  import backbones  # pylint: disable=g-import-not-at-top
  from backbones.weights import converted as checkpoint_io  # pylint: disable=g-import-not-at-top
  from projects.common import pretrained  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(_config_path("tiny_ade20k"))
  model = seg_model.SegmentationModel(config, {"num_classes": 150})
  rngs = {"params": jax.random.PRNGKey(0), "dropout": jax.random.PRNGKey(1)}
  x = jnp.zeros((1, 64, 64, 3))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype),
                        jax.eval_shape(lambda: model.flax_model.init(rngs, x, train=True))["params"])

  def write(embed_dim, name):
    overrides = dict(config.model.backbone.overrides, embed_dim=embed_dim)
    backbone = backbones.create_model("crossformer_s", **overrides)
    shapes = jax.eval_shape(lambda: backbone.init(rngs, x, train=False))
    return checkpoint_io.save_converted(tmp_path / name, backbone,
                                        jax.tree.map(lambda s: np.ones(s.shape, s.dtype), shapes))

  loaded = pretrained.load_pretrained_backbone(params, str(write(32, "ok.msgpack")))
  assert all(np.all(np.asarray(v) == 1) for v in jax.tree.leaves(loaded["backbone"]))
  assert all(np.all(np.asarray(v) == 0) for v in jax.tree.leaves(loaded["decode_head"]))
  with pytest.raises(ValueError, match="shape mismatches"):
    pretrained.load_pretrained_backbone(params, str(write(16, "wrong.msgpack")))


def test_official_npz_as_init_from_fills_the_backbone(tmp_path, official_fixtures_dir):
  """``init_from.checkpoint_path`` may be an official ``.npz`` state_dict (as the docs say): it is read with the
  one official reader and converted for the model's own backbone, every leaf filled."""
  import backbones  # pylint: disable=g-import-not-at-top
  from projects.common import pretrained  # pylint: disable=g-import-not-at-top
  keys = json.loads((official_fixtures_dir / "keys_crossformer_t_backbone.json").read_text())["keys"]
  np.savez(tmp_path / "official.npz", **{k["key"]: np.full(k["shape"], 0.5, k["dtype"]) for k in keys})
  backbone = backbones.create_model("crossformer_t")
  shapes = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))["params"]
  params = {"backbone": jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes), "decode_head": {"w": 1.0}}
  loaded = pretrained.load_pretrained_backbone(params, str(tmp_path / "official.npz"), backbone=backbone)
  assert all(np.all(np.asarray(v) == 0.5) for v in jax.tree.leaves(loaded["backbone"]))
  assert loaded["decode_head"] == {"w": 1.0}
  with pytest.raises(ValueError, match="needs the model's backbone"):
    pretrained.load_pretrained_backbone(params, str(tmp_path / "official.npz"))
