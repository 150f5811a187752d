"""Parity of CrossFormer++ (PGS, ACL, main-branch LDA) with the official outputs (``tests/fixtures``).

The checks are generic over fixtures in the documented format (``../shared/docs/fixtures.md``): a
classifier (``kind`` classification: ``logits`` and ``features``; each case's ``img_size`` replaces the
constructor's) or a dense backbone (``stage0..3``), with ``out``, ``out64``, ``dbg``, ``errors``,
``block_group_size`` and ``block_trace``. Each fixture's model is compiled once per case.
"""


import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones import CrossFormer, CrossFormerBackbone, from_official
from backbones.crossformer import convert, grouping
from backbones.crossformer.model import has_acl, per_stage
from projects.parity.report import load_fixture

ATOL = RTOL = 1e-4
ATOL64 = RTOL64 = 1e-10  # measured: at most 1.2e-14
PP_FIXTURES = ("public_cls_pp", "public_backbone_pp")


def _is_classifier(meta):
  return meta["kind"] == "classification"


def _case_kwargs(meta, case):
  """The official constructor arguments of ``case`` (the classifier is built for the case's size)."""
  kwargs = dict(meta["constructor_kwargs"])
  if _is_classifier(meta) and "img_size" in meta["cases"][case]:
    kwargs["img_size"] = meta["cases"][case]["img_size"]
  return kwargs


def _trunk(module):
  """The dense trunk of a classifier (or the backbone itself)."""
  return CrossFormerBackbone(**module.backbone_kwargs()) if isinstance(module, CrossFormer) else module


def _capture_blocks(mdl, method_name):
  name = mdl.name or ""
  return method_name == "__call__" and (name == "patch_embed" or "_blocks_" in name)


def _find(tree, name):
  """The captured output of the sub-module called ``name`` at any depth of ``tree``."""
  for key, value in tree.items():
    if key == name:
      return value["__call__"][0]
    if isinstance(value, dict) and key != "__call__":
      found = _find(value, name)
      if found is not None:
        return found
  return None


def _official_layout(meta, out):
  """Model outputs under the fixture's ``out/<case>/`` names, as numpy (NCHW for the stages)."""
  if _is_classifier(meta):
    logits, features = out
    return {"logits": np.asarray(logits), "features": np.asarray(features)}
  return {f"stage{i}": np.asarray(out[f"stage_{i + 1}"]).transpose(0, 3, 1, 2) for i in range(len(out))}


def _apply_fn(meta, module, capture):
  extra = dict(return_features=True) if _is_classifier(meta) else {}
  if capture:
    extra.update(capture_intermediates=_capture_blocks, mutable=["intermediates"])
  return jax.jit(lambda variables, x: module.apply(variables, x, **extra))


@pytest.fixture(scope="module", params=PP_FIXTURES)
def pp_run(request, official_fixtures_dir):
  """Loads one fixture, converts its weights and runs every supported case once (float32)."""
  name = request.param
  arrays, meta = load_fixture(official_fixtures_dir / f"{name}.npz")
  state_dict = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
  classifier = _is_classifier(meta)
  supported = [c for c, info in meta["cases"].items() if info.get("supported", True)]
  _, variables = from_official(state_dict, model="classifier" if classifier else "backbone",
                               **_case_kwargs(meta, supported[0]))
  modules, outputs, blocks = {}, {}, {}
  for case in supported:
    modules[case] = convert.module_from_official(_case_kwargs(meta, case), classifier)
    capture = bool(meta["cases"][case].get("debug_intermediates"))
    x = jnp.asarray(arrays[f"in/{case}"].transpose(0, 2, 3, 1))
    out = _apply_fn(meta, modules[case], capture)(variables, x)
    if capture:
      out, state = out
      blocks[case] = jax.tree.map(np.asarray, state["intermediates"])
    outputs[case] = _official_layout(meta, out)
  return dict(name=name, meta=meta, arrays=arrays, state_dict=state_dict, variables=variables,
              modules=modules, outputs=outputs, blocks=blocks)


def test_outputs_match_official(pp_run):
  arrays = pp_run["arrays"]
  assert len(pp_run["outputs"]) >= 2
  checked = 0
  for case, outs in pp_run["outputs"].items():
    wanted = sorted(k.rsplit("/", 1)[1] for k in arrays if k.startswith(f"out/{case}/"))
    assert wanted and set(wanted) <= set(outs), (case, wanted, sorted(outs))
    for key in wanted:
      want = arrays[f"out/{case}/{key}"]
      assert outs[key].shape == want.shape, (case, key)
      np.testing.assert_allclose(outs[key], want, atol=ATOL, rtol=RTOL,
                                 err_msg=f"{pp_run['name']} {case} {key}")
      checked += 1
  assert checked >= 4


def test_per_block_tokens_match_official(pp_run):
  """Tokens after the patch embedding and after every block (after its ACL) of the debug cases."""
  arrays, meta = pp_run["arrays"], pp_run["meta"]
  assert pp_run["blocks"], "the fixture has a debug case"
  for case, captured in pp_run["blocks"].items():
    keys = meta["cases"][case]["debug_intermediates"]
    assert len(keys) == sum(meta["constructor_kwargs"]["depths"]) + 1
    for key in keys:
      part = key.rsplit("/", 1)[1]
      name = "patch_embed" if part == "patch_embed" else "layers_{}_blocks_{}".format(
          *part.replace("stage", "").split("_block"))
      got, want = _find(captured, name), arrays[key]
      assert got is not None, f"no captured output for {name}"
      np.testing.assert_allclose(got.reshape(want.shape), want, atol=ATOL, rtol=RTOL, err_msg=key)


@pytest.mark.slow
def test_float64_matches_official_float64(pp_run):
  meta, arrays = pp_run["meta"], pp_run["arrays"]
  cases = sorted({k.split("/")[1] for k in arrays if k.startswith("out64/")},
                 key=lambda c: arrays[f"in/{c}"].size)
  assert cases, "the fixture has float64 references"
  case = cases[0]  # the smallest: one float64 compile per fixture
  with jax.enable_x64(True):
    module = pp_run["modules"][case]  # the dtype is the backbone's (a classifier composes one)
    module = (module.clone(backbone=module.backbone.clone(dtype=jnp.float64)) if isinstance(module, CrossFormer)
              else module.clone(dtype=jnp.float64))
    variables = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), pp_run["variables"])
    x = jnp.asarray(arrays[f"in/{case}"].transpose(0, 2, 3, 1), jnp.float64)
    outs = _official_layout(meta, _apply_fn(meta, module, False)(variables, x))
  for key in sorted(k.rsplit("/", 1)[1] for k in arrays if k.startswith(f"out64/{case}/")):
    assert outs[key].dtype == np.float64
    np.testing.assert_allclose(outs[key], arrays[f"out64/{case}/{key}"], atol=ATOL64, rtol=RTOL64,
                               err_msg=f"{case} {key}")


def test_rejected_sizes_raise_a_clear_error(pp_run):
  meta, arrays = pp_run["meta"], pp_run["arrays"]
  assert meta["errors"], "the fixture lists inputs the official code rejects"
  module = next(iter(pp_run["modules"].values()))
  for case in meta["errors"]:
    x = jnp.asarray(arrays[f"in/{case}"].transpose(0, 2, 3, 1))
    with pytest.raises(ValueError, match="nearest valid"):
      module.apply(pp_run["variables"], x)


def test_block_group_sizes_are_rederived(pp_run):
  """PGS per-block group sizes from the constructor's arguments (per case for the classifier)."""
  meta = pp_run["meta"]
  wanted = meta["block_group_size"]
  per_case = wanted if isinstance(wanted, dict) else {c: wanted for c in pp_run["modules"]}
  for case, sizes in per_case.items():
    module = convert.module_from_official(_case_kwargs(meta, case), _is_classifier(meta))
    assert [list(s) for s in _trunk(module).block_group_sizes] == sizes, case


def test_group_plans_reproduce_the_block_trace(pp_run):
  meta = pp_run["meta"]
  checked = 0
  for case, trace in meta["block_trace"].items():
    trunk = _trunk(convert.module_from_official(_case_kwargs(meta, case), _is_classifier(meta)))
    sizes = trunk.block_group_sizes
    intervals = per_stage(trunk.intervals, len(trunk.dims), "intervals")
    for block in trace:
      s, b = block["stage"], block["block"]
      g = sizes[s][b]
      plan = grouping.plan_groups(block["H"], block["W"], g, intervals[s], b % 2 == 1, trunk.lda_mode,
                                  trunk.adaptive_interval, trunk.pad_type)
      where = (case, s, b)
      assert ("LDA" if plan.long_distance else "SDA") == block["attn"], where
      assert list(plan.group_hw) == block["group_hw"], where
      assert list(plan.padded_hw) == block["padded_hw"], where
      assert plan.num_groups == block["num_groups_per_image"], where
      (_, bottom), (_, right) = plan.pad_widths
      assert (bottom, right) == (block["pad_bottom"], block["pad_right"]), where
      assert (plan.needs_mask and not trunk.no_mask) == block["masked"], where
      if block["attn"] == "LDA":
        assert plan.interval == block["interval"], where
      assert (trunk.use_acl and has_acl(b, trunk.depths[s])) == block["acl"], where
      if "small_map_fallback" in block:
        assert (min(block["H"], block["W"]) <= g) == block["small_map_fallback"], where
      checked += 1
  assert checked >= 2 * sum(meta["constructor_kwargs"]["depths"])
