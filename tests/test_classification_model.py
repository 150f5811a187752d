"""The classification model: Scenic's ClassificationModel contract (loss, metrics, pmap), registry, heads.

``_scenic_*`` re-implement (test-only) the formulas of Scenic's ``ClassificationModel`` and
``classification_metrics_function`` (``model_lib/base_models/classification_model.py``, ``model_utils.py``):
one-hot targets, smoothing ``t * (1 - ls) + ls / K``, ``sum(ce * w) / (sum(w) + 1e-8)``; metrics
``accuracy`` = (correct, examples) and ``loss`` = (weighted un-normalised cross-entropy, examples).
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from projects import registry
from projects.classification.models.classifier import ClassificationModel
from projects.common import optim

K = 7


def _scenic_loss(logits, one_hot, weights, label_smoothing=None):
  if label_smoothing is not None:
    one_hot = one_hot * (1.0 - label_smoothing) + label_smoothing / one_hot.shape[-1]
  ce = -jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1) * weights
  return jnp.sum(ce) / (jnp.sum(weights) + 1e-8)


def _scenic_metrics(logits, one_hot, weights):
  correct = (jnp.argmax(logits, -1) == jnp.argmax(one_hot, -1)) * weights
  ce = -jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1) * weights
  return {"accuracy": (jnp.sum(correct), jnp.sum(weights)), "loss": (jnp.sum(ce), jnp.sum(weights))}


def _batch(seed, b=6):
  rng = np.random.default_rng(seed)
  logits = jnp.asarray(rng.normal(size=(b, K)) * 2.0, jnp.float32)
  labels = jnp.asarray(rng.integers(0, K, size=(b,)), jnp.int32)
  mask = jnp.asarray((np.arange(b) < b - 2).astype(np.float32))  # the last two are fillers
  return logits, labels, mask


@pytest.fixture(scope="module")
def model():
  config = ClassificationModel(None, {"num_classes": K}).config  # the tiny default
  return registry.get_model_cls("crossformer_classification")(config, {"num_classes": K})


def test_registered_with_its_task(model):
  assert isinstance(model, ClassificationModel) and model.task == "classification"
  assert "crossformer_classification" in registry.list_models()


def test_loss_on_integer_one_hot_and_soft_labels_equals_scenics(model):
  logits, labels, mask = _batch(0)
  one_hot = jax.nn.one_hot(labels, K)
  expected = _scenic_loss(logits, one_hot, mask)
  for label in (labels, one_hot):
    np.testing.assert_allclose(model.loss_function(logits, {"label": label, "batch_mask": mask}), expected,
                               rtol=1e-6)
  # Soft (mixed) targets: lam * a + (1 - lam) * b.
  soft = 0.7 * one_hot + 0.3 * one_hot[::-1]
  np.testing.assert_allclose(model.loss_function(logits, {"label": soft, "batch_mask": mask}),
                             _scenic_loss(logits, soft, mask), rtol=1e-6)
  # The fillers (batch_mask 0) do not count: changing their logits changes nothing.
  changed = logits.at[-2:].set(100.0)
  np.testing.assert_allclose(model.loss_function(changed, {"label": labels, "batch_mask": mask}), expected,
                             rtol=1e-6)
  assert abs(float(model.loss_function(changed, {"label": labels})) - float(expected)) > 1e-2


def test_label_smoothing_and_l2_follow_scenic(model):
  logits, labels, mask = _batch(1)
  one_hot = jax.nn.one_hot(labels, K)
  params = {"w": jnp.ones((3, 4)), "b": jnp.ones((4,))}
  with model.config.unlocked():
    model.config.label_smoothing, model.config.l2_decay_factor = 0.1, 0.01
  try:
    loss = model.loss_function(logits, {"label": labels, "batch_mask": mask}, params)
    np.testing.assert_allclose(loss, _scenic_loss(logits, one_hot, mask, 0.1) + 0.5 * 0.01 * 12, rtol=1e-6)
    # Smoothing the mixed targets = mixing the smoothed ones (timm's Mixup with label_smoothing).
    soft = 0.6 * one_hot + 0.4 * one_hot[::-1]
    smoothed_mix = 0.6 * (one_hot * 0.9 + 0.1 / K) + 0.4 * (one_hot[::-1] * 0.9 + 0.1 / K)
    np.testing.assert_allclose(model.loss_function(logits, {"label": soft, "batch_mask": mask}, params),
                               _scenic_loss(logits, smoothed_mix, mask) + 0.06, rtol=1e-6)
    with pytest.raises(ValueError, match="model_params"):
      model.loss_function(logits, {"label": labels})
  finally:
    with model.config.unlocked():
      model.config.label_smoothing, model.config.l2_decay_factor = None, None


def test_metrics_names_and_normalisers(model):
  logits, labels, mask = _batch(2, b=8)
  ours = model.get_metrics_fn_jit("validation")(logits, {"label": labels, "batch_mask": mask})
  theirs = _scenic_metrics(logits, jax.nn.one_hot(labels, K), mask)
  assert set(ours) == {"accuracy", "loss", "top_5_accuracy"}
  for name in ("accuracy", "loss"):
    np.testing.assert_allclose(np.asarray(ours[name], np.float64), np.asarray(theirs[name], np.float64), rtol=1e-6)
  top5 = np.argsort(-np.asarray(logits), axis=-1)[:, :5]
  expected = sum(int(labels[i]) in top5[i] for i in range(6))
  assert float(ours["top_5_accuracy"][0]) == expected and float(ours["top_5_accuracy"][1]) == 6.0
  assert float(ours["top_5_accuracy"][0]) >= float(ours["accuracy"][0])


def test_pmap_metrics_are_psummed_over_devices(model):
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 devices (tests/conftest.py forces 4 CPU devices)")
  logits, labels, mask = _batch(3, b=8)
  batch = {"label": labels, "batch_mask": mask}
  sharded = jax.tree.map(lambda x: x.reshape((2, 4) + x.shape[1:]), (logits, batch))
  ours = jax.pmap(model.get_metrics_fn("train"), axis_name="batch", devices=jax.devices()[:2])(*sharded)
  whole = model.get_metrics_fn_jit("train")(logits, batch)
  for name in whole:
    for i in range(2):  # value and normaliser, identical on both devices
      np.testing.assert_allclose(np.asarray(ours[name][i]), [whole[name][i]] * 2, rtol=1e-6)


def test_head_class_count_and_export(model):
  x = jnp.zeros((2, 32, 32, 3))
  variables = model.flax_model.init(jax.random.PRNGKey(0), x)
  assert ClassificationModel.num_classes_from_params(variables["params"], model.config) == K
  assert set(variables["params"]) == {"backbone", "norm", "output_projection"}
  out = model.export_fn()(variables, x)
  assert out["logits"].shape == (2, K) and out["logits"].dtype == jnp.float32
  with pytest.raises(ValueError, match="output_projection"):
    ClassificationModel.num_classes_from_params({"backbone": {}}, model.config)


def test_drop_path_defaults_to_the_variants_own():
  config = ClassificationModel(None, {"num_classes": K}).config
  with config.unlocked():
    config.model.backbone = ml_collections.ConfigDict(dict(name="crossformer_b", overrides={},
                                                           drop_path_rate=None))
  import backbones  # pylint: disable=import-outside-toplevel
  built = ClassificationModel(config, {"num_classes": K}).flax_model
  variant = backbones.create_model("crossformer_b", features_only=False)
  assert built.classifier.backbone.drop_path_rate == variant.backbone.drop_path_rate == 0.3


@pytest.mark.slow
def test_scenics_train_step_trains_our_model_by_model_name():
  """``model_name`` -> our class -> Scenic's pmap classification train step (two devices, soft labels from a
  mixed batch, fillers masked); its metrics equal Scenic's formulas and the loss falls."""
  if jax.local_device_count() < 2:
    pytest.skip("needs 2 devices (tests/conftest.py forces 4 CPU devices)")
  from test_scenic_contract import _scenic_train_step  # pylint: disable=import-outside-toplevel
  config = ClassificationModel(None, {"num_classes": K}).config
  with config.unlocked():
    config.model_name = "crossformer_classification"
    config.label_smoothing = 0.1
    config.optimizer, config.optimizer_configs = "adamw", dict(weight_decay=0.05)
  model = registry.get_model_cls(config.model_name)(config, {"num_classes": K})
  tx = optim.create_optimizer(config, lambda step: 3e-3)
  devices = jax.devices()[:2]
  variables = model.flax_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 32, 32, 3)), train=False)
  params = variables.pop("params")
  state = (params, dict(variables), tx.init(params), jax.random.PRNGKey(1))
  state = jax.tree.map(lambda x: np.stack([np.asarray(x)] * 2), state)
  step = jax.pmap(functools.partial(_scenic_train_step, flax_model=model.flax_model, loss_fn=model.loss_function,
                                    metrics_fn=model.get_metrics_fn("train"), tx=tx), axis_name="batch",
                  devices=devices)
  rng = np.random.default_rng(0)
  labels = rng.integers(0, K, size=8)
  one_hot = np.eye(K, dtype=np.float32)[labels]
  inputs = rng.normal(size=(8, 32, 32, 3)).astype(np.float32) + labels[:, None, None, None] * 0.3
  batch = {"inputs": inputs, "label": 0.8 * one_hot + 0.2 * one_hot[::-1],
           "batch_mask": (np.arange(8) != 7).astype(np.float32)}
  batch = jax.tree.map(lambda x: jnp.asarray(x).reshape((2, 4) + x.shape[1:]), batch)
  losses = []
  for _ in range(4):
    state, metrics, logits = step(state, batch)
    for d in range(2):
      theirs = _scenic_metrics(logits.reshape(8, K), batch["label"].reshape(8, K), batch["batch_mask"].reshape(8))
      for name in ("accuracy", "loss"):
        np.testing.assert_allclose(metrics[name][0][d], theirs[name][0], rtol=1e-5)
        np.testing.assert_allclose(metrics[name][1][d], theirs[name][1], rtol=1e-6)
    losses.append(float(metrics["loss"][0][0]) / float(metrics["loss"][1][0]))
  assert losses[-1] < losses[0], losses


@pytest.mark.parametrize("variant,keys", [("crossformer_t", "keys_crossformer_t_cls.json"),
                                          ("crossformer_s", "keys_crossformer_s_cls.json"),
                                          ("crossformerpp_s", "keys_crossformer_pp_s_cls.json")])
def test_every_key_of_a_released_classifier_maps_onto_the_full_size_model(official_fixtures_dir, variant, keys):
  """The released ImageNet checkpoint's keys and shapes (zeros; fixtures in ../shared) against our model of the
  variant, shapes only: every parameter is covered, only the DPB buffers are dropped, the counts agree."""
  import json  # pylint: disable=import-outside-toplevel
  from projects.common import model_io  # pylint: disable=import-outside-toplevel
  meta = json.loads((official_fixtures_dir / keys).read_text())
  state_dict = {"model": {k["key"]: np.zeros(k["shape"], k["dtype"]) for k in meta["keys"]}}
  config = ClassificationModel(None, {"num_classes": 1000}).config
  with config.unlocked():
    config.model.backbone = ml_collections.ConfigDict(dict(name=variant, overrides={}, drop_path_rate=None))
  model = ClassificationModel(config, {"num_classes": 1000})
  variables, report = ClassificationModel.convert_official(state_dict, model_io.variable_shapes(model))
  assert report.ok, report.problems()
  assert all(k.rsplit(".", 1)[-1] in ("biases", "relative_position_index", "attn_mask") for k in report.dropped)
  assert sum(int(np.size(v)) for v in jax.tree.leaves(variables)) == meta["num_params"]
