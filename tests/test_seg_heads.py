"""Tests of the dense-prediction building blocks: ConvModule / norms, resizes, adaptive pooling, FPN neck,
and the mmseg decode heads (FPNHead, UPerHead, FCNHead)."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from heads.fpn import FPN
from heads.layers import ConvModule, adaptive_avg_pool, feature_list, make_norm, resize_bilinear, resize_nearest
from heads.segmentation import FCNHead, FPNHead, UPerHead
from heads.segmentation.base import classify

KEY = jax.random.PRNGKey(0)
IMAGE_SIZES = [(512, 512), (480, 640), (96, 160)]
DIMS = (8, 16, 32, 64)


def stage_features(image_size, batch=1, dims=DIMS, dtype=jnp.float32):
  """Random backbone-like features at strides 4..32 of an (H, W) image."""
  h, w = image_size
  keys = jax.random.split(KEY, len(dims))
  return {f"stage_{i + 1}": jax.random.normal(keys[i], (batch, h // 4 // 2 ** i, w // 4 // 2 ** i, d), dtype)
          for i, d in enumerate(dims)}


def shapes(tree):
  return jax.tree.map(lambda x: tuple(x.shape), tree)


# ----------------------------------------------------------------------------------------------- references
def torch_bilinear_1d(in_size, out_size):
  """(out, in) interpolation matrix of F.interpolate(mode="bilinear", align_corners=False) along one axis."""
  matrix = np.zeros((out_size, in_size))
  scale = in_size / out_size
  for i in range(out_size):
    src = max((i + 0.5) * scale - 0.5, 0.0)
    i0 = int(src)
    i1 = i0 + 1 if i0 < in_size - 1 else i0
    lam = src - i0
    matrix[i, i0] += 1 - lam
    matrix[i, i1] += lam
  return matrix


def numpy_adaptive_avg_pool(x, out):
  """Direct loop over PyTorch AdaptiveAvgPool2d bins on an NHWC array."""
  b, h, w, c = x.shape
  result = np.zeros((b, out, out, c))
  for i in range(out):
    h0, h1 = math.floor(i * h / out), math.ceil((i + 1) * h / out)
    for j in range(out):
      w0, w1 = math.floor(j * w / out), math.ceil((j + 1) * w / out)
      result[:, i, j] = x[:, h0:h1, w0:w1].mean(axis=(1, 2))
  return result


# ----------------------------------------------------------------------------------------------- layers
def test_resize_bilinear_matches_pytorch_semantics():
  x = np.asarray(jax.random.normal(KEY, (2, 7, 10, 3)))
  for size in [(14, 20), (13, 25), (5, 4), (7, 10), (3, 23)]:
    expected = np.einsum("ih,bhwc,jw->bijc", torch_bilinear_1d(7, size[0]), x, torch_bilinear_1d(10, size[1]))
    np.testing.assert_allclose(np.asarray(resize_bilinear(jnp.asarray(x), size)), expected, atol=1e-5)


def test_resize_nearest_matches_pytorch_legacy_nearest():
  x = jnp.arange(13 * 5, dtype=jnp.float32).reshape(1, 13, 5, 1)
  out = np.asarray(resize_nearest(x, (25, 10)))[0, :, :, 0]
  rows = [math.floor(i * 13 / 25) for i in range(25)]
  cols = [i // 2 for i in range(10)]
  np.testing.assert_array_equal(out, np.asarray(x)[0, :, :, 0][np.ix_(rows, cols)])
  assert rows[:4] == [0, 0, 1, 1] and rows[-1] == 12


@pytest.mark.parametrize("in_hw,out", [((5, 5), 3), ((7, 11), 6), ((3, 5), 6), ((12, 16), 1), ((15, 20), 2)])
def test_adaptive_avg_pool_matches_numpy(in_hw, out):
  x = np.asarray(jax.random.normal(KEY, (2, *in_hw, 3)))
  np.testing.assert_allclose(np.asarray(adaptive_avg_pool(jnp.asarray(x), out)), numpy_adaptive_avg_pool(x, out),
                             atol=1e-5)


def test_adaptive_avg_pool_overlapping_bins():
  # PyTorch AdaptiveAvgPool1d(3) on 5 elements uses bins [0, 2), [1, 4), [3, 5).
  x = jnp.asarray([0.0, 1.0, 2.0, 3.0, 4.0]).reshape(1, 5, 1, 1) * jnp.ones((1, 1, 5, 1))
  pooled = np.asarray(adaptive_avg_pool(x, 3))[0, :, 0, 0]
  np.testing.assert_allclose(pooled, [0.5, 2.0, 3.5], atol=1e-6)


def test_conv_module_bias_only_without_norm():
  x = jnp.ones((2, 6, 6, 4))
  for norm, has_bias, has_stats in [("batch", False, True), ("group", False, False), ("none", True, False)]:
    variables = ConvModule(32, 3, norm=norm).init(KEY, x)
    assert ("bias" in variables["params"]["conv"]) == has_bias, norm
    assert ("norm" in variables["params"]) == (norm != "none"), norm
    assert ("batch_stats" in variables) == has_stats, norm


def test_make_norm_settings():
  bn = make_norm("batch", train=True, axis_name="batch")
  assert (bn.momentum, bn.epsilon, bn.use_running_average, bn.axis_name) == (0.9, 1e-5, False, "batch")
  assert make_norm("batch", train=False).use_running_average
  gn = make_norm("group", train=True)
  assert (gn.num_groups, gn.epsilon) == (32, 1e-5)
  assert make_norm("none", train=True) is None
  with pytest.raises(ValueError, match="unknown norm"):
    make_norm("sync", train=True)


def test_conv_module_batch_norm_train_updates_stats():
  module = ConvModule(8, 3, norm="batch")
  x = jax.random.normal(KEY, (4, 6, 6, 3)) * 3 + 1
  variables = module.init(KEY, x)
  y, updates = module.apply(variables, x, train=True, mutable=["batch_stats"])
  # Normalised with batch statistics, then ReLU: about half the outputs are positive.
  assert 0.3 < float(jnp.mean(y > 0)) < 0.7
  old, new = variables["batch_stats"]["norm"], updates["batch_stats"]["norm"]
  assert not np.allclose(old["mean"], new["mean"])
  # PyTorch momentum 0.1: running mean = 0.9 * 0 + 0.1 * batch mean of the (bias-free) conv output.
  conv = nn.Conv(8, (3, 3), padding=((1, 1), (1, 1)), use_bias=False)
  conv_out = conv.apply({"params": variables["params"]["conv"]}, x)
  np.testing.assert_allclose(new["mean"], 0.1 * jnp.mean(conv_out, axis=(0, 1, 2)), rtol=1e-4, atol=1e-6)
  y_eval = module.apply(variables, x, train=False)  # running averages, nothing mutable needed
  assert y_eval.shape == y.shape and not np.allclose(y_eval, y)


def test_feature_list_orders_stage_dict_numerically():
  maps = {f"stage_{i}": jnp.full((1, 1, 1, 1), i) for i in (10, 2, 1)}
  assert [int(x[0, 0, 0, 0]) for x in feature_list(maps)] == [1, 2, 10]
  with pytest.raises(ValueError, match="stage_<n>"):
    feature_list({"res2": jnp.zeros((1, 1, 1, 1))})


# ----------------------------------------------------------------------------------------------- FPN neck
@pytest.mark.parametrize("image_size", IMAGE_SIZES)
def test_fpn_retinanet_config_shapes(image_size):
  feats = stage_features(image_size, dims=(96, 192, 384, 768))
  fpn = FPN(out_channels=256, start_level=1, add_extra_convs="on_input", num_outs=5)
  variables = jax.eval_shape(fpn.init, KEY, feats)
  outs = jax.eval_shape(fpn.apply, variables, feats)
  h, w = image_size
  expected = [(h // 8, w // 8), (h // 16, w // 16), (h // 32, w // 32)]
  for _ in range(2):
    expected.append((-(-expected[-1][0] // 2), -(-expected[-1][1] // 2)))  # stride-2 3x3 conv, padding 1
  assert [o.shape for o in outs] == [(1, eh, ew, 256) for eh, ew in expected]
  params = variables["params"]
  assert sorted(params) == sorted([f"lateral_convs_{i}" for i in range(3)] + [f"fpn_convs_{i}" for i in range(5)])
  assert params["fpn_convs_3"]["conv"]["kernel"].shape == (3, 3, 768, 256)  # on_input: the C5 map
  assert params["fpn_convs_4"]["conv"]["kernel"].shape == (3, 3, 256, 256)
  assert params["lateral_convs_0"]["conv"]["kernel"].shape == (1, 1, 192, 256)
  assert "bias" in params["lateral_convs_0"]["conv"]  # no norm: conv bias


def test_fpn_odd_sizes_extra_sources_and_maxpool():
  # Odd level sizes (not exact halves) and all extra-level variants.
  feats = (jnp.ones((2, 25, 17, 4)), jnp.ones((2, 13, 9, 8)), jnp.ones((2, 7, 5, 16)))
  for extra, relu in [("on_lateral", False), ("on_output", True), (True, False)]:
    fpn = FPN(out_channels=8, num_outs=5, add_extra_convs=extra, relu_before_extra_convs=relu)
    outs = fpn.apply(fpn.init(KEY, feats), feats)
    assert [o.shape[1:3] for o in outs] == [(25, 17), (13, 9), (7, 5), (4, 3), (2, 2)]
  fpn = FPN(out_channels=8, num_outs=5)
  variables = fpn.init(KEY, feats)
  outs = fpn.apply(variables, feats)
  assert [o.shape[1:3] for o in outs] == [(25, 17), (13, 9), (7, 5), (4, 3), (2, 2)]
  np.testing.assert_array_equal(outs[3], outs[2][:, ::2, ::2])  # max_pool2d(1, stride=2)
  assert "fpn_convs_3" not in variables["params"]
  with pytest.raises(ValueError, match="add_extra_convs"):
    FPN(out_channels=8, num_outs=5, add_extra_convs="on_top").init(KEY, feats)
  with pytest.raises(ValueError, match="num_outs"):
    FPN(out_channels=8, num_outs=2).init(KEY, feats)


def test_fpn_top_down_uses_nearest_upsampling():
  # With identity-like 1x1 laterals and the output convs bypassed, level 0 = lateral_0 + nearest(lateral_1).
  feats = (jnp.zeros((1, 5, 3, 1)), jnp.arange(6.0).reshape(1, 3, 2, 1))
  fpn = FPN(out_channels=1, num_outs=2)
  variables = fpn.init(KEY, feats)
  params = jax.tree.map(jnp.zeros_like, variables["params"])
  params["lateral_convs_1"]["conv"]["kernel"] = jnp.ones((1, 1, 1, 1))
  centre = jnp.zeros((3, 3, 1, 1)).at[1, 1].set(1.0)
  params["fpn_convs_0"]["conv"]["kernel"] = centre
  outs = fpn.apply({"params": params}, feats)
  rows = [math.floor(i * 3 / 5) for i in range(5)]
  expected = np.arange(6.0).reshape(3, 2)[np.ix_(rows, [0, 0, 1])]  # floor(j * 2 / 3)
  np.testing.assert_allclose(outs[0][0, :, :, 0], expected)


def test_fpn_dict_and_tuple_inputs_agree():
  feats = stage_features((96, 160))
  fpn = FPN(out_channels=8, num_outs=4)
  variables = fpn.init(KEY, feats)
  for a, b in zip(fpn.apply(variables, feats), fpn.apply(variables, tuple(feats.values()))):
    np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------------------------------------- decode heads
# Eager Flax runs compile every resize op separately (seconds each) and jitted inits cost a compile each, so
# tests build variables from eval_shape (tracing only) and compile one jitted function per head.
def random_variables(module, inputs):
  """Random params (and unit batch statistics) with the structure of ``module.init``; no compile."""
  shapes = jax.eval_shape(module.init, KEY, inputs)
  rng = np.random.RandomState(0)  # numpy: eager jax.random would compile once per parameter shape
  params = jax.tree.map(lambda s: jnp.asarray(0.2 * rng.randn(*s.shape), jnp.float32), shapes["params"])
  variables = {"params": params}
  if "batch_stats" in shapes:
    variables["batch_stats"] = jax.tree.map(lambda s: jnp.ones(s.shape), shapes["batch_stats"])
  return variables


def train_and_eval_fn(module):
  """Jitted ``(variables, inputs, key) -> ((train_out, updates), eval_out)``."""
  def run(variables, inputs, key):
    train = module.apply(variables, inputs, train=True, mutable=["batch_stats"], rngs={"dropout": key})
    return train, module.apply(variables, inputs, train=False)
  return jax.jit(run)


HEADS = {
    "upernet": (UPerHead(5, channels=16), 4),
    "fpn_head": (FPNHead(5, channels=16), 4),
    "fcn": (FCNHead(5, channels=16), 16),
}


@pytest.mark.parametrize("image_size", IMAGE_SIZES[:2])
@pytest.mark.parametrize("name", sorted(HEADS))
def test_head_shapes_large_inputs(name, image_size):
  head, stride = HEADS[name]
  feats = stage_features(image_size)
  variables = jax.eval_shape(head.init, KEY, feats)
  out = jax.eval_shape(lambda v, f: head.apply(v, f), variables, feats)
  assert out.shape == (1, image_size[0] // stride, image_size[1] // stride, 5)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_heads_run_non_square_small_maps(name):
  # 96x160 -> stage maps 24x40 ... 3x5: the stride-32 map is odd and smaller than the largest pool scale.
  head, stride = HEADS[name]
  feats = stage_features((96, 160), batch=2)
  variables = random_variables(head, feats)
  run = train_and_eval_fn(head)
  (out, updates), eval_out = run(variables, feats, jax.random.PRNGKey(1))
  assert out.shape == (2, 96 // stride, 160 // stride, 5)
  assert np.all(np.isfinite(out))
  # Training normalises with batch statistics and updates every running average.
  changed = jax.tree.map(lambda a, b: not np.allclose(a, b), variables["batch_stats"], updates["batch_stats"])
  assert all(jax.tree.leaves(changed))
  assert eval_out.shape == out.shape and not np.allclose(eval_out, out)
  (out_2, _), eval_out_2 = run(variables, feats, jax.random.PRNGKey(2))
  assert not np.allclose(out, out_2)  # dropout in training
  np.testing.assert_array_equal(eval_out, eval_out_2)  # none at eval


def test_heads_odd_level_sizes():
  # An odd stride-4 map whose coarser levels are not exact halves: everything is resized to exact shapes.
  odd = {"stage_1": jnp.ones((1, 25, 17, 8)), "stage_2": jnp.ones((1, 13, 9, 16)),
         "stage_3": jnp.ones((1, 7, 5, 32)), "stage_4": jnp.ones((1, 4, 3, 64))}
  for head in (UPerHead(3, channels=16), FPNHead(3, channels=16)):
    out = jax.eval_shape(lambda v, f, h=head: h.apply(v, f), jax.eval_shape(head.init, KEY, odd), odd)
    assert out.shape == (1, 25, 17, 3)


def test_heads_accept_tuples_and_in_index():
  feats = stage_features((96, 160))
  head = FCNHead(3, channels=16, in_index=1)
  variables = random_variables(head, feats)
  apply = jax.jit(lambda v, f: head.apply(v, f))
  by_dict = apply(variables, feats)
  np.testing.assert_array_equal(by_dict, apply(variables, tuple(feats.values())))
  assert by_dict.shape == (1, 12, 20, 3)
  with pytest.raises(ValueError, match="in_index"):
    jax.eval_shape(FCNHead(3, in_index=4).init, KEY, feats)


def test_upernet_parameter_structure_matches_mmseg():
  params = jax.eval_shape(UPerHead(7, channels=16).init, KEY, stage_features((96, 160)))["params"]
  assert sorted(params) == sorted([f"psp_modules_{j}" for j in range(4)] + [f"lateral_convs_{i}" for i in range(3)]
                                  + [f"fpn_convs_{i}" for i in range(3)]
                                  + ["bottleneck", "fpn_bottleneck", "conv_seg"])
  assert params["psp_modules_0"]["conv"]["kernel"].shape == (1, 1, 64, 16)
  assert params["bottleneck"]["conv"]["kernel"].shape == (3, 3, 64 + 4 * 16, 16)
  assert params["fpn_bottleneck"]["conv"]["kernel"].shape == (3, 3, 4 * 16, 16)
  assert [params[f"lateral_convs_{i}"]["conv"]["kernel"].shape[2] for i in range(3)] == [8, 16, 32]
  assert params["conv_seg"]["kernel"].shape == (1, 1, 16, 7) and "bias" in params["conv_seg"]


def test_fpn_head_conv_counts_per_level():
  params = jax.eval_shape(FPNHead(5, channels=16).init, KEY, stage_features((96, 160)))["params"]
  counts = [len([k for k in params if k.startswith(f"scale_heads_{i}_")]) for i in range(4)]
  assert counts == [1, 1, 2, 3]  # max(1, log2(stride / 4)) convs per level
  assert params["scale_heads_3_0"]["conv"]["kernel"].shape == (3, 3, 64, 16)
  assert params["scale_heads_3_2"]["conv"]["kernel"].shape == (3, 3, 16, 16)


def test_fcn_head_options():
  feats = stage_features((96, 160))
  params = jax.eval_shape(FCNHead(4, channels=16, num_convs=2, concat_input=True).init, KEY, feats)["params"]
  assert params["conv_cat"]["conv"]["kernel"].shape == (3, 3, 32 + 16, 16)
  assert params["convs_1"]["conv"]["kernel"].shape == (3, 3, 16, 16)
  identity = jax.eval_shape(FCNHead(4, channels=32, num_convs=0).init, KEY, feats)["params"]
  assert sorted(identity) == ["conv_seg"]
  with pytest.raises(ValueError, match="num_convs=0"):
    jax.eval_shape(FCNHead(4, channels=16, num_convs=0).init, KEY, feats)


def test_group_norm_and_batch_norm_head_configs():
  feats = stage_features((96, 160))
  group = UPerHead(5, channels=32, norm="group")
  group_vars = jax.eval_shape(group.init, KEY, feats)
  assert set(group_vars) == {"params"}
  assert set(group_vars["params"]["fpn_bottleneck"]) == {"conv", "norm"}
  assert "bias" not in group_vars["params"]["fpn_bottleneck"]["conv"]
  # Training with GroupNorm needs no mutable collection.
  out = jax.eval_shape(lambda v, f: group.apply(v, f, train=True, rngs={"dropout": KEY}), group_vars, feats)
  assert out.shape == (1, 24, 40, 5)
  batch_vars = jax.eval_shape(UPerHead(5, channels=32, norm="batch").init, KEY, feats)
  assert set(batch_vars) == {"params", "batch_stats"}
  assert set(batch_vars["batch_stats"]["psp_modules_0"]["norm"]) == {"mean", "var"}
  with pytest.raises(ValueError):
    jax.eval_shape(UPerHead(5, channels=16, norm="group").init, KEY, feats)  # 16 channels: not 32 groups


class ClassifierOnly(nn.Module):
  """The shared dropout + conv_seg classifier, exposed for testing."""
  num_classes: int

  @nn.compact
  def __call__(self, x, train=False):
    return classify(x, self.num_classes, 0.5, train, jnp.float32)


def test_classifier_dropout_drops_whole_channels_in_train_only():
  x = jnp.ones((4, 5, 6, 8))
  module = ClassifierOnly(8)
  params = {"conv_seg": {"kernel": jnp.eye(8).reshape(1, 1, 8, 8), "bias": jnp.zeros(8)}}
  out = np.asarray(module.apply({"params": params}, x, train=True, rngs={"dropout": KEY}))
  assert set(np.unique(out)) == {0.0, 2.0}  # Dropout2d(0.5): channels zeroed or scaled by 2
  np.testing.assert_array_equal(out, np.broadcast_to(out[:, :1, :1], out.shape))  # constant per (b, c)
  np.testing.assert_array_equal(module.apply({"params": params}, x), x)
  init_kernel = module.init(KEY, jnp.ones((1, 1, 1, 256)))["params"]["conv_seg"]["kernel"]
  assert 0.005 < float(jnp.std(init_kernel)) < 0.02  # mmseg normal(std=0.01)


def test_heads_compute_dtype():
  feats = stage_features((96, 160), dtype=jnp.bfloat16)
  head = UPerHead(5, channels=16, dtype=jnp.bfloat16)
  variables = jax.eval_shape(head.init, KEY, feats)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  assert jax.eval_shape(lambda v, f: head.apply(v, f), variables, feats).dtype == jnp.bfloat16
