"""Tests of the detection building blocks (``heads/detection``) against mmdet 2.x formulas worked by hand."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads.detection import box_utils, losses
from heads.detection.anchors import AnchorGenerator, anchor_inside_flags, padded_image_shape
from heads.detection.assigner import MaxIoUAssigner
from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.nms import batched_nms
from heads.detection.proposals import ProposalConfig
from heads.detection.retinanet_head import RetinaHead
from heads.detection.retinanet_postprocess import TestConfig
from heads.detection.versions import DEFAULT_VERSION, VERSIONS


def random_boxes(rng: np.random.Generator, n: int, size: float = 100.0) -> np.ndarray:
  xy = rng.uniform(0, size, (n, 2))
  wh = rng.uniform(2, size / 2, (n, 2))
  return np.concatenate([xy, xy + wh], axis=1).astype(np.float32)


# ---------------------------------------------------------------------------------------------- anchors


def test_retinanet_base_anchors_at_p3_match_mmdet_formula():
  gen = AnchorGenerator()
  assert gen.num_base_anchors == 9
  base = np.asarray(gen.base_anchors(0))
  assert base.shape == (9, 4)
  # Stride 8, octave_base_scale 4: sizes 32 * 2^(k/3); ratio-major order (0.5, 1, 2), h/w = ratio, centre 0.
  expected = []
  for ratio in (0.5, 1.0, 2.0):
    for k in range(3):
      size = 8 * 4 * 2 ** (k / 3)
      w, h = size / math.sqrt(ratio), size * math.sqrt(ratio)
      expected.append([-w / 2, -h / 2, w / 2, h / 2])
  np.testing.assert_allclose(base, expected, rtol=1e-6)
  # Worked by hand: ratio 1, scale 1 -> a 32 px square; ratio 0.5, scale 1 -> 45.25 x 22.63.
  np.testing.assert_allclose(base[3], [-16, -16, 16, 16])
  np.testing.assert_allclose(base[0], [-22.627417, -11.3137085, 22.627417, 11.3137085], rtol=1e-6)
  np.testing.assert_allclose(base[4], [-20.158737, -20.158737, 20.158737, 20.158737], rtol=1e-6)


def test_grid_anchors_any_size_location_major_order():
  gen = AnchorGenerator()
  sizes = [(13, 7), (7, 4), (4, 2), (2, 1), (1, 1)]  # e.g. ceil(100 / s) x ceil(50 / s)
  anchors = gen.grid_anchors(sizes)
  assert [a.shape for a in anchors] == [(h * w * 9, 4) for h, w in sizes]
  p3 = np.asarray(anchors[0]).reshape(13, 7, 9, 4)
  base = gen.base_anchors(0)
  # The anchor of cell (row 1, col 2) at stride 8 is the base anchor shifted by (x, y) = (16, 8).
  np.testing.assert_allclose(p3[1, 2], base + np.array([16, 8, 16, 8]), rtol=1e-6)
  centres = (p3[..., :2] + p3[..., 2:]) / 2
  np.testing.assert_allclose(centres[12, 6, 5], [6 * 8, 12 * 8], atol=1e-4)
  p7 = np.asarray(anchors[4])
  np.testing.assert_allclose(p7, gen.base_anchors(4), rtol=1e-6)
  with pytest.raises(ValueError, match="anchor levels"):
    gen.grid_anchors(sizes[:3])


def test_valid_flags_and_inside_flags():
  gen = AnchorGenerator(strides=(8, 16))
  sizes = [(8, 6), (4, 3)]
  pad = padded_image_shape(jnp.array([[50, 30]]), 32)  # mmdet pad_shape (64, 32)
  np.testing.assert_array_equal(pad, [[64, 32]])
  flags = gen.valid_flags(sizes, jnp.array([[50, 30]]))
  p3 = np.asarray(flags[0]).reshape(8, 6, 9)
  # ceil(50 / 8) = 7 rows and ceil(30 / 8) = 4 columns are valid.
  assert p3[:7, :4].all() and not p3[7:].any() and not p3[:, 4:].any()
  p4 = np.asarray(flags[1]).reshape(4, 3, 9)
  assert p4[:4, :2].all() and not p4[:, 2:].any()
  anchors = jnp.concatenate(gen.grid_anchors(sizes))
  valid = jnp.concatenate(flags, axis=-1)
  np.testing.assert_array_equal(anchor_inside_flags(anchors[None], valid, jnp.array([[50, 30]])), valid)
  inside = anchor_inside_flags(anchors[None], valid, jnp.array([[50, 30]]), allowed_border=0)
  a = np.asarray(anchors)
  expect = np.asarray(valid)[0] & (a[:, 0] >= 0) & (a[:, 1] >= 0) & (a[:, 2] < 30) & (a[:, 3] < 50)
  np.testing.assert_array_equal(np.asarray(inside)[0], expect)


# --------------------------------------------------------------------------------------------- box utils


def test_iou_hand_values_and_conversions():
  a = jnp.array([[0., 0., 2., 2.], [0., 0., 4., 2.]])
  b = jnp.array([[1., 1., 3., 3.], [2., 2., 3., 3.], [1., 0., 2., 2.]])
  iou, union = box_utils.box_iou(a, b)
  np.testing.assert_allclose(iou, [[1 / 7, 0.0, 0.5], [0.2, 0.0, 0.25]], rtol=1e-6)
  np.testing.assert_allclose(union, [[7, 5, 4], [10, 9, 8]])
  aligned, _ = box_utils.box_iou(a, b[:2], all_pairs=False)
  np.testing.assert_allclose(aligned, [1 / 7, 0.0], rtol=1e-6)
  np_iou, _ = box_utils.box_iou(np.asarray(a), np.asarray(b), np_backbone=np)
  np.testing.assert_allclose(np_iou, iou, rtol=1e-6)
  cxcywh = box_utils.box_xyxy_to_cxcywh(b)
  np.testing.assert_allclose(cxcywh[0], [2, 2, 2, 2])
  np.testing.assert_allclose(box_utils.box_cxcywh_to_xyxy(cxcywh), b)
  clipped = box_utils.clip_boxes(jnp.array([[[-5., 3., 120., 70.]]]), jnp.array([[60, 100]]))
  np.testing.assert_allclose(clipped, [[[0, 3, 100, 60]]])


def test_box_coder_known_value_and_round_trip():
  coder = DeltaXYWHBBoxCoder()
  deltas = coder.encode(jnp.array([[0., 0., 10., 10.]]), jnp.array([[5., 5., 25., 15.]]))
  np.testing.assert_allclose(deltas, [[1.0, 0.5, math.log(2.0), 0.0]], rtol=1e-6)
  rng = np.random.default_rng(0)
  anchors, gts = random_boxes(rng, 64), random_boxes(rng, 64)
  for c in (coder, DeltaXYWHBBoxCoder((0.1, -0.2, 0.0, 0.3), (0.1, 0.1, 0.2, 0.2))):
    np.testing.assert_allclose(c.decode(anchors, c.encode(anchors, gts)), gts, rtol=1e-5, atol=1e-3)


def test_box_coder_decode_clamps_ratio_and_clips_to_image():
  coder = DeltaXYWHBBoxCoder()
  anchor = jnp.array([[40., 40., 60., 60.]])
  huge = coder.decode(anchor, jnp.array([[0., 0., 10., 0.]]))
  np.testing.assert_allclose(huge[0, 2] - huge[0, 0], 20 * 1000 / 16, rtol=1e-5)  # exp(|log(16/1000)|)
  clipped = coder.decode(anchor, jnp.array([[0., 0., 2., 2.]]), max_shape=jnp.array([80, 70]))
  assert float(clipped[0, 0]) == 0.0 and float(clipped[0, 1]) == 0.0
  assert float(clipped[0, 2]) == 70.0 and float(clipped[0, 3]) == 80.0


# ---------------------------------------------------------------------------------------------- losses


def test_focal_loss_hand_values():
  logits = jnp.array([[0.0, 2.0, -1.0]])
  targets = jnp.array([[1.0, 1.0, 0.0]])
  loss = losses.sigmoid_focal_loss(logits, targets, gamma=2.0, alpha=0.25)
  p2, pm1 = 1 / (1 + math.exp(-2.0)), 1 / (1 + math.exp(1.0))
  expected = [0.25 * 0.5 ** 2 * math.log(2.0),  # p = 0.5, positive
              -0.25 * (1 - p2) ** 2 * math.log(p2),
              -0.75 * pm1 ** 2 * math.log(1 - pm1)]
  np.testing.assert_allclose(loss[0], expected, rtol=1e-5)
  assert np.isfinite(losses.sigmoid_focal_loss(jnp.array([[200.0, -200.0]]), jnp.array([[0.0, 1.0]]))).all()


def test_regression_losses_and_weighted_sum():
  pred, target = jnp.array([0.0, 0.05, 2.0]), jnp.array([0.0, 0.0, 0.5])
  np.testing.assert_allclose(losses.box_regression_loss(pred, target), [0.0, 0.05, 1.5], rtol=1e-6)
  beta = 1 / 9
  np.testing.assert_allclose(losses.box_regression_loss(pred, target, "smooth_l1", beta),
                             [0.0, 0.5 * 0.05 ** 2 / beta, 1.5 - 0.5 * beta], rtol=1e-5)
  with pytest.raises(ValueError, match="unknown box loss"):
    losses.box_regression_loss(pred, target, "giou")
  per_anchor = jnp.array([[1.0, 2.0], [jnp.inf, 4.0]])
  assert float(losses.weighted_sum(per_anchor, jnp.array([1.0, 0.0]))) == 3.0


# -------------------------------------------------------------------------------------------- assigner


def test_max_iou_assigner_crafted_case():
  gts = jnp.array([[0., 0., 10., 10.], [100., 100., 110., 110.], [0., 0., 10., 10.]])
  labels = jnp.array([3, 5, -1])  # the third row is padding, a copy of the first
  anchors = jnp.array([
      [0., 0., 10., 10.],      # IoU 1 with gt 0: positive
      [0., 0., 10., 20.],      # IoU 0.5: positive (>= pos_iou_thr)
      [0., 0., 10., 22.],      # IoU 0.4545: ignore band
      [0., 0., 10., 30.],      # IoU 0.333: negative
      [95., 95., 107., 107.],  # IoU 0.251 with gt 1, its best anchor: low-quality positive
      [200., 200., 210., 210.],  # no overlap: negative
      [100., 100., 109., 110.],  # IoU 0.9 with gt 1 but masked out (not a training anchor)
  ])
  mask = jnp.array([True] * 6 + [False])
  result = MaxIoUAssigner().assign(anchors, gts, labels, mask)
  np.testing.assert_array_equal(result.gt_inds[:6], [1, 1, -1, 0, 2, 0])
  np.testing.assert_array_equal(result.labels[:6], [3, 3, -1, -1, 5, -1])
  np.testing.assert_allclose(result.max_overlaps[:6], [1.0, 0.5, 100 / 220, 1 / 3, 49 / 195, 0.0], rtol=1e-5)
  # Without the mask anchor 6 is gt 1's best: positive, and anchor 4 falls back to negative.
  unmasked = MaxIoUAssigner().assign(anchors, gts, labels)
  np.testing.assert_array_equal(unmasked.gt_inds, [1, 1, -1, 0, 0, 0, 2])
  # Without low-quality matching anchor 4 is negative even with the mask.
  strict = MaxIoUAssigner(match_low_quality=False).assign(anchors, gts, labels, mask)
  np.testing.assert_array_equal(strict.gt_inds[:6], [1, 1, -1, 0, 0, 0])


def test_max_iou_assigner_ties_and_empty_ground_truth():
  anchors = jnp.array([[0., 0., 10., 10.], [50., 50., 60., 60.]])
  # Two real ground truths share their best anchor: the later one wins, as mmdet's sequential loop.
  tied = MaxIoUAssigner().assign(anchors, jnp.array([[0., 0., 10., 10.], [0., 0., 10., 10.]]),
                                 jnp.array([1, 2]))
  np.testing.assert_array_equal(tied.gt_inds, [2, 0])
  np.testing.assert_array_equal(tied.labels, [2, -1])
  empty = MaxIoUAssigner().assign(anchors, jnp.zeros((4, 4)), jnp.full((4,), -1))
  np.testing.assert_array_equal(empty.gt_inds, [0, 0])
  np.testing.assert_array_equal(empty.labels, [-1, -1])


# ------------------------------------------------------------------------------------------------- NMS


def greedy_nms_reference(boxes, scores, labels, thr):
  """Textbook greedy per-class NMS in numpy."""
  order = np.argsort(-scores, kind="stable")
  keep = []
  for i in order:
    ok = True
    for j in keep:
      if labels[i] != labels[j]:
        continue
      lt = np.maximum(boxes[i, :2], boxes[j, :2])
      rb = np.minimum(boxes[i, 2:], boxes[j, 2:])
      inter = np.prod(np.clip(rb - lt, 0, None))
      union = np.prod(boxes[i, 2:] - boxes[i, :2]) + np.prod(boxes[j, 2:] - boxes[j, :2]) - inter
      if inter / union > thr:
        ok = False
        break
    if ok:
      keep.append(i)
  return np.array(keep)


@pytest.mark.parametrize("max_outputs", [20, 150])
def test_batched_nms_matches_numpy_greedy(max_outputs):
  rng = np.random.default_rng(1)
  boxes = random_boxes(rng, 120, size=60.0)
  scores = rng.permutation(120).astype(np.float32) / 120  # distinct scores
  labels = rng.integers(0, 3, 120).astype(np.int32)
  mask = rng.uniform(size=120) > 0.1
  expected = greedy_nms_reference(boxes[mask], scores[mask], labels[mask], 0.5)
  expected = np.flatnonzero(mask)[expected][:max_outputs]
  result = jax.jit(batched_nms, static_argnums=(3, 4))(boxes, scores, labels, 0.5, max_outputs, mask)
  n = len(expected)
  assert 20 < len(greedy_nms_reference(boxes, scores, labels, 0.5)) < 120  # NMS actually suppresses
  np.testing.assert_array_equal(np.asarray(result.indices)[:n], expected)
  assert np.asarray(result.valid)[:n].all() and not np.asarray(result.valid)[n:].any()


# ------------------------------------------------------------------------------------------------ head


def test_retina_head_shapes_shared_weights_and_init():
  head = RetinaHead(num_classes=5, feat_channels=16, stacked_convs=2)
  feats = [jnp.ones((2, 6, 5, 8)), jnp.ones((2, 3, 3, 8))]
  variables = head.init(jax.random.PRNGKey(0), feats)
  cls, reg = head.apply(variables, feats)
  assert [c.shape for c in cls] == [(2, 6 * 5 * 9, 5), (2, 3 * 3 * 9, 5)]
  assert [r.shape for r in reg] == [(2, 6 * 5 * 9, 4), (2, 3 * 3 * 9, 4)]
  params = variables["params"]
  assert sorted(params) == ["cls_convs_0", "cls_convs_1", "reg_convs_0", "reg_convs_1", "retina_cls",
                            "retina_reg"]  # one set of weights for all levels
  np.testing.assert_allclose(params["retina_cls"]["bias"], -math.log(99.0), rtol=1e-6)
  assert abs(float(jnp.std(params["cls_convs_0"]["conv"]["kernel"])) - 0.01) < 0.002
  # A zero map gives exactly the prior probability everywhere.
  zero_cls, _ = head.apply(variables, [jnp.zeros((1, 2, 2, 8))])
  np.testing.assert_allclose(jax.nn.sigmoid(zero_cls[0]), 0.01, rtol=1e-5)


# ---------------------------------------------------------------------------------------------- versions


def test_post_processing_versions_share_one_default_and_reject_unknown_names():
  # RetinaNet's test_cfg and the Mask R-CNN RPN default to the same (official, mmdetection 2.8) selection.
  assert VERSIONS == ("mmdet2", "mmdet3") and DEFAULT_VERSION == "mmdet2"
  assert TestConfig().version == ProposalConfig().version == DEFAULT_VERSION
  with pytest.raises(ValueError, match=r"^test_cfg.version must be one of \('mmdet2', 'mmdet3'\), got 'mmdet4'$"):
    TestConfig(version="mmdet4")
  with pytest.raises(ValueError, match=r"^proposal version must be one of .*, got 'v3'$"):
    ProposalConfig(version="v3")
