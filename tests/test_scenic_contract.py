"""The Scenic contract: our models, configs and checkpoints as a Scenic project uses them.

Scenic is not installable (the PyPI package of that name is unrelated), so ``_scenic_*`` below are a
test-only minimal re-implementation of the formulas of Scenic's ``SegmentationModel``
(``model_lib/base_models/segmentation_model.py`` + ``model_utils.py``: one-hot targets, label smoothing
``t * (1 - ls) + ls / K``, class weights on the targets, ``sum(ce * w) / (sum(w) + 1e-8)``, metrics
``accuracy`` = (correct, pixels) and ``loss`` = (batch mean, 1), ``psum`` over the pmap axis) and of
``pretrain_utils.init_from_pretrain_state`` (copy every restored parameter whose path exists in the model),
written from reading Scenic.
"""

import functools
import pathlib

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

import backbones
from backbones.weights import scenic as scenic_checkpoint
from projects import registry
from projects.common import config_utils
from projects.common import optim
from projects.common import pretrained
from projects.common import sharding
from projects.common import trainer
from projects.common.base_model import psum_metrics
from projects.segmentation.models.encoder_decoder import SegmentationModel, segmentation_loss

K = 5
REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
TINY_BACKBONE = dict(embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2))


# ------------------------------------------------------------------------ Scenic's formulas (test-only)
def _scenic_loss(logits, batch, label_smoothing=None, label_weights=None):
  targets = (batch["label"][..., None] == jnp.arange(logits.shape[-1])).astype(jnp.float32)
  if label_smoothing is not None:
    targets = targets * (1.0 - label_smoothing) + label_smoothing / logits.shape[-1]
  if label_weights is not None:
    targets = targets * label_weights
  weights = batch["batch_mask"]
  ce = -jnp.sum(targets * jax.nn.log_softmax(logits), axis=-1) * weights
  return jnp.sum(ce) / (jnp.sum(weights) + 1e-8)


def _scenic_metrics(logits, batch, axis_name=None):
  weights = batch["batch_mask"]
  targets = (batch["label"][..., None] == jnp.arange(logits.shape[-1])).astype(jnp.float32)
  correct = (jnp.argmax(logits, -1) == jnp.argmax(targets, -1)) * weights
  metrics = {"accuracy": (jnp.sum(correct), jnp.sum(weights)), "loss": (_scenic_loss(logits, batch), 1.0)}
  if axis_name is None:
    return metrics
  return {k: (jax.lax.psum(jnp.sum(v), axis_name), jax.lax.psum(jnp.sum(n), axis_name))
          for k, (v, n) in metrics.items()}


def _scenic_label_weights(proportions, factor):
  p = np.maximum(np.asarray(proportions, np.float64) / np.sum(proportions), 1e-8)
  w = 1.0 / (factor * p + (1.0 - factor))
  return w / w.sum() * len(w)


def _scenic_replace_dict(model_params, restored_params):
  """``pretrain_utils._replace_dict`` without prefixes: returns (new params, number of leaves loaded)."""
  model_flat = flax.traverse_util.flatten_dict(flax.core.unfreeze(model_params))
  loaded = 0
  for key, value in flax.traverse_util.flatten_dict(flax.core.unfreeze(restored_params)).items():
    if key in model_flat:
      model_flat[key] = value
      loaded += 1
  return flax.traverse_util.unflatten_dict(model_flat), loaded


# ------------------------------------------------------------------------------------------- batches
def _scenic_batch(seed, shape, ignore_value=-1):
  """A Scenic segmentation batch: per-pixel ``batch_mask`` 0 on void pixels (label ``ignore_value``) and on
  a padded border."""
  rng = np.random.default_rng(seed)
  b, h, w = shape
  label = rng.integers(0, K, size=shape).astype(np.int32)
  void = rng.random(shape) < 0.2
  label[void] = ignore_value
  mask = (~void).astype(np.float32)
  mask[:, :, -3:] = 0.0  # right padding of the bucket
  logits = rng.normal(size=shape + (K,)).astype(np.float32) * 2.0
  return jnp.asarray(logits), {"label": jnp.asarray(label), "batch_mask": jnp.asarray(mask)}


@pytest.fixture(scope="module")
def model():
  config = SegmentationModel(None, {"num_classes": K}).config  # the tiny default (never initialised here)
  return SegmentationModel(config, {"num_classes": K, "class_proportions": [0.5, 0.2, 0.15, 0.1, 0.05]})


# --------------------------------------------------------------------------------- loss and metrics
@pytest.mark.parametrize("shape", [(2, 16, 24), (3, 32, 32)])
def test_loss_and_metrics_equal_scenics_on_scenic_batches(model, shape):
  logits, batch = _scenic_batch(sum(shape), shape)
  np.testing.assert_allclose(model.loss_function(logits, batch), _scenic_loss(logits, batch), rtol=1e-6)
  ours = model.get_metrics_fn_jit("validation")(logits, batch)
  theirs = _scenic_metrics(logits, batch)
  assert set(ours) == set(theirs) == {"accuracy", "loss"}
  for name in theirs:
    np.testing.assert_allclose(np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64),
                               rtol=1e-6)
  # Label smoothing and Scenic's class rebalancing change the loss exactly as Scenic's formula says.
  with model.config.unlocked():
    model.config.label_smoothing, model.config.class_rebalancing_factor = 0.1, 0.5
  try:
    weights = _scenic_label_weights(model.dataset_meta_data["class_proportions"], 0.5)
    np.testing.assert_allclose(model.get_label_weights(), weights, rtol=1e-6)
    expected = _scenic_loss(logits, batch, 0.1, jnp.asarray(weights, jnp.float32))
    smoothed = model.loss_function(logits, batch)
    np.testing.assert_allclose(smoothed, expected, rtol=1e-5)
    assert abs(float(smoothed) - float(_scenic_loss(logits, batch))) > 1e-3
    # The metrics' loss stays Scenic's plain cross-entropy (no smoothing or weights), in train and eval.
    np.testing.assert_allclose(model.get_metrics_fn_jit("train")(logits, batch)["loss"][0],
                               _scenic_loss(logits, batch), rtol=1e-6)
  finally:
    with model.config.unlocked():
      model.config.label_smoothing, model.config.class_rebalancing_factor = None, 0.0


def test_per_pixel_mask_selects_the_pixels_and_per_example_mask_broadcasts(model):
  logits, batch = _scenic_batch(7, (2, 8, 8))
  label, mask = np.asarray(batch["label"]), np.asarray(batch["batch_mask"])
  log_probs = np.asarray(jax.nn.log_softmax(logits))
  chosen = np.argwhere(mask > 0)
  expected = -np.mean([log_probs[b, i, j, label[b, i, j]] for b, i, j in chosen])
  assert 40 < len(chosen) < 2 * 64
  np.testing.assert_allclose(model.loss_function(logits, batch), expected, rtol=1e-6)
  # A per-example mask (our pipelines) is the per-pixel one broadcast: example 1 out, void pixels ignored.
  per_example = {"label": batch["label"], "batch_mask": jnp.asarray([1.0, 0.0])}
  broadcast = {"label": batch["label"], "batch_mask": jnp.asarray(
      np.broadcast_to(np.asarray([1.0, 0.0])[:, None, None], label.shape) * (label >= 0))}
  np.testing.assert_allclose(model.loss_function(logits, per_example), model.loss_function(logits, broadcast),
                             rtol=1e-6)
  with pytest.raises(ValueError, match="per example"):
    model.loss_function(logits, {"label": batch["label"], "batch_mask": jnp.ones((2, 8))})


def test_label_255_is_ignored_without_nan(model):
  logits, batch = _scenic_batch(3, (2, 8, 8), ignore_value=255)
  full = {"label": batch["label"], "batch_mask": jnp.ones((2,))}  # 255 pixels not masked by the batch
  reference = segmentation_loss(logits, jnp.where(batch["label"] == 255, -1, batch["label"]))
  with model.config.unlocked():
    model.config.model.ignore_label = 255
  try:
    loss, grad = jax.value_and_grad(lambda x: model.loss_function(x, full))(logits)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(np.asarray(grad)))
    np.testing.assert_allclose(loss, reference, rtol=1e-6)
    assert float(model.get_metrics_fn_jit()(logits, full)["accuracy"][1]) == float(np.sum(batch["label"] != 255))
    assert int(model.confusion_matrix(logits, full).sum()) == int(np.sum(batch["label"] != 255))
  finally:
    with model.config.unlocked():
      model.config.model.ignore_label = -1
  # With the default ignore label (-1), labels >= num_classes still never index the logits.
  assert np.isfinite(float(model.loss_function(logits, full)))
  np.testing.assert_allclose(model.loss_function(logits, full), reference, rtol=1e-6)


def test_pmap_metrics_over_two_devices_sum_like_scenics(model):
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 devices (tests/conftest.py forces 4 CPU devices)")
  logits, batch = _scenic_batch(11, (4, 8, 8))
  def shard(x):
    return x.reshape((2, 2) + x.shape[1:])

  sharded_logits, sharded_batch = shard(logits), jax.tree.map(shard, batch)
  ours = jax.pmap(model.get_metrics_fn("validation"), axis_name="batch", devices=jax.devices()[:2])(
      sharded_logits, sharded_batch)
  theirs = jax.pmap(lambda x, b: _scenic_metrics(x, b, "batch"), axis_name="batch", devices=jax.devices()[:2])(
      sharded_logits, sharded_batch)
  truth = model.get_metrics_fn_jit("validation")(logits, batch)  # one device, the whole batch
  for name in ("accuracy", "loss"):
    value, norm = (np.asarray(x) for x in ours[name])  # (devices,) each
    np.testing.assert_allclose(value, np.asarray(theirs[name][0]), rtol=1e-6)
    np.testing.assert_allclose(norm, np.asarray(theirs[name][1]), rtol=1e-6)
    assert value[0] == value[1] and norm[0] == norm[1]  # the same on every device
  np.testing.assert_allclose([ours["accuracy"][0][0], ours["accuracy"][1][0]], truth["accuracy"], rtol=1e-6)
  assert float(ours["loss"][1][0]) == 2.0  # Scenic: (sum of the per-device means, number of devices)
  per_device = [float(model.loss_function(sharded_logits[d], jax.tree.map(lambda x: x[d], sharded_batch)))
                for d in range(2)]
  np.testing.assert_allclose(ours["loss"][0][0], sum(per_device), rtol=1e-6)
  summed = jax.pmap(lambda m: psum_metrics(m, "batch"), axis_name="batch", devices=jax.devices()[:2])(
      {"n": (jnp.ones((2, 3)), jnp.ones((2,)))})
  np.testing.assert_allclose(summed["n"][0], [6.0, 6.0])


def test_global_metrics_fn_takes_scenics_confusion_matrices(model):
  logits, batch = _scenic_batch(5, (2, 8, 8))
  confusion = model.confusion_matrix(logits, batch)
  global_fn = model.get_global_metrics_fn()
  # Scenic's trainer passes a list of (1, K, K) float matrices normalised by the number of pixels.
  scenic_style = [np.asarray(confusion, np.float64)[None] / 128.0] * 2
  metrics = global_fn(scenic_style, {"class_names": [f"c{i}" for i in range(K)]})
  cm = np.asarray(confusion, np.float64)
  iou = np.diag(cm) / (cm.sum(0) + cm.sum(1) - np.diag(cm))
  np.testing.assert_allclose(metrics["mean_iou"], np.nanmean(iou), rtol=1e-9)
  np.testing.assert_allclose(metrics["iou_per_class/03_c3"], np.nan_to_num(iou[3]), rtol=1e-9)
  assert metrics["mIoU"] == pytest.approx(metrics["mean_iou"])


# ------------------------------------------------------------------------------- backbone in Scenic
class _ScenicStyleModel(nn.Module):
  """How a Scenic project embeds the backbone: one line inside its own ``@nn.compact``."""

  @nn.compact
  def __call__(self, x, train=False):
    features = backbones.create_model("crossformer_s", name="backbone", **TINY_BACKBONE)(x, train=train)
    return nn.Dense(3, name="head")(jnp.mean(features["stage_4"], axis=(1, 2)))


@pytest.fixture(scope="module")
def scenic_style_params():
  """The Scenic-style model's params (distinct values per leaf, from shapes only: nothing to compile)."""
  shapes = jax.eval_shape(lambda: _ScenicStyleModel().init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  leaves, tree = jax.tree.flatten(shapes["params"])
  return jax.tree.unflatten(tree, [np.full(s.shape, i + 1.0, s.dtype) for i, s in enumerate(leaves)])


def test_create_model_name_passes_through_inside_compact(scenic_style_params):
  assert set(scenic_style_params) == {"backbone", "head"}
  backbone = backbones.create_model("crossformer_s", **TINY_BACKBONE)
  expected = jax.eval_shape(lambda: backbone.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))["params"]
  assert jax.tree.structure(expected) == jax.tree.structure(scenic_style_params["backbone"])


def test_scenic_checkpoint_round_trip_into_scenic_and_our_models(tmp_path, scenic_style_params, model):
  from flax.training import checkpoints  # pylint: disable=import-outside-toplevel
  ones = jax.tree.map(lambda p: np.full(p.shape, 0.25, np.float32), scenic_style_params["backbone"])
  path = scenic_checkpoint.save_scenic_checkpoint(tmp_path / "ckpt", ones, metadata={"variant": "tiny"})
  assert path.name == "checkpoint_0"
  with pytest.raises(FileExistsError):
    scenic_checkpoint.save_scenic_checkpoint(tmp_path / "ckpt", ones)
  # What Scenic's restore_pretrained_checkpoint reads (flax's restorer, no target).
  restored = checkpoints.restore_checkpoint(str(tmp_path / "ckpt"), None)
  assert int(restored["global_step"]) == 0 and restored["model_state"] == {}
  assert restored["metadata"] == {"variant": "tiny"}
  # Scenic's init_from_pretrain_state: every backbone leaf lands in the Scenic-style model.
  new_params, loaded = _scenic_replace_dict(scenic_style_params, restored["params"])
  assert loaded == len(jax.tree.leaves(scenic_style_params["backbone"])) > 20
  assert all(np.all(np.asarray(v) == 0.25) for v in jax.tree.leaves(new_params["backbone"]))
  # Our trainer's init_from.checkpoint_path and the models' Scenic hook init_from_train_state.
  from_path = pretrained.load_pretrained_backbone(dict(scenic_style_params), str(tmp_path / "ckpt"))
  assert all(np.all(np.asarray(v) == 0.25) for v in jax.tree.leaves(from_path["backbone"]))

  class _State(flax.struct.PyTreeNode):
    params: dict

  state = model.init_from_train_state(_State(params=dict(scenic_style_params)), restored)
  assert all(np.all(np.asarray(v) == 0.25) for v in jax.tree.leaves(state.params["backbone"]))
  np.testing.assert_array_equal(state.params["head"]["kernel"], scenic_style_params["head"]["kernel"])


# ------------------------------------------------------------------------------ config and registry
def test_recipe_configs_use_scenic_names_and_the_registry():
  for name in ("upernet_crossformer_s_ade20k", "retinanet_crossformer_s_coco", "tiny_ade20k", "tiny_coco",
               "crossformer_s_imagenet", "tiny_classification"):
    config = config_utils.load_config(str(REPO_ROOT / "configs" / f"{name}.py"))
    for key in ("rng_seed", "optimizer", "optimizer_configs", "lr_configs", "max_checkpoint_keep",
                "num_training_epochs", "model_name", "dataset_name", "trainer_name", "data_dtype_str", "debug_train",
                "debug_eval", "init_from", "checkpoint", "l2_decay_factor", "label_smoothing",
                "class_rebalancing_factor"):
      assert key in config, (name, key)
    for old in ("seed", "lr_schedule", "max_checkpoints_to_keep", "num_epochs"):
      assert old not in config, (name, old)
    assert isinstance(config.optimizer, str) and "checkpoint" not in config.model.backbone
    assert config.checkpoint is True and config.init_from.checkpoint_path is None
    assert registry.get_model_cls(config.model_name).__name__ in ("SegmentationModel", "RetinaNetModel",
                                                                  "ClassificationModel")
    assert registry.get_trainer(config.trainer_name) is trainer.train_and_evaluate
    # Scenic's get_optimizer calls optax.<optimizer>(learning_rate, **kwargs): only optax arguments (and the
    # fields Scenic removes first) may be in optimizer_configs.
    kwargs = dict(config.optimizer_configs)
    for scenic_field in ("skip_scale_and_bias_regularization", "grad_clip", "weight_decay"):
      kwargs.pop(scenic_field, None)
    assert set(kwargs) <= {"b1", "b2", "eps"}
  with pytest.raises(ValueError, match="unknown model_name"):
    registry.get_model_cls("unet_segmentation")


class _ToyBackbone(nn.Module):
  """Stand-in backbone (strided convs returning the stage dict), to keep the trainer's program small."""

  @nn.compact
  def __call__(self, x, train=False):
    features = {}
    for i, dim in enumerate((4, 8, 8, 8)):
      x = nn.Conv(dim, (4, 4) if i == 0 else (2, 2), strides=4 if i == 0 else 2, padding="VALID")(x)
      features[f"stage_{i + 1}"] = x
    return features


class _Data:
  """An in-memory dataset: 4 random 32x32 images per batch, ``num_train_examples`` for Scenic's epochs."""

  def __init__(self):
    rng = np.random.default_rng(0)
    self.batch = {"inputs": rng.normal(size=(4, 32, 32, 3)).astype(np.float32),
                  "label": rng.integers(-1, K, size=(4, 32, 32)).astype(np.int32),
                  "batch_mask": np.ones((4,), np.float32)}
    self.meta_data = {"num_classes": K, "num_train_examples": 12, "input_shape": (-1, 32, 32, 3)}
    self.eval_iter_fn = None

  def train_iter_fn(self, start_step):
    del start_step
    while True:
      yield self.batch


@pytest.mark.slow
def test_a_scenic_named_config_drives_our_trainer(tmp_path):
  """Epochs from ``num_train_examples`` (12 // 4 = 3 per epoch), ``max_checkpoint_keep``, ``lr_configs``,
  ``optimizer`` + ``optimizer_configs``, ``rng_seed``, ``init_from`` (a Scenic checkpoint), our loss/metrics."""
  config = SegmentationModel(None, {"num_classes": K}).config
  with config.unlocked():
    config.model.auxiliary_head = None
    config.model.decode_head = ml_collections.ConfigDict(dict(type="upernet", channels=8, pool_scales=(1, 2),
                                                              norm="batch", dropout=0.0))
    config.update(dict(
        rng_seed=3, batch_size=4, num_training_epochs=2, log_summary_steps=1, log_eval_steps=0,
        checkpoint=True, checkpoint_steps=2, max_checkpoint_keep=1, progress_bar=False,
        data_dtype_str="float32", optimizer="momentum", optimizer_configs=dict(weight_decay=1e-4),
        lr_configs=dict(learning_rate_schedule="compound", factors="constant * linear_warmup",
                        base_learning_rate=0.05, warmup_steps=4, warmup_alpha=0.5),
        init_from=dict(checkpoint_path=str(tmp_path / "ckpt"))))
  model = SegmentationModel(config, {"num_classes": K}, backbone=_ToyBackbone())
  shapes = jax.eval_shape(lambda: model.flax_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3))))
  scenic_checkpoint.save_scenic_checkpoint(tmp_path / "ckpt", jax.tree.map(
      lambda p: np.full(p.shape, 0.01, np.float32), shapes["params"]["backbone"]))
  assert optim.optimizer_configs(config) == {"optimizer": "sgd", "momentum": 0.9, "weight_decay": 1e-4}
  seen = []

  def hook(step, state, metrics):
    seen.append((step, float(metrics["learning_rate"][0]), set(metrics)))
    if step == 1:  # the backbone started from the Scenic checkpoint, one small SGD step away
      leaf = np.asarray(jax.tree.leaves(state.params["backbone"])[0])
      assert np.all(np.abs(leaf - 0.01) < 0.01)

  result = trainer.train_and_evaluate(model, _Data(), config, str(tmp_path / "work"), hooks=[hook],
                                      mesh=sharding.create_mesh())
  assert int(jax.device_get(result.state.step)) == 6  # 2 epochs x 3 steps
  np.testing.assert_allclose([lr for _, lr, _ in seen], [0.05 * min(1.0, 0.5 + t * 0.5 / 4) for t in range(6)],
                             rtol=1e-6)
  assert seen[0][2] == {"accuracy", "loss", "objective", "grad_norm", "learning_rate"}
  assert sorted(p.name for p in (tmp_path / "work" / "checkpoints").iterdir()) == ["6"]
  assert np.isfinite(result.train_summary["loss"])


def test_official_checkpoint_converted_for_scenic_loads_every_leaf(tmp_path, official_fixtures_dir):
  """``convert_checkpoint --format scenic`` on an official (key-complete, zero-valued) CrossFormer-T dense
  checkpoint -> Scenic's restorer -> ``init_from_pretrain_state`` fills every leaf of a Scenic module's
  ``create_model("crossformer_t", name="backbone")``."""
  import json  # pylint: disable=import-outside-toplevel
  from flax.training import checkpoints  # pylint: disable=import-outside-toplevel
  from projects import convert_checkpoint  # pylint: disable=import-outside-toplevel
  meta = json.loads((official_fixtures_dir / "keys_crossformer_t_backbone.json").read_text())
  np.savez(tmp_path / "official.npz", **{k["key"]: np.full(k["shape"], 0.5, k["dtype"]) for k in meta["keys"]})
  assert convert_checkpoint.main(["--input", str(tmp_path / "official.npz"), "--variant", "crossformer_t",
                                  "--format", "scenic", "--output", str(tmp_path / "scenic")]) == 0
  restored = checkpoints.restore_checkpoint(str(tmp_path / "scenic"), None)

  class _Embedding(nn.Module):
    @nn.compact
    def __call__(self, x):
      return backbones.create_model("crossformer_t", name="backbone")(x)["stage_4"]

  shapes = jax.eval_shape(lambda: _Embedding().init(jax.random.PRNGKey(0), jnp.zeros((1, 224, 224, 3))))
  params = jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"])
  new_params, loaded = _scenic_replace_dict(params, restored["params"])
  assert loaded == len(jax.tree.leaves(params)) == len(jax.tree.leaves(restored["params"]))
  assert sum(int(np.size(v)) for v in jax.tree.leaves(new_params)) == meta["num_params"]
  assert all(np.all(np.asarray(v) != 0) for v in jax.tree.leaves(new_params["backbone"]))


def _scenic_train_step(state, batch, *, flax_model, loss_fn, metrics_fn, tx):
  """Scenic's ``classification_trainer.train_step`` reduced to its contract (test-only): apply with
  ``mutable=["batch_stats"]``, ``loss_fn(logits, batch, params)``, ``pmean`` of the gradients over
  ``"batch"``, the optax update, ``metrics_fn(logits, batch)``."""
  params, model_state, opt_state, rng = state
  dropout_rng = jax.random.fold_in(rng, jax.lax.axis_index("batch"))

  def training_loss_fn(p):
    logits, new_model_state = flax_model.apply({"params": p, **model_state}, batch["inputs"],
                                               mutable=["batch_stats"], train=True, rngs={"dropout": dropout_rng},
                                               debug=False)
    return loss_fn(logits, batch, p), (new_model_state, logits)

  (_, (new_model_state, logits)), grad = jax.value_and_grad(training_loss_fn, has_aux=True)(params)
  grad = jax.lax.pmean(grad, axis_name="batch")
  updates, opt_state = tx.update(grad, opt_state, params)
  params = jax.tree.map(jnp.add, params, updates)
  return (params, new_model_state, opt_state, rng), metrics_fn(logits, batch), logits


@pytest.mark.slow
def test_scenics_train_step_trains_our_registered_model_at_two_sizes():
  """``model_name`` -> our class -> Scenic's pmap train step on Scenic-format batches (per-pixel masks, 255
  voids) over 2 devices at two input sizes; its metrics equal Scenic's formulas on the same logits."""
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 devices (tests/conftest.py forces 4 CPU devices)")
  config = SegmentationModel(None, {"num_classes": K}).config
  with config.unlocked():
    config.model_name = "crossformer_segmentation"
    config.model.auxiliary_head.channels = 8
    config.model.decode_head.channels = 8
    config.model.ignore_label = 255
    config.optimizer, config.optimizer_configs = "sgd", dict(momentum=0.9)
  model = registry.get_model_cls(config.model_name)(config, {"num_classes": K}, backbone=_ToyBackbone())
  tx = optim.create_optimizer(config, lambda step: 0.05)
  devices = jax.devices()[:2]
  for size in ((32, 32), (32, 64)):
    variables = model.flax_model.init(jax.random.PRNGKey(0), jnp.zeros((1,) + size + (3,)), train=False)
    params = variables.pop("params")
    state = (params, dict(variables), tx.init(params), jax.random.PRNGKey(1))
    state = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 2), state)  # replicated over the 2 devices
    step = jax.pmap(functools.partial(_scenic_train_step, flax_model=model.flax_model, loss_fn=model.loss_function,
                                      metrics_fn=model.get_metrics_fn("train"), tx=tx),
                    axis_name="batch", devices=devices)
    logits, batch = _scenic_batch(size[1], (4,) + size, ignore_value=255)
    rng = np.random.default_rng(size[1])
    batch["inputs"] = jnp.asarray(rng.normal(size=(4,) + size + (3,)), jnp.float32)
    batch = jax.tree.map(lambda x: x.reshape((2, 2) + x.shape[1:]), batch)
    losses = []
    for _ in range(3):
      state, metrics, logits = step(state, batch)
      scenic_metrics = jax.pmap(lambda x, b: _scenic_metrics(x["logits"], b, "batch"), axis_name="batch",
                                devices=devices)(logits, {k: batch[k] for k in ("label", "batch_mask")})
      for name in ("accuracy", "loss"):
        np.testing.assert_allclose(np.asarray(metrics[name][0]), np.asarray(scenic_metrics[name][0]), rtol=1e-5)
        np.testing.assert_allclose(np.asarray(metrics[name][1]), np.asarray(scenic_metrics[name][1]), rtol=1e-6)
      assert np.all(np.isfinite(np.asarray(metrics["aux_loss"][0])))
      losses.append(float(metrics["loss"][0][0]))
    assert losses[-1] < losses[0], (size, losses)
