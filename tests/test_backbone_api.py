"""The backbone's public API: seed classifier, create_model, sizes, grouping, training options."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones import CrossFormer, create_model, list_models, pad_to_valid_size, padded_size
from backbones.crossformer import grouping
from backbones.crossformer.sizes import is_valid_side

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


@pytest.fixture(scope="module")
def tiny_backbone():
  """A tiny CrossFormer (SDA and LDA in every stage) and its variables, initialised once."""
  model = create_model("crossformer_t", **TINY)
  return model, jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def test_seed_snippet_runs_and_counts_parameters():
  key = jax.random.PRNGKey(0)
  img = jax.random.normal(key, (1, 224, 224, 3))
  v = CrossFormer(num_classes=1000, dim=(64, 128, 256, 512), depth=(2, 2, 8, 2),
                  global_window_size=(8, 4, 2, 1), local_window_size=7)
  init_rngs = {"params": jax.random.PRNGKey(1), "dropout": jax.random.PRNGKey(2)}
  params = v.init(init_rngs, img)
  output = v.apply(params, img, rngs=init_rngs)
  assert output.shape == (1, 1000)
  assert bool(jnp.all(jnp.isfinite(output)))
  n_params = sum(jax.tree.leaves(jax.tree.map(lambda x: np.prod(x.shape), params)))
  assert n_params == 15_404_140  # documented in the README


@pytest.mark.parametrize("name,channels", [("crossformer_t", (64, 128, 256, 512)),
                                           ("crossformer_s", (96, 192, 384, 768)),
                                           ("crossformer_b", (96, 192, 384, 768)),
                                           ("crossformer_l", (128, 256, 512, 1024))])
@pytest.mark.parametrize("hw", [(512, 512), (480, 640)])
def test_create_model_pyramid_shapes(name, channels, hw):
  model = create_model(name, features_only=True)
  assert model.feature_info.channels() == list(channels)
  assert model.feature_info.reduction() == [4, 8, 16, 32]
  x = jax.ShapeDtypeStruct((2,) + hw + (3,), jnp.float32)
  out = jax.eval_shape(lambda x: model.apply(model.init(jax.random.PRNGKey(0), x), x), x)
  assert list(out) == ["stage_1", "stage_2", "stage_3", "stage_4"]
  for i, (key, c) in enumerate(zip(out, channels)):
    stride = 4 * 2 ** i
    assert out[key].shape == (2, hw[0] // stride, hw[1] // stride, c)


@pytest.mark.slow
def test_crossformer_s_runs_on_480x640():
  model = create_model("crossformer_s")
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 480, 640, 3))
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  out = jax.jit(model.apply)(variables, x)
  assert [o.shape[-1] for o in out.values()] == [96, 192, 384, 768]
  assert out["stage_4"].shape == (1, 15, 20, 768)
  assert all(bool(jnp.isfinite(o).all()) for o in out.values())


def test_out_indices_select_levels():
  model = create_model("crossformer_t", out_indices=(1, 3), **TINY)
  x = jnp.zeros((1, 64, 96, 3))
  out = jax.eval_shape(lambda: model.apply(model.init(jax.random.PRNGKey(0), x), x))
  assert list(out) == ["stage_2", "stage_4"]
  assert model.feature_info.module_name() == ["stage_2", "stage_4"]
  with pytest.raises(ValueError, match="out_indices"):
    create_model("crossformer_t", out_indices=(4,))


def test_list_models_and_unknown_names():
  assert list_models() == ["crossformer_b", "crossformer_l", "crossformer_s", "crossformer_t",
                           "crossformerpp_b", "crossformerpp_h", "crossformerpp_l", "crossformerpp_s"]
  with pytest.raises(ValueError, match="unknown backbone 'crossformer_x'"):
    create_model("crossformer_x")
  with pytest.raises(ValueError, match="unknown CrossFormer arguments \\['window'\\]"):
    create_model("crossformer_t", window=7)


def test_bad_inputs_get_clear_errors(tiny_backbone):
  model, variables = tiny_backbone
  with pytest.raises(ValueError, match="expects 3 input channels .* got 1"):
    model.apply(variables, jnp.zeros((1, 64, 64, 1)))
  with pytest.raises(ValueError, match="rank 4"):
    model.apply(variables, jnp.zeros((64, 64, 3)))
  with pytest.raises(ValueError, match="height 200: nearest valid 192 or 224"):
    model.apply(variables, jnp.zeros((1, 200, 288, 3)))
  with pytest.raises(ValueError, match="width 16: nearest valid 32"):
    model.apply(variables, jnp.zeros((1, 64, 16, 3)))


def test_size_rule_matches_official_checks():
  # The official code runs 224, 225, 227, 256, 288 and rejects 228, 240, 272 (reference doc 0.4).
  assert all(is_valid_side(n) for n in (224, 225, 227, 256, 288))
  assert not any(is_valid_side(n) for n in (228, 240, 272, 200, 296, 16))


def test_pad_to_valid_size_returns_mask():
  images = np.ones((2, 200, 296, 3), np.float32)
  padded, mask = pad_to_valid_size(images)
  assert padded.shape == (2, 224, 320, 3) and mask.shape == (2, 224, 320)
  assert padded_size(200, 296) == (224, 320)
  assert mask[:, :200, :296].all() and not mask[:, 200:].any() and not mask[:, :, 296:].any()
  assert padded[:, 200:].sum() == 0 and padded[:, :200, :296].min() == 1
  padded_j, mask_j = pad_to_valid_size(jnp.asarray(images), divisor=64)
  assert padded_j.shape == (2, 256, 320, 3) and int(mask_j.sum()) == 2 * 200 * 296


@pytest.mark.parametrize("fixture,mode", [("public_backbone_v1", "v1"), ("public_backbone_main", "main")])
def test_group_plans_reproduce_the_official_block_trace(official_fixtures_dir, fixture, mode):
  meta = json.loads((official_fixtures_dir / f"{fixture}.json").read_text())
  kwargs = meta["constructor_kwargs"]
  checked = 0
  for case, trace in meta["block_trace"].items():
    for block in trace:
      s = block["stage"]
      plan = grouping.plan_groups(block["H"], block["W"], kwargs["group_size"][s],
                                  kwargs["crs_interval"][s], block["block"] % 2 == 1, mode)
      assert ("LDA" if plan.long_distance else "SDA") == block["attn"], (case, block)
      assert list(plan.group_hw) == block["group_hw"], (case, block)
      assert list(plan.padded_hw) == block["padded_hw"], (case, block)
      assert plan.num_groups == block["num_groups_per_image"], (case, block)
      checked += 1
  assert checked >= 24


@pytest.mark.parametrize("hw,g,i,lda,mode", [((24, 40), 7, 8, True, "v1"), ((13, 21), 7, 2, True, "main"),
                                             ((13, 21), 7, 2, False, "v1"), ((5, 9), 7, 1, True, "main")])
def test_group_then_ungroup_is_identity(hw, g, i, lda, mode):
  plan = grouping.plan_groups(*hw, g, i, lda, mode)
  x = jnp.arange(np.prod(plan.padded_hw) * 2, dtype=jnp.float32).reshape((1,) + plan.padded_hw + (2,))
  groups = grouping.group(x, plan)
  assert groups.shape == (1, plan.num_groups, plan.group_tokens, 2)
  np.testing.assert_array_equal(grouping.ungroup(groups, plan), x)
  bias = grouping.key_padding_bias(plan)
  if plan.needs_mask:
    valid = (np.arange(plan.padded_hw[0])[:, None] < hw[0]) & (np.arange(plan.padded_hw[1]) < hw[1])
    assert (bias == 0).sum() == valid.sum() and (bias == grouping.MASK_VALUE).sum() == (~valid).sum()
  else:
    assert bias is None


def test_outputs_do_not_depend_on_call_history(tiny_backbone):
  """The official block mutates itself on small maps; this port decides per call."""
  model, variables = tiny_backbone
  small, large = jnp.ones((1, 224, 224, 3)), jnp.ones((1, 256, 320, 3)) * 0.5
  apply = jax.jit(model.apply)
  fresh = apply(variables, large)
  apply(variables, small)
  again = apply(variables, large)
  for k in fresh:
    np.testing.assert_array_equal(fresh[k], again[k])


def test_drop_path_remat_and_bfloat16():
  x = jax.random.normal(jax.random.PRNGKey(0), (2, 64, 64, 3))
  small = dict(TINY, depths=(2, 1, 1, 1))  # an SDA and an LDA block, then one block per stage
  model = create_model("crossformer_t", drop_path_rate=0.5, **small)
  variables = jax.jit(model.init)(jax.random.PRNGKey(1), x)
  apply_eval = jax.jit(model.apply)
  apply_train = jax.jit(functools.partial(model.apply, train=True))
  eval_out = apply_eval(variables, x)
  train_a = apply_train(variables, x, rngs={"dropout": jax.random.PRNGKey(2)})
  train_b = apply_train(variables, x, rngs={"dropout": jax.random.PRNGKey(3)})
  assert not np.allclose(train_a["stage_4"], train_b["stage_4"])
  np.testing.assert_array_equal(eval_out["stage_4"], apply_eval(variables, x)["stage_4"])

  def loss(params, module):
    out = module.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    return sum(jnp.mean(v ** 2) for v in out.values())

  remat_model = create_model("crossformer_t", drop_path_rate=0.5, remat=True, **small)
  grads = jax.jit(jax.grad(functools.partial(loss, module=model)))(variables["params"])
  grads_remat = jax.jit(jax.grad(functools.partial(loss, module=remat_model)))(variables["params"])
  for a, b in zip(jax.tree.leaves(grads), jax.tree.leaves(grads_remat)):
    np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-4)

  bf16 = create_model("crossformer_t", dtype=jnp.bfloat16, **small)
  out16 = jax.jit(bf16.apply)(variables, x)
  assert out16["stage_4"].dtype == jnp.bfloat16
  np.testing.assert_allclose(np.asarray(out16["stage_4"], np.float32), eval_out["stage_4"],
                             atol=0.15, rtol=0.1)
