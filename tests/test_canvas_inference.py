"""Canvas inference: images of different sizes run inside one padded canvas give, in their valid region, the
outputs of each image inferred alone (backbone v1 / main / ++, Semantic FPN, UPerNet, the predictor), and the
number of compiled programs is bounded by the canvas set."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones.crossformer.model import CrossFormerBackbone

CANVAS = (192, 192)
# Valid input sizes (sides 0..3 mod 32); with group sizes (7, 7, 5, 7) every stage's fallback decision is the
# canvas's (stage 4 falls back with G' = 3 here against 6 for the canvas: the traced-size path).
SIZES = ((97, 131), (160, 98))
TINY = dict(dims=(16, 32, 64, 128), depths=(2, 2, 2, 2), num_heads=(1, 2, 2, 4), group_sizes=(7, 7, 5, 7),
            intervals=(8, 4, 2, 1))
ATOL = 1e-4


def canvas_batch(sizes, canvas=CANVAS, seed=0):
  """Random images in a canvas whose padding is NOT zero (the network must ignore it)."""
  rng = np.random.default_rng(seed)
  return rng.normal(size=(len(sizes), *canvas, 3)).astype(np.float32), np.asarray(sizes, np.int32)


@pytest.mark.parametrize("variant", [dict(), dict(lda_mode="main"),
                                     dict(lda_mode="main", use_acl=True, depths=(1, 1, 4, 2))],
                         ids=["v1", "main", "pp_acl"])
def test_backbone_canvas_equals_per_image(variant):
  model = CrossFormerBackbone(**{**TINY, **variant})
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  images, sizes = canvas_batch(SIZES)
  assert all(model.canvas_fits(CANVAS, s) for s in SIZES)
  out = jax.jit(lambda v, x, s: model.apply(v, x, image_size=s))(variables, images, sizes)
  alone = jax.jit(model.apply)
  for i, (h, w) in enumerate(SIZES):
    ref = alone(variables, images[i:i + 1, :h, :w])
    for key, want in ref.items():
      rh, rw = want.shape[1:3]
      got = np.asarray(out[key][i])
      np.testing.assert_allclose(got[:rh, :rw], np.asarray(want[0]), atol=ATOL, rtol=0, err_msg=f"{(h, w)} {key}")
      assert not np.any(got[rh:]) and not np.any(got[:, rw:])  # zero outside the valid region


def test_backbone_canvas_refuses_an_image_whose_fallback_differs():
  model = CrossFormerBackbone(**TINY)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  # 160x66: stage 3 is 10x4, which falls back (4 <= 5) where the canvas's 12x12 does not.
  assert not model.canvas_fits(CANVAS, (160, 66)) and not model.canvas_fits(CANVAS, (224, 96))
  images, sizes = canvas_batch(((160, 66), (97, 131)))
  out = jax.jit(model.apply)(variables, images, image_size=sizes)["stage_1"]
  assert np.isnan(np.asarray(out[0])).all() and np.isfinite(np.asarray(out[1])).all()


def test_backbone_canvas_refuses_size_dependent_padding():
  model = CrossFormerBackbone(**TINY, lda_mode="main", pad_type=1)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  assert not model.canvas_fits(CANVAS, (97, 131)) and not model.canvas_fits(CANVAS, CANVAS)
  with pytest.raises(ValueError, match="pad_type=0"):
    images, sizes = canvas_batch(SIZES[:1])
    model.apply(variables, images, image_size=sizes)


def tiny_net(head):
  from heads.fpn import FPN  # pylint: disable=g-import-not-at-top
  from heads.segmentation import FPNHead, UPerHead  # pylint: disable=g-import-not-at-top
  from projects.segmentation.models.encoder_decoder import SegmentationNet  # pylint: disable=g-import-not-at-top
  backbone = CrossFormerBackbone(**TINY)
  if head == "semantic_fpn":
    return SegmentationNet(backbone=backbone, neck=FPN(out_channels=8, num_outs=4),
                           decode_head=FPNHead(num_classes=5, channels=8))
  return SegmentationNet(backbone=backbone, decode_head=UPerHead(num_classes=5, channels=8, pool_scales=(1, 2, 3, 6)))


def randomized_stats(variables, seed=1):
  """BatchNorm running statistics away from (0, 1), so that the test sees them."""
  rng = np.random.default_rng(seed)
  stats = jax.tree.map(lambda x: jnp.asarray(rng.uniform(0.5, 1.5, x.shape).astype(np.float32)),
                       variables["batch_stats"])
  return {**variables, "batch_stats": stats}


@pytest.mark.parametrize("head", ["semantic_fpn", "upernet"])
def test_segmentation_net_canvas_equals_per_image(head):
  net = tiny_net(head)
  variables = randomized_stats(net.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  images, sizes = canvas_batch(SIZES)
  out = np.asarray(jax.jit(lambda v, x, s: net.apply(v, x, image_size=s))(variables, images, sizes)["logits"])
  alone = jax.jit(lambda v, x: net.apply(v, x)["logits"])
  for i, (h, w) in enumerate(SIZES):
    want = np.asarray(alone(variables, images[i:i + 1, :h, :w]))[0]
    np.testing.assert_allclose(out[i, :h, :w], want, atol=ATOL, rtol=0, err_msg=f"{head} {(h, w)}")
    assert not np.any(out[i, h:]) and not np.any(out[i, :, w:])


def tiny_segmenter(canvases, head="semantic_fpn", flip=False):
  from projects.segmentation import predictor  # pylint: disable=g-import-not-at-top
  from projects.segmentation.models.encoder_decoder import SegmentationModel  # pylint: disable=g-import-not-at-top
  model = SegmentationModel(None, dict(num_classes=5), backbone=CrossFormerBackbone(**TINY))
  config = model.config
  with config.unlocked():
    config.model.decode_head.update(type=head, channels=8)
    config.model.neck = dict(out_channels=8, num_outs=4) if head == "semantic_fpn" else None
    config.model.auxiliary_head = None
  model = SegmentationModel(config, dict(num_classes=5), backbone=CrossFormerBackbone(**TINY))
  variables = randomized_stats(model.flax_model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3))))
  test_time = predictor.TestTime(eval_scale=(256, 128), canvases=tuple(canvases), flip=flip)
  return predictor.Segmenter(model, variables, test_time)


def test_predictor_canvas_equals_per_view_inference():
  """Views of odd sizes (whole inference pads them to 32) through the predictor's canvas path give the
  per-view program's logits (also flipped) and the same class maps at the original size."""
  canvas_seg = tiny_segmenter([CANVAS], flip=True)
  assert canvas_seg.uses_canvases and canvas_seg.compile_canvases() == 1
  rng = np.random.default_rng(3)
  for h, w in ((97, 131), (160, 75)):
    view = rng.normal(size=(h, w, 3)).astype(np.float32)
    for flip in (False, True):
      size = canvas_seg.padded_size((h, w))
      assert size == (-(-h // 32) * 32, -(-w // 32) * 32) and canvas_seg.canvas_for(size) == CANVAS
      got = canvas_seg._canvas_logits(view, CANVAS, flip)  # pylint: disable=protected-access
      want = canvas_seg._logits_fn(canvas_seg.variables, jnp.asarray(view)[None], flip=flip)  # pylint: disable=protected-access
      got = np.asarray(got)[:h, :w]
      np.testing.assert_allclose(got[:, ::-1] if flip else got, np.asarray(want), atol=ATOL, rtol=0)
    labels = canvas_seg.predict_views([view], (2 * h + 1, w + 7))
    canvas_seg.test_time = dataclasses.replace(canvas_seg.test_time, canvases=())  # the per-size path
    want_labels = canvas_seg.predict_views([view], (2 * h + 1, w + 7))
    canvas_seg.test_time = dataclasses.replace(canvas_seg.test_time, canvases=(CANVAS,))
    assert labels.shape == (2 * h + 1, w + 7) and np.mean(labels != want_labels) < 1e-3


def test_programs_are_bounded_by_the_canvas_set():
  """8 views of 4 sizes compile 2 network programs (one per canvas), ahead of time; a second pass over the
  same sizes compiles nothing."""
  canvases = ((128, 128), (192, 192))
  seg = tiny_segmenter(canvases)
  assert seg.compile_canvases() == 2
  sizes = ((97, 131), (160, 75), (128, 100), (110, 96)) * 2
  assert [seg.canvas_for((-(-h // 32) * 32, -(-w // 32) * 32)) for h, w in sizes[:4]] == [
      (192, 192), (192, 192), (128, 128), (128, 128)]
  rng = np.random.default_rng(0)
  views = [rng.normal(size=(h, w, 3)).astype(np.float32) for h, w in sizes]
  for view in views[:4]:
    seg.predict_views([view], view.shape[:2])
  compiles = []
  jax.monitoring.register_event_duration_secs_listener(
      lambda event, duration, **kw: compiles.append(event) if event.endswith("backend_compile_duration") else None)
  for view in views[4:]:
    seg.predict_views([view], view.shape[:2])
  counts = seg.program_counts()
  assert counts["network"] == counts["canvases"] == len(canvases) and counts["per_size"] == 0
  assert not compiles and counts["compile_seconds"] > 0


def test_choose_canvases_covers_every_size_with_few_programs():
  from projects.segmentation import canvases as canvases_lib  # pylint: disable=g-import-not-at-top
  model = CrossFormerBackbone(**TINY)
  counts = {(128, 160): 3, (160, 96): 2, (128, 128): 4, (192, 192): 1, (96, 192): 2}
  chosen = canvases_lib.choose_canvases(counts, model.canvas_fits, max_canvases=3, min_gain=0.1)
  assert 1 <= len(chosen) <= 3
  for size in counts:  # every size has an exact canvas, and no canvas is larger than its views need
    assert any(model.canvas_fits(c, size) for c in chosen), size
  assert max(c[0] for c in chosen) <= 192 and max(c[1] for c in chosen) <= 192
  report = canvases_lib.describe(counts, chosen, model.canvas_fits)
  assert "12 views of 5 sizes" in report and repr(tuple(chosen)) in report


def test_feature_extraction_in_a_canvas_equals_per_image():
  from backbones import extract_features  # pylint: disable=g-import-not-at-top
  model = CrossFormerBackbone(**TINY)
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  image = np.random.default_rng(0).uniform(0, 255, (97, 131, 3)).astype(np.float32)
  want = extract_features.feature_fn(model, variables)(image)
  got = extract_features.feature_fn(model, variables, canvases=[CANVAS])(image)
  for key, value in want.items():
    assert got[key].shape == value.shape
    np.testing.assert_allclose(got[key], value, atol=ATOL, rtol=0)


def test_views_of_different_canvases_add_up_as_the_per_size_path():
  """Multi-scale + flip: views of one image that fall in different canvases are summed in the output frame
  (a view's canvas used to shadow the output's, and the sum failed)."""
  seg = tiny_segmenter(((128, 128), (192, 192)), flip=True)
  rng = np.random.default_rng(5)
  views = [rng.normal(size=(97, 131, 3)).astype(np.float32), rng.normal(size=(110, 96, 3)).astype(np.float32)]
  labels = seg.predict_views(views, (120, 150))
  seg.test_time = dataclasses.replace(seg.test_time, canvases=())  # the per-size path
  want = seg.predict_views(views, (120, 150))
  assert labels.shape == (120, 150) and np.mean(labels != want) < 1e-3
