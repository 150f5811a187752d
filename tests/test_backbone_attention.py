"""Attention internals: the gather-free DPB expansion, the hand-written attention and MLP backward passes
(chunked or not), remat policies."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones import create_model
from backbones.crossformer import attention
from backbones.crossformer import grouping
from backbones.crossformer import lean
from backbones.crossformer.layers import LayerNorm, gelu
from backbones.crossformer.model import remat_block, CrossFormerBlock

TINY = dict(embed_dim=16, depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 2))


def test_expand_relative_equals_the_official_gather():
  for group_hw in [(1, 1), (1, 4), (3, 2), (7, 7), (25, 42)]:
    _check_expand(group_hw)


def _check_expand(group_hw):
  table, index = grouping.relative_offsets(group_hw)
  values = np.random.default_rng(0).normal(size=(table.shape[0], 3)).astype(np.float32)
  n = group_hw[0] * group_hw[1]
  want = values[index.reshape(-1)].reshape(n, n, 3).transpose(2, 0, 1)
  np.testing.assert_array_equal(np.asarray(attention.expand_relative(values, group_hw)), want)


def _plan_inputs(plan, heads=2, head_dim=4, batch=2, seed=0):
  keys = jax.random.split(jax.random.PRNGKey(seed), 4)
  shape = (batch, plan.num_groups, plan.group_tokens, heads, head_dim)
  q, k, v = (jax.random.normal(key, shape) for key in keys[:3])
  bias = jax.random.normal(keys[3], (heads, plan.group_tokens, plan.group_tokens))
  key_bias = grouping.key_padding_bias(plan)
  return q, k, v, bias, None if key_bias is None else jnp.asarray(key_bias)


# SDA with padding (masked keys), LDA v1 with padding, main-mode LDA without padding.
@pytest.mark.parametrize("plan", [grouping.plan_groups(10, 14, 4, 2, False),
                                  grouping.plan_groups(10, 13, 4, 2, True),
                                  grouping.plan_groups(16, 16, 2, 2, True, "main")],
                         ids=["sda_masked", "lda_v1_masked", "lda_main"])
@pytest.mark.parametrize("chunk", [2, None], ids=["chunked", "whole"])
def test_lean_attention_equals_autodiff_of_the_plain_formula(plan, chunk):
  q, k, v, bias, key_bias = _plan_inputs(plan)
  assert plan.num_groups >= 4 and (key_bias is not None) == plan.needs_mask
  chunk = chunk or plan.num_groups

  def loss(fn, q, k, v, bias):
    out = fn(q, k, v, bias, key_bias, jnp.float32)
    return jnp.sum(out * jnp.cos(out)), out

  lean_fn = lambda *a: lean.attention(*a, chunk)
  (_, want), want_grads = jax.jit(jax.value_and_grad(lambda *a: loss(attention.attend, *a), (0, 1, 2, 3),
                                                     has_aux=True))(q, k, v, bias)
  (_, got), got_grads = jax.jit(jax.value_and_grad(lambda *a: loss(lean_fn, *a), (0, 1, 2, 3),
                                                   has_aux=True))(q, k, v, bias)
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
  for g, w in zip(got_grads, want_grads):
    np.testing.assert_allclose(g, w, rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="divide"):
    lean.attention(q, k, v, bias, key_bias, jnp.float32, 5)


def test_lean_backward_passes_are_exact_in_float64():
  """In float64 the hand-written gradients (attention, MLP, LayerNorm) equal autodiff's to rounding."""
  with jax.enable_x64():
    plan = grouping.plan_groups(10, 13, 4, 2, True)
    q, k, v, bias, key_bias = (None if t is None else t.astype(jnp.float64) for t in _plan_inputs(plan))
    f = lambda fn: lambda q, k, v, b: jnp.sum(jnp.sin(fn(q, k, v, b)))
    want = jax.grad(f(lambda *a: attention.attend(*a, key_bias, jnp.float64)), (0, 1, 2, 3))(q, k, v, bias)
    got = jax.grad(f(lambda *a: lean.attention(*a, key_bias, jnp.float64, 2)), (0, 1, 2, 3))(q, k, v, bias)
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    rng = np.random.default_rng(0)
    args = [jnp.asarray(rng.normal(size=s)) for s in [(2, 5, 6), (6, 24), (24,), (24, 6), (6,)]]
    plain = lambda x, w1, b1, w2, b2: jnp.dot(gelu(jnp.dot(x, w1) + b1), w2) + b2
    want = jax.grad(lambda *a: jnp.sum(jnp.sin(plain(*a))), range(5))(*args)
    got = jax.grad(lambda *a: jnp.sum(jnp.sin(lean.gelu_mlp(*a))), range(5))(*args)
    np.testing.assert_array_equal(lean.gelu_mlp(*args), plain(*args))
    for g, w in zip(got, want):
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)
    x = jnp.asarray(rng.normal(3.0, 2.0, size=(2, 5, 6)))
    variables = nn.LayerNorm(epsilon=1e-5).init(jax.random.PRNGKey(0), x)
    variables = jax.tree.map(lambda t: t + jnp.asarray(rng.normal(size=t.shape)), variables)
    f = lambda module: lambda v, x: jnp.sum(jnp.sin(module.apply(v, x)) * jnp.arange(6.0))
    want = jax.grad(f(nn.LayerNorm(epsilon=1e-5)), (0, 1))(variables, x)
    got = jax.grad(f(LayerNorm()), (0, 1))(variables, x)
    np.testing.assert_array_equal(LayerNorm().apply(variables, x), nn.LayerNorm(epsilon=1e-5).apply(variables, x))
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
      np.testing.assert_allclose(g, w, rtol=1e-12, atol=1e-12)


def test_lean_backward_keeps_no_score_matrix():
  """The attention keeps q, k, v, the log-sum-exp and the biases: no per-group N^2 scores, not the output."""
  plan = grouping.plan_groups(32, 32, 8, 4, True)  # 16 groups of 64 tokens
  q, k, v, bias, key_bias = _plan_inputs(plan)
  _, residuals = lean._attention_fwd(q, k, v, bias, key_bias, jnp.float32, 2)  # pylint: disable=protected-access
  assert plan.group_tokens == 64 and q.shape[-1] < plan.group_tokens
  sizes = sorted(np.size(r) for r in jax.tree.leaves(residuals))
  assert sizes[-1] == q.size and sizes[-2] == q.size  # q, k, v: (B, G, N, H, D) each
  assert sum(sizes) == 3 * q.size + bias.size + q.size // q.shape[-1]  # + lse (B, G, H, N)


def test_group_attention_module_chunks_only_above_the_threshold():
  plan = grouping.plan_groups(10, 13, 4, 2, True)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, plan.num_groups, plan.group_tokens, 16))
  kb = grouping.key_padding_bias(plan)
  plain = attention.GroupAttention(2, chunk_bytes=None)
  chunked = attention.GroupAttention(2, chunk_bytes=1)
  variables = plain.init(jax.random.PRNGKey(1), x, plan.group_hw, kb)
  np.testing.assert_allclose(chunked.apply(variables, x, plan.group_hw, kb),
                             plain.apply(variables, x, plan.group_hw, kb), rtol=1e-6, atol=1e-6)
  # lax.map is a scan: only the chunked module loops over groups.
  assert "scan" in str(jax.make_jaxpr(lambda x: chunked.apply(variables, x, plan.group_hw, kb))(x))
  assert "scan" not in str(jax.make_jaxpr(lambda x: plain.apply(variables, x, plan.group_hw, kb))(x))
  assert attention.groups_per_chunk(1, 8, 2, 16, None) == 8
  assert attention.groups_per_chunk(1, 8, 2, 16, 10 ** 9) == 8
  assert attention.groups_per_chunk(1, 12, 1, 16, 4 * 16 * 16 * 5) == 4  # largest divisor of 12 <= 5


def test_remat_policies_give_the_same_outputs_and_gradients():
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 64, 3))
  small = dict(TINY, depths=(2, 1, 1, 1))  # an SDA and an LDA block, then one block per stage
  models = {p: create_model("crossformer_t", remat=p, drop_path_rate=0.1, **small)
            for p in (False, "dots")}  # remat=True ("full") is tested in test_backbone_api
  params = jax.jit(models[False].init)(jax.random.PRNGKey(1), x)["params"]

  def loss(model, params):
    feats = model.apply({"params": params}, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
    return sum(jnp.mean(f ** 2) for f in feats.values())

  results = {p: jax.jit(jax.value_and_grad(lambda prm, m=m: loss(m, prm)))(params)
             for p, m in models.items()}
  want_loss, want_grads = results[False]
  for policy in ("dots",):
    got_loss, got_grads = results[policy]
    np.testing.assert_allclose(got_loss, want_loss, rtol=1e-6)
    for g, w in zip(jax.tree.leaves(got_grads), jax.tree.leaves(want_grads)):
      np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-5)
  assert remat_block(CrossFormerBlock, False) is CrossFormerBlock
  with pytest.raises(ValueError, match="remat must be"):
    remat_block(CrossFormerBlock, "everything")


def test_lean_gradients_in_bfloat16_follow_float32():
  """bfloat16 compute through the hand-written backward passes: float32 parameter gradients near float32's."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 64, 64, 3))
  small = dict(TINY, depths=(2, 1, 1, 1), out_indices=(0, 1))  # an SDA and an LDA block, then one more
  grads = {}
  params = jax.jit(create_model("crossformer_t", **small).init)(jax.random.PRNGKey(1), x)["params"]
  for dtype in (jnp.float32, jnp.bfloat16):  # float32 parameters either way; bfloat16 compute
    model = create_model("crossformer_t", dtype=dtype, **small)
    loss = lambda p, m=model: sum(jnp.mean(f.astype(jnp.float32) ** 2) for f in m.apply({"params": p}, x).values())
    grads[dtype] = jax.jit(jax.grad(loss))(params)
  for path, g16 in jax.tree_util.tree_leaves_with_path(grads[jnp.bfloat16]):
    g32 = dict(jax.tree_util.tree_leaves_with_path(grads[jnp.float32]))[path]
    assert g16.dtype == jnp.float32 and np.all(np.isfinite(g16)), path
    scale = float(np.max(np.abs(g32))) + 1e-6
    np.testing.assert_allclose(g16 / scale, g32 / scale, atol=0.1, err_msg=str(path))


def test_attention_dropout_takes_the_plain_path():
  """With attention dropout in training the weights are dropped (outputs vary with the key); else lean."""
  plan = grouping.plan_groups(10, 13, 4, 2, True)
  x = jax.random.normal(jax.random.PRNGKey(0), (1, plan.num_groups, plan.group_tokens, 16))
  kb = grouping.key_padding_bias(plan)
  module = attention.GroupAttention(2, attn_drop=0.5)
  variables = module.init(jax.random.PRNGKey(1), x, plan.group_hw, kb)
  run = lambda seed: module.apply(variables, x, plan.group_hw, kb, True, rngs={"dropout": jax.random.PRNGKey(seed)})
  assert not np.allclose(run(2), run(3))
  np.testing.assert_allclose(module.apply(variables, x, plan.group_hw, kb),
                             attention.GroupAttention(2).apply(variables, x, plan.group_hw, kb), rtol=1e-6)
