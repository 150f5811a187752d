"""Mask R-CNN: mmdet parity on the fixture, official checkpoint layout, and focused unit tests."""

import json
from typing import Any, Dict, Mapping

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads import official
from heads.detection.mask_ops import mask_targets, paste_masks
from heads.detection.roi_align import roi_align, roi_align_dense, roi_levels
from heads.detection.sampler import SamplerConfig, random_sample
from tests.conftest import FixtureDir


def convert_official_mask_rcnn(state_dict: Mapping[str, Any], network: Any) -> Dict[str, Any]:
  """A whole official Mask R-CNN state dict (``backbone.*``, ``neck.*``, ``rpn_head.*``, ``roi_head.*``) converted
  with ``heads.official``'s key mapping for ``network`` (a ``MaskRCNN``), checked against the whole network
  (``bbox_head`` / ``mask_head`` included, which mmdet nests under ``roi_head``): raises ``ValueError`` naming
  what is unexpected, mis-shaped or missing."""
  expected = jax.eval_shape(network.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  variables, _ = official.convert_state_dict(state_dict, expected, prefixes=("backbone", "neck", "rpn_head",
                                                                               "roi_head"))
  ours = flax.traverse_util.flatten_dict(variables.get("params", {}))
  missing = ["/".join(p) for p in flax.traverse_util.flatten_dict(expected["params"]) if p not in ours]
  if missing:
    raise ValueError(f"the checkpoint does not fit the model: {len(missing)} parameters missing from it: "
                     + ", ".join(missing[:20]))
  return variables


def _fixture(name):
  """``heads/<name>``, bundled in tests/fixtures or from the shared folder; skips when neither has it."""
  return FixtureDir("heads") / name


@pytest.mark.slow
def test_parity_runner_passes_on_the_fixture():
  from projects.parity.__main__ import run_fixture  # pylint: disable=import-outside-toplevel
  from projects.parity.report import Report  # pylint: disable=import-outside-toplevel
  report = Report(echo=None)
  run_fixture(str(_fixture("mask_rcnn.npz")), report)
  failed = [line for line in report.lines if not line[2]]
  assert not failed, failed[:5]
  names = {line[0] for line in report.lines}
  for stage in ("neck/l1", "rpn_reg/l0", "proposals/img0/set", "proposals_mmdet2/img1/set", "rcnn/cls_score",
                "probe/roi_feats7", "det/img1/set", "det_mmdet2/img1/set", "mask/img0/masks", "loss/loss_mask",
                "end_to_end/det/img1/masks", "end_to_end/loss/loss_bbox"):
    assert any(n.endswith(stage) for n in names), stage
  assert len(report.lines) > 130


def test_official_checkpoint_converts_whole():
  from projects.detection.models.mask_rcnn import MaskRCNNModel  # pylint: disable=import-outside-toplevel
  layout = json.loads(_fixture("keys_mask_rcnn_crossformer_s.json").read_text())
  rng = np.random.default_rng(0)
  state_dict = {k["key"]: rng.standard_normal(k["shape"], np.float32) for k in layout["keys"]}
  model = MaskRCNNModel(None, {"num_classes": 80})
  cfg = model.config
  cfg.model.backbone.overrides = {}
  cfg.model.neck.out_channels = cfg.model.rpn_head.feat_channels = cfg.model.mask_head.conv_out_channels = 256
  cfg.model.bbox_head.fc_out_channels = 1024
  network = MaskRCNNModel(cfg, {"num_classes": 80}).flax_model
  params = convert_official_mask_rcnn(state_dict, network)["params"]
  assert sum(x.size for x in jax.tree.leaves(params)) == layout["num_params"] == 50_160_762
  key = "roi_head.mask_head.upsample.weight"
  np.testing.assert_array_equal(params["mask_head"]["upsample"]["kernel"][1, 0],
                                state_dict[key][:, :, 0, 1])  # flipped (see deconv_kernel)
  del state_dict["rpn_head.rpn_cls.bias"]
  with pytest.raises(ValueError, match="rpn_cls"):
    convert_official_mask_rcnn(state_dict, network)


def test_roi_align_hand_worked():
  # F[y, x] = x ** 2 + 10 y on a 4 x 5 map, stride 1.
  fmap = (np.arange(5, dtype=np.float32)[None, :] ** 2 + 10 * np.arange(4, dtype=np.float32)[:, None])
  feats = [jnp.asarray(fmap)[None, :, :, None]]
  boxes = jnp.asarray([
      [0.5, 1.5, 3.5, 2.5],   # x: start 0, size 3 -> 3 samples 0.5, 1.5, 2.5; y: one sample at 1.5
      [0.5, -0.5, 1.5, 0.5],  # y sample at -0.5: clamped to row 0
      [0.5, 5.6, 1.5, 6.6],   # y sample beyond the map: 0
      [2.0, 2.0, 2.0, 3.0],   # zero width: 0
  ], jnp.float32)
  out = roi_align(feats, boxes, jnp.zeros(4, jnp.int32), jnp.zeros(4, jnp.int32), (1,), 1, max_samples=4)
  expected = [(0.5 + 2.5 + 6.5) / 3 + 15.0, 0.5, 0.0, 0.0]
  np.testing.assert_allclose(np.asarray(out)[:, 0, 0, 0], expected, rtol=1e-6, atol=1e-6)
  dense = [float(roi_align_dense(jnp.asarray(fmap), b, 1)[0, 0]) for b in boxes[:2]]
  np.testing.assert_allclose(dense, expected[:2], rtol=1e-6)
  # Level mapping: scale 112 is level 1, just below is level 0, 448+ is the last.
  levels = roi_levels(jnp.asarray([[0, 0, 112, 112], [0, 0, 111.9, 112], [0, 0, 900, 900]], jnp.float32))
  assert levels.tolist() == [1, 0, 3]


def test_random_sampler_static_shapes_and_fraction():
  sample = jax.jit(lambda k, p, n: random_sample(k, p, n, SamplerConfig(num=256, pos_fraction=0.5)))
  idx = np.arange(6000)
  pos, neg = idx < 300, idx >= 1000
  result = jax.tree.map(np.asarray, sample(jax.random.PRNGKey(1), jnp.asarray(pos), jnp.asarray(neg)))
  assert result.indices.shape == (256,) and result.valid.all()
  assert result.is_pos.sum() == 128 and pos[result.indices[:128]].all() and neg[result.indices[128:]].all()
  assert (np.diff(result.indices[:128]) > 0).all() and (np.diff(result.indices[128:]) > 0).all()
  few = jax.tree.map(np.asarray, sample(jax.random.PRNGKey(2), jnp.asarray(idx < 10),
                                        jnp.asarray((idx >= 10) & (idx < 60))))
  assert few.is_pos.sum() == 10 and few.valid.sum() == 60 and set(few.indices[few.valid]) == set(range(60))
  other = sample(jax.random.PRNGKey(3), jnp.asarray(pos), jnp.asarray(neg))
  assert not np.array_equal(np.asarray(other.indices[128:]), result.indices[128:])


def test_paste_and_mask_targets():
  ones = jnp.ones((1, 28, 28))
  masks = np.asarray(paste_masks(ones, jnp.asarray([[2.0, 3.0, 10.0, 7.0]]), (12, 16)))
  expected = np.zeros((12, 16), np.uint8)
  expected[3:7, 2:10] = 1  # the pixels whose centres lie inside the box
  np.testing.assert_array_equal(masks[0], expected)
  cut = np.asarray(paste_masks(ones, jnp.asarray([[2.0, 3.0, 10.0, 7.0]]), (12, 16), jnp.asarray([5, 6])))
  assert cut[0].sum() == 2 * 4
  gt = np.zeros((2, 40, 40), np.uint8)
  gt[1, 10:30, 10:20] = 1
  targets = np.asarray(mask_targets(jnp.asarray(gt), jnp.asarray([[10.0, 10.0, 30.0, 30.0]]), jnp.asarray([1]),
                                    mask_size=4))
  np.testing.assert_array_equal(targets[0], np.repeat([[1, 1, 0, 0]], 4, axis=0))


class _ConvPyramid(nn.Module):
  """A 4-stage strided-conv stand-in for the backbone (strides 4..32): keeps the compile small."""

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(8, (4, 4), strides=(4, 4))(x)
    out = {}
    for i in range(4):
      if i:
        x = nn.Conv(8 * 2 ** i, (2, 2), strides=(2, 2))(x)
      out[f"stage_{i + 1}"] = x
    return out


@pytest.mark.slow
def test_tiny_model_trains_and_predicts():
  from projects.detection.models.mask_rcnn import MaskRCNNModel  # pylint: disable=import-outside-toplevel
  model = MaskRCNNModel(None, {"num_classes": 3})
  cfg = model.config
  cfg.model.neck.out_channels = cfg.model.rpn_head.feat_channels = cfg.model.mask_head.conv_out_channels = 16
  cfg.model.bbox_head.fc_out_channels = 32
  cfg.model.roi.update(max_samples=2, mask_max_samples=2)
  cfg.model.train_cfg.update(rpn_nms_pre=300, rpn_max_per_img=64, rcnn_num=32)
  cfg.model.test_cfg.update(rpn_nms_pre=300, rpn_max_per_img=64, max_per_img=8)
  model = MaskRCNNModel(cfg, {"num_classes": 3}, backbone=_ConvPyramid())
  masks = np.zeros((2, 2, 64, 64), np.uint8)
  masks[0, 0, 8:40, 10:30] = 1
  masks[1, 0, 20:60, 5:60] = 1
  masks[1, 1, 0:16, 40:64] = 1
  batch = {
      "inputs": np.random.default_rng(0).normal(size=(2, 64, 64, 3)).astype(np.float32),
      "batch_mask": np.ones(2, np.float32),
      "label": {"boxes": np.array([[[10, 8, 30, 40], [0, 0, 0, 0]], [[5, 20, 60, 60], [40, 0, 64, 16]]],
                                  np.float32),
                "labels": np.array([[1, -1], [0, 2]], np.int32), "masks": masks,
                "image_size": np.array([[64, 64], [60, 64]], np.int32),
                "orig_size": np.array([[128, 128], [120, 128]], np.int32),
                "scale": np.full((2, 2), 0.5, np.float32)},
  }
  net = model.flax_model
  # Random parameters of the right shapes (tracing only: no eager or compiled run of the inference path).
  shapes = jax.eval_shape(net.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  leaves, tree = jax.tree.flatten(shapes)
  keys = jax.random.split(jax.random.PRNGKey(0), len(leaves))
  variables = jax.tree.unflatten(tree, [0.1 * jax.random.normal(k, x.shape) for k, x in zip(keys, leaves)])

  @jax.jit
  def train(params, batch):
    def loss_fn(p):
      outputs = net.apply({"params": p}, batch["inputs"], train=True, rngs={"dropout": jax.random.PRNGKey(1)},
                          **model.apply_kwargs(batch, train=True))
      return model.loss_function(outputs, batch, p)
    return jax.value_and_grad(loss_fn, has_aux=True)(params)

  (loss, metrics), grads = train(variables["params"], batch)
  assert np.isfinite(float(loss))
  for name in ("loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask"):
    assert np.isfinite(float(metrics[name][0])) and float(metrics[name][0]) >= 0, name
  np.testing.assert_allclose(float(loss), sum(float(metrics[n][0]) for n in (
      "loss_rpn_cls", "loss_rpn_bbox", "loss_cls", "loss_bbox", "loss_mask")), rtol=1e-5)
  assert float(metrics["num_rcnn_pos"][0]) >= 3  # the gts themselves are positive candidates
  for part in ("backbone", "rpn_head", "bbox_head", "mask_head"):
    assert any(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads[part])), part

  # predict (the network's inference path is compared end to end by the parity runner): original-image boxes.
  dets = {"boxes": jnp.full((2, 8, 4), 10.0), "scores": jnp.ones((2, 8)), "labels": jnp.zeros((2, 8), jnp.int32),
          "valid": jnp.arange(8)[None, :] < jnp.asarray([[3], [8]]), "mask_logits": jnp.zeros((2, 8, 28, 28))}
  pred = model.predict({"detections": dets}, batch)
  valid = np.asarray(pred["valid"])
  assert valid.sum() == 11 and pred["mask_probs"].shape == (2, 8, 28, 28)
  np.testing.assert_allclose(np.asarray(pred["boxes"])[valid], 20.0)
  assert (np.asarray(pred["labels"])[~valid] == -1).all() and (np.asarray(pred["boxes"])[~valid] == 0).all()
