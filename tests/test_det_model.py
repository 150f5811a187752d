"""Tests of the RetinaNet network and its Scenic-style model wrapper (``projects/detection/retinanet.py``)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from projects.detection.retinanet import RetinaNetModel

NUM_CLASSES = 3


class StridedBackbone(nn.Module):
  """A stand-in backbone with the CrossFormer output contract: stages at strides 4, 8, 16, 32."""

  @nn.compact
  def __call__(self, x, train=False):
    out = {}
    for i, channels in enumerate((8, 16, 24, 32)):
      x = nn.relu(nn.Conv(channels, (3, 3), strides=(4 if i == 0 else 2,) * 2, name=f"conv_{i}")(x))
      out[f"stage_{i + 1}"] = x
    return out


def make_model():
  return RetinaNetModel(None, {"num_classes": NUM_CLASSES}, backbone=StridedBackbone())


def synthetic_batch(height=64, width=96):
  rng = np.random.default_rng(0)
  boxes = np.zeros((2, 4, 4), np.float32)
  labels = np.full((2, 4), -1, np.int32)
  boxes[0, :3] = [[8, 6, 40, 30], [44, 20, 90, 60], [2, 34, 20, 60]]
  labels[0, :3] = [0, 2, 1]
  boxes[1, :2] = [[10, 10, 50, 40], [60, 5, 80, 50]]
  labels[1, :2] = [1, 0]
  return {
      "inputs": rng.normal(size=(2, height, width, 3)).astype(np.float32),
      "batch_mask": np.ones((2,), np.float32),
      "label": {"boxes": boxes, "labels": labels, "image/id": np.array([1, 2], np.int64),
                "image_size": np.array([[64, 96], [60, 72]], np.int32),
                "orig_size": np.array([[128, 192], [120, 144]], np.int32),
                "scale": np.full((2, 2), 0.5, np.float32)},
  }


@pytest.fixture(scope="module")
def model_and_variables():
  model = make_model()
  variables = jax.jit(model.flax_model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 96, 3)))
  return model, variables


def test_outputs_follow_the_pyramid_and_anchors(model_and_variables):
  model, variables = model_and_variables
  assert set(variables["params"]) == {"backbone", "neck", "bbox_head"}
  outputs = model.flax_model.apply(variables, jnp.zeros((2, 64, 96, 3)))
  # P3..P7 of a 64 x 96 input: ceil(64 / s) x ceil(96 / s).
  sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
  assert [a.shape for a in outputs["anchors"]] == [(h, w, 9, 4) for h, w in sizes]
  assert [c.shape for c in outputs["cls_logits"]] == [(2, h * w * 9, NUM_CLASSES) for h, w in sizes]
  assert [d.shape for d in outputs["box_deltas"]] == [(2, h * w * 9, 4) for h, w in sizes]
  expected = model.anchor_generator.grid_anchors(sizes)
  for got, want in zip(outputs["anchors"], expected):
    np.testing.assert_array_equal(got.reshape(-1, 4), want)
  # Any input size: the anchors follow the maps the convs produce (here ceil(input / stride)).
  odd = jax.eval_shape(model.flax_model.apply, variables, jnp.zeros((1, 70, 100, 3)))
  strides = model.anchor_generator.strides
  assert [a.shape[:2] for a in odd["anchors"]] == [(-(-70 // s), -(-100 // s)) for s in strides]
  assert [c.shape[1] for c in odd["cls_logits"]] == [a.shape[0] * a.shape[1] * 9 for a in odd["anchors"]]


def test_loss_respects_batch_mask_and_padding(model_and_variables):
  model, variables = model_and_variables
  batch = synthetic_batch()
  outputs = model.flax_model.apply(variables, jnp.asarray(batch["inputs"]))
  loss_fn = jax.jit(model.loss_function)
  loss, metrics = loss_fn(outputs, batch)
  assert np.isfinite(float(loss))
  total, avg_factor = metrics["loss"]
  np.testing.assert_allclose(float(loss), float(total) / float(avg_factor), rtol=1e-6)
  num_pos, images = metrics["num_pos"]
  assert float(images) == 2 and float(num_pos) >= 5  # every ground truth gets at least one anchor
  np.testing.assert_allclose(float(avg_factor), float(num_pos))
  # With the second example marked as filler its targets and predictions no longer matter.
  masked = synthetic_batch()
  masked["batch_mask"][1] = 0.0
  masked["label"]["boxes"][1] = 7.0
  loss_masked, metrics_masked = loss_fn(outputs, masked)
  assert float(metrics_masked["num_pos"][1]) == 1
  assert float(loss_masked) != pytest.approx(float(loss))
  first = {"cls_logits": tuple(c[:1] for c in outputs["cls_logits"]),
           "box_deltas": tuple(d[:1] for d in outputs["box_deltas"]), "anchors": outputs["anchors"]}
  loss_single, _ = loss_fn(first, jax.tree.map(lambda x: x[:1], synthetic_batch()))
  np.testing.assert_allclose(float(loss_masked), float(loss_single), rtol=1e-5)


def test_loss_decreases_on_a_synthetic_batch():
  model = make_model()
  batch = synthetic_batch()
  params = jax.jit(model.flax_model.init)(jax.random.PRNGKey(1), jnp.zeros((1, 64, 96, 3)))["params"]
  tx = optax.adam(3e-4)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state):
    def loss_fn(p):
      outputs = model.flax_model.apply({"params": p}, batch["inputs"], train=True)
      return model.loss_function(outputs, batch, p)
    (loss, metrics), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, metrics

  history = []
  for _ in range(10):
    params, opt_state, loss, metrics = step(params, opt_state)
    terms = [float(metrics[k][0]) / float(metrics[k][1]) for k in ("loss_cls", "loss_bbox")]
    np.testing.assert_allclose(sum(terms), float(loss), rtol=1e-5)
    history.append(terms)
  history = np.array(history)
  assert np.isfinite(history).all()
  assert (np.diff(history, axis=0) < 0).all(), history  # both terms fall at every step
  assert history[-1].sum() < 0.95 * history[0].sum(), history


def test_predict_returns_original_image_detections(model_and_variables):
  model, _ = model_and_variables
  sizes = [(8, 12), (4, 6), (2, 3), (1, 2), (1, 1)]
  anchors = model.anchor_generator.grid_anchors(sizes)
  cls = [jnp.full((2, a.shape[0], NUM_CLASSES), -10.0) for a in anchors]
  deltas = [jnp.zeros((2, a.shape[0], 4)) for a in anchors]
  # Image 0: two confident anchors on P3 (the second overlaps the first: suppressed only in its class).
  index = (3 * 12 + 5) * 9 + 4  # row 3, column 5, ratio 1, scale 2^(1/3)
  cls[0] = cls[0].at[0, index, 2].set(3.0).at[0, index + 1, 2].set(2.0).at[0, index + 1, 0].set(1.0)
  cls[1] = cls[1].at[1, 10, 1].set(0.0)  # image 1: one detection with score 0.5
  outputs = {"cls_logits": tuple(cls), "box_deltas": tuple(deltas),
             "anchors": tuple(a.reshape(h, w, 9, 4) for a, (h, w) in zip(anchors, sizes))}
  batch = synthetic_batch()
  batch["label"]["scale"] = np.array([[0.5, 0.25], [1.0, 1.0]], np.float32)
  dets = jax.jit(model.predict)(outputs, batch)
  assert dets["boxes"].shape == (2, 100, 4) and dets["labels"].shape == (2, 100)
  np.testing.assert_array_equal(dets["valid"].sum(axis=1), [2, 1])
  np.testing.assert_array_equal(dets["labels"][0, :3], [2, 0, -1])
  np.testing.assert_allclose(dets["scores"][0, :2], jax.nn.sigmoid(jnp.array([3.0, 1.0])), rtol=1e-6)
  # Anchor centred at (40, 24), 40.3 px wide, clipped to the 64 x 96 image, then divided by (w 0.25, h 0.5).
  half = 8 * 4 * 2 ** (1 / 3) / 2
  expected = np.array([40 - half, 24 - half, 40 + half, 24 + half]) / np.array([0.25, 0.5, 0.25, 0.5])
  np.testing.assert_allclose(dets["boxes"][0, 0], expected, rtol=1e-5)
  assert float(dets["scores"][0, 2]) == 0.0 and not bool(dets["valid"][0, 2])
  box = np.asarray(anchors[1][10])  # P4 anchor of image 1, clipped to its 60 x 72 image
  np.testing.assert_allclose(dets["boxes"][1, 0], np.clip(box, 0, [72, 60, 72, 60]), rtol=1e-5)
  # A filler example yields no detections.
  batch["batch_mask"][1] = 0.0
  np.testing.assert_array_equal(jax.jit(model.predict)(outputs, batch)["valid"].sum(axis=1), [2, 0])


def test_default_config_builds_crossformer_retinanet():
  """The default (tiny CrossFormer-S layout) model wires backbone -> FPN -> head; shapes only, no compile."""
  model = RetinaNetModel(None, {"num_classes": NUM_CLASSES})
  variables = jax.eval_shape(model.flax_model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 96, 3)))
  params = variables["params"]
  assert set(params) == {"backbone", "neck", "bbox_head"}
  # start_level 1: laterals for stages 2-4 (widths 32, 64, 128 at embed_dim 16), P6 from stage 4's input.
  assert [params["neck"][f"lateral_convs_{i}"]["conv"]["kernel"].shape[2] for i in range(3)] == [32, 64, 128]
  assert params["neck"]["fpn_convs_3"]["conv"]["kernel"].shape == (3, 3, 128, 32)
  assert params["bbox_head"]["retina_cls"]["kernel"].shape == (3, 3, 32, 9 * NUM_CLASSES)
  outputs = jax.eval_shape(model.flax_model.apply, variables, jnp.zeros((2, 96, 128, 3)))
  assert [a.shape[:2] for a in outputs["anchors"]] == [(12, 16), (6, 8), (3, 4), (2, 2), (1, 1)]
