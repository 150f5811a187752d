"""Tests of the shared training machinery (``projects/common``) with a tiny task-agnostic model."""

import os
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from projects.common import checkpoint as checkpoint_lib
from projects.common import config_utils
from projects.common import evaluation
from projects.common import optim
from projects.common import pretrained
from projects.common import sharding
from projects.common import trainer
from projects.common.base_model import BaseModel

NUM_CLASSES = 3
SIZE = 8


class _Backbone(nn.Module):
  """Conv + BatchNorm + a ``pos`` MLP, like the real backbone's parameter naming."""

  @nn.compact
  def __call__(self, x, train: bool):
    x = nn.Conv(8, (3, 3), use_bias=False, name="conv")(x)  # no bias before BN
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name="norm")(x)
    x = nn.relu(x)
    offsets = nn.Dense(4, name="pos")(jnp.ones((1, 2), x.dtype))  # a DPB-like MLP (no decay)
    return x + jnp.sum(offsets)


class _TinyNet(nn.Module):
  num_classes: int = NUM_CLASSES

  @nn.compact
  def __call__(self, x, train: bool = False, debug: bool = False):
    x = _Backbone(name="backbone")(x, train)
    x = nn.Dropout(0.2, deterministic=not train)(x)
    return nn.Conv(self.num_classes, (1, 1), name="decode_head")(x)


class _TinyModel(BaseModel):
  """Per-pixel classifier with softmax cross-entropy (ignore label -1)."""

  def build_flax_model(self):
    return _TinyNet(num_classes=self.dataset_meta_data.get("num_classes", NUM_CLASSES))

  def default_flax_model_config(self):
    return ml_collections.ConfigDict()

  def loss_function(self, outputs, batch, model_params=None):
    valid = (batch["label"] >= 0) & (batch["batch_mask"][:, None, None] > 0)
    labels = jnp.where(valid, batch["label"], 0)
    ce = optax.softmax_cross_entropy_with_integer_labels(outputs.astype(jnp.float32), labels)
    return jnp.sum(ce * valid) / jnp.maximum(jnp.sum(valid), 1)

  def get_metrics_fn_jit(self, split=None):
    def metrics_fn(outputs, batch):
      valid = (batch["label"] >= 0) & (batch["batch_mask"][:, None, None] > 0)
      correct = (jnp.argmax(outputs, -1) == batch["label"]) & valid
      return {"pixel_accuracy": (jnp.sum(correct).astype(jnp.float32), jnp.sum(valid).astype(jnp.float32)),
              "loss": (self.loss_function(outputs, batch), jnp.ones((), jnp.float32))}
    return metrics_fn


class _Dataset(NamedTuple):
  train_iter_fn: Any
  eval_iter_fn: Any
  meta_data: dict


def _make_batch(seed: int, index: int, batch_size: int):
  rng = np.random.default_rng([seed, index])
  inputs = rng.normal(size=(batch_size, SIZE, SIZE, 3)).astype(np.float32)
  label = np.argmax(inputs @ np.array([[1., 0., -1.], [0., 1., 1.], [-1., 1., 0.]], np.float32), -1)
  label = label.astype(np.int32)
  label[:, :, 0] = -1  # an ignored column
  return {"inputs": inputs, "label": label, "batch_mask": np.ones((batch_size,), np.float32)}


def _dataset(seed: int = 0, batch_size: int = 8, num_eval: int = 2):
  def train_iter_fn(start_step):
    step = start_step
    while True:
      yield _make_batch(seed, step, batch_size)
      step += 1

  def eval_iter_fn():
    for i in range(num_eval):
      yield _make_batch(seed + 1000, i, batch_size)

  return _Dataset(train_iter_fn, eval_iter_fn, {"num_classes": NUM_CLASSES,
                                                "input_shape": (-1, SIZE, SIZE, 3)})


def _config(num_steps: int = 8, **overrides) -> ml_collections.ConfigDict:
  config = ml_collections.ConfigDict(dict(
      rng_seed=0, batch_size=8, num_training_steps=num_steps, log_summary_steps=4, log_eval_steps=0,
      checkpoint=True, checkpoint_steps=3, max_checkpoint_keep=2, progress_bar=False,
      model=dict(dtype="float32"), init_from=dict(checkpoint_path=None),
      optimizer="adamw",
      optimizer_configs=dict(b1=0.9, b2=0.999, weight_decay=0.05, skip_scale_and_bias_regularization=True,
                             grad_clip=dict(clip_method="clip_by_global_norm", clip_value=1.0)),
      weight_decay_configs=dict(no_decay_keywords=("norm", "bias"), no_decay_backbone_keywords=("pos",)),
      lr_configs=dict(learning_rate_schedule="compound", factors="constant * polynomial * linear_warmup",
                      base_learning_rate=1e-2, power=0.9, end_factor=0.0, decay_steps=None, warmup_steps=2,
                      warmup_alpha=0.1)))
  return config_utils.apply_overrides(config, overrides)


class _Recorder:
  """Hook recording each step's loss; optionally 'kills' the run (raises) at a given step."""

  def __init__(self, kill_at=None):
    self.losses, self.kill_at = {}, kill_at

  def __call__(self, step, state, metrics):
    self.losses[step] = float(jax.device_get(metrics["loss"][0]))
    if step == self.kill_at:
      raise KeyboardInterrupt(f"simulated kill at step {step}")


class _AccuracyEvaluator(evaluation.Evaluator):
  """Counts correct pixels on device; an example of the evaluator interface."""

  def reset(self):
    self.correct = self.total = 0

  def process_fn(self, outputs, batch):
    valid = batch["label"] >= 0
    return (jnp.sum((jnp.argmax(outputs, -1) == batch["label"]) & valid), jnp.sum(valid))

  def update(self, processed, host_batch):
    self.correct = self.correct + processed[0]
    self.total = self.total + processed[1]

  def compute(self):
    return {"evaluator_accuracy": float(self.correct) / float(self.total)}


# ---------------------------------------------------------------------------------------------------------
# Optimizer and schedules.

def test_weight_decay_mask_excludes_norms_biases_and_pos():
  params = {
      "backbone": {"conv": {"kernel": jnp.ones((3, 3, 3, 8)), "bias": jnp.ones(8)},
                   "norm": {"scale": jnp.ones(8), "bias": jnp.ones(8)},
                   "layers_0": {"blocks_0": {"attn": {"pos": {"pos_proj": {"kernel": jnp.ones((2, 4))}},
                                                      "qkv": {"kernel": jnp.ones((8, 24))}},
                                             "norm1": {"scale": jnp.ones(8)}}}},
      "decode_head": {"conv_seg": {"kernel": jnp.ones((1, 1, 8, 3))},
                      "BatchNorm_0": {"scale": jnp.ones(3)},
                      "position_mlp": {"kernel": jnp.ones((2, 2))}},
  }
  mask = optim.weight_decay_mask(params)
  assert mask["backbone"]["conv"]["kernel"] is True
  assert mask["backbone"]["conv"]["bias"] is False
  assert mask["backbone"]["norm"]["scale"] is False
  assert mask["backbone"]["layers_0"]["blocks_0"]["attn"]["pos"]["pos_proj"]["kernel"] is False
  assert mask["backbone"]["layers_0"]["blocks_0"]["attn"]["qkv"]["kernel"] is True
  assert mask["backbone"]["layers_0"]["blocks_0"]["norm1"]["scale"] is False
  assert mask["decode_head"]["conv_seg"]["kernel"] is True
  assert mask["decode_head"]["BatchNorm_0"]["scale"] is False
  # "pos" only matters inside the backbone.
  assert mask["decode_head"]["position_mlp"]["kernel"] is True


def test_adamw_does_not_decay_masked_params():
  config = ml_collections.ConfigDict(dict(optimizer="adamw", optimizer_configs=dict(weight_decay=0.5),
                                          weight_decay_configs=dict(no_decay_backbone_keywords=("pos",))))
  tx = optim.create_optimizer(config, lambda step: 0.1)
  params = {"backbone": {"pos": {"kernel": jnp.ones((2, 2))}, "conv": {"kernel": jnp.ones((2, 2))}}}
  zero_grads = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  np.testing.assert_allclose(updates["backbone"]["pos"]["kernel"], 0.0)
  np.testing.assert_allclose(updates["backbone"]["conv"]["kernel"], -0.1 * 0.5)


def _lr(num_training_steps=None, **kwargs):
  from configs import common  # pylint: disable=g-import-not-at-top
  return optim.create_lr_schedule(common.mmcv_lr_configs(**kwargs), num_training_steps)


def test_poly_schedule_with_warmup_matches_mmcv():
  # UperNet recipe: AdamW 6e-5, poly power 1.0, min_lr 0, 1500 warm-up iterations from ratio 1e-6, as Scenic
  # compound factors (constant * polynomial * linear_warmup).
  lr = _lr(160000, base_lr=6e-5, policy="poly", power=1.0, min_lr=0.0, warmup_steps=1500, warmup_ratio=1e-6)
  def regular(t):
    return 6e-5 * (1 - t / 160000)
  np.testing.assert_allclose(lr(0), 6e-5 * 1e-6, rtol=1e-5)
  np.testing.assert_allclose(lr(750), regular(750) * (1 - 0.5 * (1 - 1e-6)), rtol=1e-5)
  np.testing.assert_allclose(lr(1500), regular(1500), rtol=1e-5)
  np.testing.assert_allclose(lr(80000), 3e-5, rtol=1e-5)
  np.testing.assert_allclose(lr(160000), 0.0, atol=1e-12)
  # FPN recipe: 1e-4, power 0.9, no warm-up, min_lr 1e-6 here to check the floor.
  lr = _lr(80000, base_lr=1e-4, policy="poly", power=0.9, min_lr=1e-6)
  np.testing.assert_allclose(lr(40000), (1e-4 - 1e-6) * 0.5 ** 0.9 + 1e-6, rtol=1e-5)
  np.testing.assert_allclose(lr(80000), 1e-6, rtol=1e-5)


def test_step_schedule_with_warmup_matches_mmcv():
  # COCO 1x recipe in iterations: milestones at 8 and 11 "epochs" of 100 iterations, warm-up 500 @ 0.001.
  lr = _lr(1200, base_lr=1e-4, policy="step", milestones=(800, 1100), gamma=0.1, warmup_steps=500,
           warmup_ratio=0.001)
  np.testing.assert_allclose(lr(0), 1e-4 * 0.001, rtol=1e-5)
  np.testing.assert_allclose(lr(250), 1e-4 * (1 - 0.5 * 0.999), rtol=1e-5)
  np.testing.assert_allclose(lr(500), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(lr(799), 1e-4, rtol=1e-5)
  np.testing.assert_allclose(lr(800), 1e-5, rtol=1e-5)
  np.testing.assert_allclose(lr(1100), 1e-6, rtol=1e-5)


def test_schedule_config_errors_are_clear():
  with pytest.raises(ValueError, match="unknown lr_configs factor 'exp'"):
    optim.create_lr_schedule(ml_collections.ConfigDict(dict(
        learning_rate_schedule="compound", factors="constant * exp", base_learning_rate=1.0)), 10)
  with pytest.raises(ValueError, match="decay_steps"):
    _lr(None, base_lr=1.0, policy="poly")
  with pytest.raises(ValueError, match="optimizer_configs"):
    optim.create_optimizer(ml_collections.ConfigDict(dict(optimizer=dict(name="adamw"))), lambda s: 0.1)


# ---------------------------------------------------------------------------------------------------------
# Checkpointing, pretrained backbone, config loading.

def test_checkpoint_round_trip_and_atomic_tmp_dirs(tmp_path):
  model = _TinyModel(None, {"num_classes": NUM_CLASSES})
  config = _config()
  mesh = sharding.create_mesh()
  tx = optim.create_optimizer(config, optim.create_lr_schedule(config.lr_configs, 8))
  state = trainer.initialize_state(model, config, _dataset(), tx, mesh)
  state = state.replace(step=state.step + 7)
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "ckpt", save_every_steps=5, max_to_keep=2)
  assert ckpt.save(7, state, force=True)
  ckpt.wait_until_finished()
  assert not any("tmp" in p.name for p in (tmp_path / "ckpt").iterdir())
  # A save killed midway leaves an orbax temporary directory: it must never count as a checkpoint.
  (tmp_path / "ckpt" / "9.orbax-checkpoint-tmp-1234").mkdir()
  ckpt.close()
  ckpt = checkpoint_lib.Checkpointer(tmp_path / "ckpt", save_every_steps=5, max_to_keep=2)
  assert ckpt.latest_step() == 7
  fresh = trainer.initialize_state(model, config.copy_and_resolve_references(), _dataset(), tx, mesh)
  restored = ckpt.restore(fresh)
  assert ckpt.save(10, restored.replace(step=restored.step + 3), force=True)  # awaits the tmp clean-up
  ckpt.close()
  assert not (tmp_path / "ckpt" / "9.orbax-checkpoint-tmp-1234").exists()  # removed on start
  assert sorted(p.name for p in (tmp_path / "ckpt").iterdir()) == ["10", "7"]
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert b.sharding.is_fully_replicated


def test_pretrained_backbone_loading_and_shape_mismatch():
  params = {"backbone": {"conv": {"kernel": jnp.zeros((3, 3, 3, 8))}}, "head": {"k": jnp.zeros(2)}}
  loaded = pretrained.merge_backbone_params(params, {"conv": {"kernel": np.ones((3, 3, 3, 8))}})
  np.testing.assert_array_equal(loaded["backbone"]["conv"]["kernel"], 1.0)
  assert loaded["head"] is params["head"]
  with pytest.raises(ValueError, match=r"shape mismatch.*conv/kernel: checkpoint \(3, 3, 3, 4\)"):
    pretrained.merge_backbone_params(params, {"conv": {"kernel": np.ones((3, 3, 3, 4))}})
  with pytest.raises(ValueError, match="missing from the checkpoint"):
    pretrained.merge_backbone_params(params, {"other": {"kernel": np.ones(1)}})


def test_load_config_with_overrides(tmp_path):
  path = tmp_path / "cfg.py"
  path.write_text("import ml_collections\n"
                  "def get_config():\n"
                  "  return ml_collections.ConfigDict(dict(a=dict(b=1), c='x'))\n")
  config = config_utils.load_config(str(path), {"a.b": 5})
  assert config.a.b == 5 and config.c == "x"
  with pytest.raises(ValueError, match="no key 'zz'"):
    config_utils.load_config(str(path), {"a.zz": 1})


# ---------------------------------------------------------------------------------------------------------
# The trainer.

def test_killed_and_resumed_run_reproduces_uninterrupted_run(tmp_path):
  model = _TinyModel(None, {"num_classes": NUM_CLASSES})
  reference = _Recorder()
  full = trainer.train_and_evaluate(model, _dataset(), _config(), str(tmp_path / "full"),
                                    _AccuracyEvaluator(), hooks=[reference])
  assert sorted(reference.losses) == list(range(1, 9))
  assert reference.losses[8] < reference.losses[1]  # it learns
  assert 0.0 <= full.eval_summary["evaluator_accuracy"] <= 1.0
  assert full.eval_summary["pixel_accuracy"] == pytest.approx(full.eval_summary["evaluator_accuracy"])

  workdir = str(tmp_path / "killed")
  killed = _Recorder(kill_at=7)
  with pytest.raises(KeyboardInterrupt):
    trainer.train_and_evaluate(model, _dataset(), _config(), workdir, hooks=[killed])
  ckpt_dir = tmp_path / "killed" / "checkpoints"
  assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [3, 6]
  resumed = _Recorder()
  result = trainer.train_and_evaluate(model, _dataset(), _config(), workdir, _AccuracyEvaluator(),
                                      hooks=[resumed])
  assert sorted(resumed.losses) == [7, 8]  # restored step 6, ran the rest
  for step in range(1, 7):
    assert killed.losses[step] == reference.losses[step]
  for step in (7, 8):
    assert resumed.losses[step] == reference.losses[step], step
  assert int(result.state.step) == 8
  for a, b in zip(jax.tree.leaves(full.state), jax.tree.leaves(result.state)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  assert result.eval_summary["evaluator_accuracy"] == full.eval_summary["evaluator_accuracy"]
  # keep K: only the two newest checkpoints remain.
  assert sorted(int(p.name) for p in ckpt_dir.iterdir() if p.name.isdigit()) == [6, 8]
  assert any(name.startswith("events.out.tfevents") for name in os.listdir(workdir))


def test_four_devices_match_one_device(tmp_path):
  assert jax.device_count() == 4, "tests/conftest.py forces 4 CPU devices"
  model = _TinyModel(None, {"num_classes": NUM_CLASSES})
  config = _config(num_steps=4, checkpoint=False)
  seen = {}

  def check_sharding(step, state, metrics):
    if step == 1:
      seen["params_replicated"] = all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
      seen["num_param_devices"] = len(jax.tree.leaves(state.params)[0].sharding.device_set)

  mesh4 = sharding.create_mesh()
  batch = sharding.shard_batch(_make_batch(0, 0, 8), mesh4)
  assert batch["inputs"].sharding.spec == jax.sharding.PartitionSpec("data")
  assert {s.data.shape for s in batch["inputs"].addressable_shards} == {(2, SIZE, SIZE, 3)}

  four = trainer.train_and_evaluate(model, _dataset(), config, str(tmp_path / "four"),
                                    mesh=mesh4, hooks=[check_sharding])
  one = trainer.train_and_evaluate(model, _dataset(), config, str(tmp_path / "one"),
                                   mesh=sharding.create_mesh(jax.devices()[:1]))
  assert seen == {"params_replicated": True, "num_param_devices": 4}
  # BatchNorm statistics are global over the batch (SyncBN), so the runs agree up to float rounding.
  for a, b in zip(jax.tree.leaves(four.state), jax.tree.leaves(one.state)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=2e-4, atol=2e-5)
  assert four.eval_summary["pixel_accuracy"] == pytest.approx(one.eval_summary["pixel_accuracy"], abs=1e-3)


def test_batch_size_must_split_over_devices(tmp_path):
  model = _TinyModel(None, {"num_classes": NUM_CLASSES})
  with pytest.raises(ValueError, match="not divisible by the number of devices"):
    trainer.train_and_evaluate(model, _dataset(batch_size=6), _config(batch_size=6), str(tmp_path))


def test_initialize_state_loads_pretrained_backbone_from_config(monkeypatch):
  import backbones  # pylint: disable=g-import-not-at-top
  model = _TinyModel(None, {"num_classes": NUM_CLASSES})
  config = _config(**{"init_from.checkpoint_path": "/ckpt/backbone.msgpack"})
  mesh = sharding.create_mesh()
  tx = optim.create_optimizer(config, optim.create_lr_schedule(config.lr_configs, 8))
  shapes = jax.eval_shape(lambda: model.flax_model.init(
      {"params": jax.random.PRNGKey(0)}, jnp.zeros((1, SIZE, SIZE, 3)), train=False))["params"]["backbone"]
  calls = []

  def fake_loader(path):
    calls.append(path)
    return jax.tree.map(lambda s: np.full(s.shape, 0.5, s.dtype), shapes)

  monkeypatch.setattr(backbones, "load_backbone_params", fake_loader, raising=False)
  state = trainer.initialize_state(model, config, _dataset(), tx, mesh)
  assert calls == ["/ckpt/backbone.msgpack"]
  assert all(np.all(np.asarray(x) == 0.5) for x in jax.tree.leaves(state.params["backbone"]))
  assert all(x.sharding.is_fully_replicated for x in jax.tree.leaves(state.params))
  state = trainer.initialize_state(model, config, _dataset(), tx, mesh, load_pretrained=False)
  assert len(calls) == 1
