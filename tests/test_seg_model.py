"""Tests of the segmentation network, its Scenic-style model (loss, metrics, mIoU) and test-time inference."""

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from projects.segmentation import inference
from projects.segmentation.models.encoder_decoder import (SegmentationModel, SegmentationNet, confusion_matrix,
                                         segmentation_loss, segmentation_metrics_from_confusion)

KEY = jax.random.PRNGKey(0)
META = {"num_classes": 3, "class_names": ["wall", "sky", "tree"]}


class ToyBackbone(nn.Module):
  """Stand-in backbone: strided convs returning the CrossFormer stage dict (strides 4..32)."""
  dims = (8, 16, 32, 64)

  @nn.compact
  def __call__(self, x, train=False):
    features = {}
    for i, dim in enumerate(self.dims):
      k = 4 if i == 0 else 2
      x = nn.Conv(dim, (k, k), strides=(k, k), padding="VALID", dtype=x.dtype)(x)
      features[f"stage_{i + 1}"] = x
    return features


def tiny_config(head="upernet", aux=True):
  config = SegmentationModel(None, META, backbone=ToyBackbone()).config
  config.model.decode_head.type = head
  if head == "semantic_fpn":
    config.model.neck = ml_collections.ConfigDict(dict(out_channels=16, num_outs=4))
  if not aux:
    config.model.auxiliary_head = None
  return config


# ----------------------------------------------------------------------------------------------- loss
def log_softmax(row):
  m = max(row)
  return [v - m - math.log(sum(math.exp(u - m) for u in row)) for v in row]


LOGITS = np.array([[[[2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]],
                   [[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]]], np.float32)  # (2, 1, 3, 3)
LABELS = np.array([[[0, 2, -1]], [[1, 1, 1]]], np.int32)  # (2, 1, 3)


def test_loss_hand_computed_with_ignore_and_batch_mask():
  # Example 0: pixels 0 (label 0) and 1 (label 2) count, pixel 2 is ignored; example 1 is filler.
  ce_0 = -log_softmax([2.0, 0.0, 0.0])[0]  # = log(1 + 2 e^-2)
  ce_1 = -log_softmax([0.0, 1.0, 0.0])[2]  # = log(2 + e)
  assert math.isclose(ce_0, math.log(1 + 2 * math.exp(-2)))
  batch_mask = np.array([1.0, 0.0], np.float32)
  loss = segmentation_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(batch_mask))
  np.testing.assert_allclose(loss, (ce_0 + ce_1) / 2, rtol=1e-6)
  # mmseg 0.x default (avg_non_ignore=False): divided by all 3 pixels of the real example.
  loss_all = segmentation_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS), jnp.asarray(batch_mask), False)
  np.testing.assert_allclose(loss_all, (ce_0 + ce_1) / 3, rtol=1e-6)
  # Without a batch mask example 1 adds its 3 pixels (label 1 each).
  ce_row = [-log_softmax(list(LOGITS[1, 0, j]))[1] for j in range(3)]
  np.testing.assert_allclose(segmentation_loss(jnp.asarray(LOGITS), jnp.asarray(LABELS)),
                             (ce_0 + ce_1 + sum(ce_row)) / 5, rtol=1e-6)


def test_model_loss_adds_weighted_aux_and_optional_l2():
  model = SegmentationModel(tiny_config(), META, backbone=ToyBackbone())
  batch = {"label": jnp.asarray(LABELS), "batch_mask": jnp.asarray([1.0, 0.0])}
  aux_logits = jnp.zeros_like(LOGITS)  # CE = log 3 on every pixel
  main = segmentation_loss(jnp.asarray(LOGITS), batch["label"], batch["batch_mask"])
  np.testing.assert_allclose(model.loss_function({"logits": jnp.asarray(LOGITS)}, batch), main, rtol=1e-6)
  total = model.loss_function({"logits": jnp.asarray(LOGITS), "aux_logits": aux_logits}, batch)
  np.testing.assert_allclose(total, main + 0.4 * math.log(3), rtol=1e-6)

  model.config.model.auxiliary_head.loss_weight = 1.0
  model.config.l2_decay_factor = 0.1
  params = {"a": jnp.asarray([1.0, 2.0]), "b": {"c": jnp.asarray([[3.0]])}}
  total = model.loss_function({"logits": jnp.asarray(LOGITS), "aux_logits": aux_logits}, batch, params)
  # Scenic's L2 counts only params with ndim > 1 (here 3^2); the documented switch counts all (14).
  np.testing.assert_allclose(total, main + math.log(3) + 0.5 * 0.1 * 9, rtol=1e-6)
  model.config.l2_on_all_params = True
  total = model.loss_function({"logits": jnp.asarray(LOGITS), "aux_logits": aux_logits}, batch, params)
  np.testing.assert_allclose(total, main + math.log(3) + 0.5 * 0.1 * 14, rtol=1e-6)
  with pytest.raises(ValueError, match="model_params"):
    model.loss_function({"logits": jnp.asarray(LOGITS)}, batch)


def test_metrics_fn_sums_and_counts():
  model = SegmentationModel(tiny_config(), META, backbone=ToyBackbone())
  batch = {"label": jnp.asarray(LABELS), "batch_mask": jnp.asarray([1.0, 1.0])}
  metrics = model.get_metrics_fn_jit("validation")({"logits": jnp.asarray(LOGITS)}, batch)
  assert set(metrics) == {"loss", "accuracy"}
  # Valid pixels: (0, label 0, pred 0), (0, label 2, pred 1), (1, label 1) x 3 with preds 0, 1, 2.
  loss_mean, one = metrics["loss"]  # Scenic: (batch mean, 1)
  assert float(one) == 1
  np.testing.assert_allclose(loss_mean, segmentation_loss(jnp.asarray(LOGITS), batch["label"]), rtol=1e-6)
  np.testing.assert_allclose(metrics["accuracy"], (2.0, 5.0))


# ----------------------------------------------------------------------------------------------- mIoU
def test_confusion_matrix_hand_computed():
  logits = jax.nn.one_hot(jnp.asarray([[[0, 1, 1, 2]], [[0, 0, 2, 2]]]), 4)  # predictions (2, 1, 4)
  labels = jnp.asarray([[[0, 1, 0, -1]], [[0, 2, 2, 1]]])
  cm = confusion_matrix(logits, labels, 4, jnp.asarray([1.0, 1.0]))
  expected = np.zeros((4, 4), np.int32)
  for gt, pred in [(0, 0), (1, 1), (0, 1), (0, 0), (2, 0), (2, 2), (1, 2)]:
    expected[gt, pred] += 1
  np.testing.assert_array_equal(cm, expected)
  assert cm.dtype == jnp.int32
  cm_masked = confusion_matrix(logits, labels, 4, jnp.asarray([1.0, 0.0]))
  assert int(cm_masked.sum()) == 3  # second example is filler


def test_global_metrics_hand_computed_with_absent_class():
  # 4 classes; class 3 never appears (IoU NaN, excluded); class 2 is predicted but absent from the GT.
  cm = np.array([[3, 1, 0, 0],
                 [1, 2, 1, 0],
                 [0, 0, 0, 0],
                 [0, 0, 0, 0]])
  names = ["a", "b", "c", "d"]
  results = segmentation_metrics_from_confusion(cm, names)
  iou = [3 / (4 + 4 - 3), 2 / (4 + 3 - 2), 0 / (0 + 1 - 0)]
  np.testing.assert_allclose([results["IoU/a"], results["IoU/b"], results["IoU/c"]], iou)
  assert math.isnan(results["IoU/d"])
  np.testing.assert_allclose(results["mIoU"], sum(iou) / 3)
  np.testing.assert_allclose(results["mAcc"], (3 / 4 + 2 / 4) / 2)  # classes c, d: no GT -> NaN, excluded
  assert math.isnan(results["Acc/c"])
  np.testing.assert_allclose(results["aAcc"], 5 / 8)
  with pytest.raises(ValueError, match="class names"):
    segmentation_metrics_from_confusion(cm, names[:3])
  model = SegmentationModel(tiny_config(), dict(num_classes=4, class_names=names), backbone=ToyBackbone())
  assert model.global_metrics(cm)["IoU/b"] == results["IoU/b"]


# ----------------------------------------------------------------------------------------------- network
def test_segmentation_model_train_and_eval_outputs():
  config = tiny_config()
  config.model.decode_head.update(channels=8, pool_scales=(1, 3))
  config.model.auxiliary_head.channels = 8
  model = SegmentationModel(config, META, backbone=ToyBackbone())
  net = model.flax_model
  assert isinstance(net, SegmentationNet)
  images = jax.random.normal(KEY, (2, 64, 96, 3))
  # Random variables of the init structure (a jitted init would cost one more compile).
  shapes = jax.eval_shape(functools.partial(net.init, train=False), KEY, images)
  assert set(shapes["params"]) == {"backbone", "decode_head", "auxiliary_head"}
  rng = np.random.RandomState(0)
  variables = {"params": jax.tree.map(lambda x: jnp.asarray(0.1 * rng.randn(*x.shape), jnp.float32),
                                      shapes["params"]),
               "batch_stats": jax.tree.map(lambda x: jnp.ones(x.shape), shapes["batch_stats"])}
  labels = jnp.asarray(np.random.RandomState(0).randint(-1, 3, (2, 64, 96)), jnp.int32)
  batch = {"inputs": images, "label": labels, "batch_mask": jnp.asarray([1.0, 1.0])}

  @jax.jit
  def train_and_eval(variables, batch):
    outputs, updates = net.apply(variables, batch["inputs"], train=True, mutable=["batch_stats"],
                                 rngs={"dropout": KEY})
    loss, logits_grad = jax.value_and_grad(lambda o: model.loss_function(o, batch))(outputs)
    return loss, outputs, updates, logits_grad, net.apply(variables, batch["inputs"], train=False)

  loss, outputs, updates, logits_grad, eval_outputs = train_and_eval(variables, batch)
  assert outputs["logits"].shape == outputs["aux_logits"].shape == (2, 64, 96, 3)
  assert outputs["logits"].dtype == jnp.float32
  assert set(eval_outputs) == {"logits"} and eval_outputs["logits"].shape == (2, 64, 96, 3)
  expected = (segmentation_loss(outputs["logits"], labels) + 0.4 * segmentation_loss(outputs["aux_logits"], labels))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  assert set(updates["batch_stats"]) == {"decode_head", "auxiliary_head"}
  # Ignored pixels get no gradient; the aux gradient is 0.4 x what the same logits would get as main logits.
  ignored = np.asarray(labels) < 0
  assert np.all(np.asarray(logits_grad["logits"])[ignored] == 0)
  assert np.any(np.asarray(logits_grad["logits"])[~ignored] != 0)
  main_grad_of_aux = jax.grad(lambda l: segmentation_loss(l, labels))(outputs["aux_logits"])
  np.testing.assert_allclose(logits_grad["aux_logits"], 0.4 * main_grad_of_aux, atol=1e-9)


def test_semantic_fpn_config_and_bfloat16():
  config = tiny_config("semantic_fpn", aux=False)
  config.model.dtype = "bfloat16"
  net = SegmentationModel(config, META, backbone=ToyBackbone()).flax_model
  images = jnp.ones((1, 64, 96, 3))
  variables = jax.eval_shape(functools.partial(net.init, train=False), KEY, images)
  assert set(variables["params"]) == {"backbone", "neck", "decode_head"}
  assert variables["params"]["neck"]["lateral_convs_3"]["conv"]["kernel"].shape == (1, 1, 64, 16)
  outputs = jax.eval_shape(lambda v, x: net.apply(v, x, train=True, mutable=["batch_stats"],
                                                  rngs={"dropout": KEY})[0], variables, images)
  assert set(outputs) == {"logits"}
  assert outputs["logits"].shape == (1, 64, 96, 3) and outputs["logits"].dtype == jnp.float32


def test_config_errors():
  config = tiny_config()
  config.model.decode_head.type = "deeplab"
  with pytest.raises(ValueError, match="decode_head.type"):
    SegmentationModel(config, META, backbone=ToyBackbone())
  with pytest.raises(ValueError, match="num_classes"):
    SegmentationModel(tiny_config(), {}, backbone=ToyBackbone())


def test_default_config_builds_the_crossformer_backbone():
  backbones = pytest.importorskip("backbones")
  if not hasattr(backbones, "create_model"):
    pytest.skip("backbones.create_model is not available yet")
  net = SegmentationModel(None, META).flax_model
  variables = jax.eval_shape(functools.partial(net.init, train=False), KEY, jnp.ones((1, 64, 64, 3)))
  assert {"backbone", "decode_head", "auxiliary_head"} <= set(variables["params"])
  outputs = jax.eval_shape(lambda v, x: net.apply(v, x), variables, jnp.ones((1, 64, 64, 3)))
  assert outputs["logits"].shape == (1, 64, 64, 3)


# ----------------------------------------------------------------------------------------------- inference
W_POINTWISE = jnp.asarray(np.random.RandomState(1).randn(3, 4), jnp.float32)


def pointwise_apply(images):
  """A translation- (and flip-) equivariant toy network: a per-pixel linear map, size must be /32."""
  assert images.shape[1] % 32 == 0 and images.shape[2] % 32 == 0, images.shape
  return images @ W_POINTWISE


def test_slide_windows_match_mmseg_grid():
  assert inference.slide_windows((512, 683), (512, 512), (341, 341)) == ((0, 512, 0, 512), (0, 512, 171, 683))
  assert inference.slide_windows((300, 200), (512, 512), (341, 341)) == ((0, 300, 0, 200),)
  windows = inference.slide_windows((100, 150), (64, 64), (40, 40))
  assert len(windows) == 2 * 4 and windows[-1] == (36, 100, 86, 150)


@pytest.mark.parametrize("size,crop,stride", [((100, 150), (64, 64), (40, 40)), ((40, 50), (64, 64), (40, 40))])
def test_slide_equals_whole_for_equivariant_apply_fn(size, crop, stride):
  images = jax.random.normal(KEY, (2, *size, 3))
  whole = inference.whole_inference(pointwise_apply, images)
  slide = inference.slide_inference(pointwise_apply, images, crop, stride)
  assert whole.shape == slide.shape == (2, *size, 4)
  np.testing.assert_allclose(slide, whole, atol=1e-5)


def test_slide_averages_overlapping_windows():
  # An apply_fn that outputs a constant per window (its mean) shows the count normalisation.
  images = jnp.zeros((1, 64, 96, 1)).at[:, :, 64:].set(3.0)
  apply_fn = lambda x: jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape)
  out = np.asarray(inference.slide_inference(apply_fn, images, (64, 64), (32, 32)))[0, 0, :, 0]
  # Windows x in [0, 64) (mean 0) and [32, 96) (mean 1.5).
  np.testing.assert_allclose(out, [0.0] * 32 + [0.75] * 32 + [1.5] * 32)


def test_aug_inference_flip_and_multiscale():
  images = jax.random.normal(KEY, (2, 64, 96, 3))
  probs = inference.aug_inference(pointwise_apply, images, ratios=(0.5, 0.75, 1.0, 1.25), flip=True)
  assert probs.shape == (2, 64, 96, 4)
  np.testing.assert_allclose(jnp.sum(probs, axis=-1), 1.0, atol=1e-5)
  single = inference.aug_inference(pointwise_apply, images)
  np.testing.assert_allclose(single, jax.nn.softmax(pointwise_apply(images), axis=-1), atol=1e-6)
  slide = inference.aug_inference(pointwise_apply, images, mode="slide", crop_size=(32, 32), stride=(24, 24))
  np.testing.assert_allclose(slide, single, atol=1e-5)
  # Flip averaging of a position-dependent network: mean of f(x) and flip(f(flip(x))).
  ramp = jnp.linspace(-2.0, 2.0, 96)[None, None, :, None]
  biased = lambda x: pointwise_apply(x) + ramp * jnp.arange(4.0)
  flipped = inference.aug_inference(biased, images, flip=True)
  expected = 0.5 * (jax.nn.softmax(biased(images), -1) + jax.nn.softmax(biased(images[:, :, ::-1]), -1)[:, :, ::-1])
  np.testing.assert_allclose(flipped, expected, atol=1e-6)
  assert inference.scaled_size((512, 683), 0.75) == (384, 512)
  with pytest.raises(ValueError, match="mode"):
    inference.aug_inference(pointwise_apply, images, mode="tile")


def test_infer_valid_regions_ignores_bucket_padding():
  # An apply_fn that depends on the whole image (its mean) would see the padding if it were not cropped.
  apply_fn = lambda x: jnp.broadcast_to(jnp.mean(x, axis=(1, 2), keepdims=True), x.shape[:3] + (1,))
  images = np.zeros((3, 64, 96, 1), np.float32)
  images[0, :32, :64] = 1.0
  images[1, :64, :64] = 2.0
  images[2, :32, :64] = 3.0
  image_size = np.array([[32, 64], [64, 64], [32, 64]])
  calls = []
  infer_fn = lambda x: calls.append(x.shape) or inference.whole_inference(apply_fn, x)
  out = inference.infer_valid_regions(infer_fn, images, image_size)
  assert sorted(calls) == [(1, 64, 64, 1), (2, 32, 64, 1)]  # one call per distinct valid size
  np.testing.assert_allclose(out[:, 0, 0, 0], [1.0, 2.0, 3.0])
  assert out.shape == (3, 64, 96, 1) and np.all(out[0, 32:] == 0) and np.all(out[:, :, 64:] == 0)
  with pytest.raises(ValueError, match="image_size"):
    inference.infer_valid_regions(infer_fn, images, np.array([[32, 128]] * 3))
