"""CrossFormer++: PGS group sizes, ACL placement, options, variants and checkpoint conversion."""

import json

import flax
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from backbones import (CrossFormer, CrossFormerBackbone, create_model, from_official, load_backbone_params,
                       load_converted, save_converted)
from backbones.crossformer import convert, grouping
from backbones.crossformer.model import CrossFormerBlock, has_acl
from backbones.crossformer.variants import PP_DENSE_GROUPS
from projects.parity.report import load_fixture

# Official parameter counts (reference section 6.2): classifier, dense backbone (None: not published).
PP_COUNTS = {"s": (23_325_340, 22_811_316), "b": (51_994_594, 51_224_058), "l": (92_001_904, None),
             "h": (95_962_944, None)}


def _count(tree):
  return sum(int(np.prod(v.shape)) for v in jax.tree.leaves(tree))


@pytest.mark.parametrize("depths,group_type,resolution,want", [
    # Reference section 6.3 at R = 56 (224 input), R = 64 (256) and R = 256 (the seg factories' 1024).
    ((2, 2, 18, 2), "linear", 56,
     [[4, 7], [5, 6], [4, 4, 5, 5, 6, 6, 7, 7, 8, 9, 9, 10, 10, 11, 11, 12, 12, 13], [7, 7]]),
    ((2, 2, 18, 2), "alter", 56, [[4, 7], [5, 6], [4, 4, 5, 5, 6, 6, 7, 7, 7, 14, 7, 14, 7, 14, 7, 14, 7, 14],
                                  [7, 7]]),
    ((2, 2, 18, 2), "linear_div", 56, [[4, 7], [5, 6], [4, 4, 5, 5, 6, 6, 7, 7, 7, 7, 7, 7, 7, 7, 14, 14, 14,
                                                        14], [7, 7]]),
    ((2, 2, 18, 2), "7_14", 56, [[4, 4], [4, 4], [7, 7, 7, 7] + [14] * 14, [7, 7]]),
    ((2, 2, 18, 2), "constant", 56, [[4, 4], [4, 4], [14] * 18, [7, 7]]),
    ((2, 2, 6, 2), "linear", 56, [[4, 9], [7, 9], [6, 7, 8, 9, 10, 11], [6, 7]]),
    ((2, 2, 6, 2), "linear", 64, [[4, 9], [7, 10], [6, 8, 9, 10, 11, 13], [7, 8]]),
])
def test_progressive_group_sizes_match_official(depths, group_type, resolution, want):
  got = grouping.progressive_group_sizes((4, 4, 14, 7), depths, resolution, group_type)
  assert [list(s) for s in got] == want


def test_pgs_scales_with_the_design_resolution_not_the_input():
  sizes = grouping.block_group_sizes((4, 4, 14, 7), (2, 2, 18, 2), (1024, 1024), 4, "linear")
  assert sizes[0] == (4, 15) and sizes[1] == (13, 18) and sizes[2][0] == 12 and sizes[2][-1] == 57
  assert sizes[3] == (30, 31)
  model = CrossFormerBackbone(dims=(16, 32, 64, 128), depths=(2, 2, 2, 2), num_heads=(1, 1, 2, 4),
                              group_type="linear", img_size=256, lda_mode="main")
  assert model.block_group_sizes == grouping.progressive_group_sizes((7,) * 4, (2, 2, 2, 2), 64, "linear")
  # Per-block lists are taken as given.
  per_block = ((4,), (5, 6), (7,), (3,))
  assert CrossFormerBackbone(depths=(1, 2, 1, 1), group_sizes=per_block).block_group_sizes == per_block
  with pytest.raises(ValueError, match="group_type must be one of"):
    CrossFormerBackbone(group_type="quadratic", lda_mode="main")
  with pytest.raises(ValueError, match="do not match depths"):
    CrossFormerBackbone(depths=(1, 1, 1, 1), group_sizes=((4, 4), (4,), (4,), (4,)))


@pytest.mark.parametrize("variant", ["s", "b"])
def test_acl_blocks_follow_the_official_rule(official_fixtures_dir, variant):
  meta = json.loads((official_fixtures_dir / f"keys_crossformer_pp_{variant}_cls.json").read_text())
  depths = meta["config"]["depths"]
  ours = [[s, b] for s, d in enumerate(depths) for b in range(d) if has_acl(b, d)]
  assert ours == meta["acl_blocks"]
  assert sum(has_acl(b, d) for d in (6, 6, 18, 2) for b in range(d)) == 7  # ++-H
  assert not any(has_acl(b, 3) for b in range(3))  # never the last block of a stage


def test_adaptive_interval_and_centred_padding():
  # Classifier at 224 with G (4, 4, 14, 7): adaptive intervals (14, 7, 1, 1), no padding (reference 6.6).
  for hw, g, want in ((56, 4, 14), (28, 4, 7)):
    plan = grouping.plan_groups(hw, hw, g, 99, True, "main", adaptive_interval=True)
    assert plan.interval == want and plan.padded_hw == (hw, hw) and not plan.needs_mask
  plan = grouping.plan_groups(13, 21, 4, 2, True, "main", pad_type=1)
  assert plan.padded_hw == (16, 24) and plan.pad_widths == ((1, 2), (1, 2))
  x = jnp.arange(16 * 24, dtype=jnp.float32).reshape(1, 16, 24, 1)
  np.testing.assert_array_equal(grouping.ungroup(grouping.group(x, plan), plan), x)
  bias = grouping.key_padding_bias(plan)
  masked = np.asarray(grouping.ungroup(jnp.asarray(bias)[None, :, :, None], plan))[0, :, :, 0] != 0
  assert not masked[1:14, 1:22].any() and masked[0].all() and masked[:, -2:].all()
  assert masked.sum() == 16 * 24 - 13 * 21
  with pytest.raises(ValueError, match="only with lda_mode='main'"):
    grouping.plan_groups(13, 21, 4, 2, True, "v1", pad_type=1)


def test_block_options_change_only_padded_maps():
  """``no_mask`` and ``pad_type`` only matter where a map is padded (ACL numerics: the parity tests)."""
  x = jax.random.normal(jax.random.PRNGKey(0), (1, 10, 14, 32))  # G 4: padded to 12 x 16
  block = CrossFormerBlock(num_heads=1, group_size=4, interval=1, long_distance=False, lda_mode="main")
  variables = block.init(jax.random.PRNGKey(1), x)
  base = block.apply(variables, x)
  for option in (dict(no_mask=True), dict(pad_type=1)):
    assert float(jnp.abs(block.clone(**option).apply(variables, x) - base).max()) > 1e-3, option
  unpadded = x[:, :8, :12]
  np.testing.assert_array_equal(block.clone(no_mask=True).apply(variables, unpadded),
                                block.apply(variables, unpadded))


@pytest.mark.parametrize("variant", sorted(PP_COUNTS))
def test_pp_variants_have_the_official_parameter_counts(variant):
  classifier = create_model(f"crossformerpp_{variant}", features_only=False)
  assert classifier.backbone.lda_mode == "main" and classifier.backbone.use_acl
  assert classifier.backbone.group_sizes == (4, 4, 14, 7) and classifier.backbone.intervals == (4, 2, 1, 1)
  shapes = convert.expected_param_shapes(classifier)
  n_cls = sum(int(np.prod(s)) for s in shapes.values())
  n_trunk = sum(int(np.prod(s)) for k, s in shapes.items() if k[0] == "backbone")
  want_cls, want_dense = PP_COUNTS[variant]
  assert n_cls == want_cls
  if want_dense is not None:
    dense = create_model(f"crossformerpp_{variant}", features_only=True)
    assert dense.feature_info.channels() == list(classifier.backbone.dims)
    assert sum(int(np.prod(s)) for s in convert.expected_param_shapes(dense).values()) == want_dense
    assert n_trunk == want_dense


def test_pp_checkpoint_converts_and_feeds_the_dense_backbone(official_fixtures_dir, tmp_path):
  """A random ++-S state_dict with the official keys and shapes: classifier, then dense backbone."""
  meta = json.loads((official_fixtures_dir / "keys_crossformer_pp_s_cls.json").read_text())
  rng = np.random.default_rng(0)
  state_dict = {k["key"]: rng.standard_normal(k["shape"]).astype(k["dtype"]) for k in meta["keys"]}
  module, variables = from_official({"model": state_dict}, **meta["config"])
  assert isinstance(module, CrossFormer) and module.backbone.lda_mode == "main" and module.backbone.use_acl
  assert module.backbone.mlp_ratio == (4.0, 4.0, 4.0, 4.0)
  assert _count(variables) == meta["num_params"]
  flat = flax.traverse_util.flatten_dict(variables["params"])
  assert len(flat) == meta["num_state_dict_entries"]
  conv = flat[("backbone", "layers_2_blocks_5", "ex_conv", "kernel")]
  np.testing.assert_array_equal(conv, state_dict["layers.2.blocks.5.ex_conv.weight"].transpose(2, 3, 1, 0))
  np.testing.assert_array_equal(flat[("backbone", "layers_2_blocks_5", "ex_ln", "scale")],
                                state_dict["layers.2.blocks.5.ex_ln.weight"])
  # The same checkpoint file feeds the dense ++-S with the official dense configs' grouping.
  path = tmp_path / "crossformerpp_s.npz"
  np.savez(path, **state_dict)
  dense, dense_vars = create_model("crossformerpp_s", features_only=True, group_sizes=PP_DENSE_GROUPS[0],
                                   intervals=PP_DENSE_GROUPS[1], checkpoint=str(path))
  assert _count(dense_vars) == meta["dense_backbone"]["num_params"]
  jax.tree.map(np.testing.assert_array_equal, dense_vars["params"], variables["params"]["backbone"])


def test_pp_converted_file_round_trips_and_feeds_the_dense_backbone(official_fixtures_dir, tmp_path):
  """The ++ classifier fixture through a converted file gives the dense fixture's backbone exactly."""
  names = ("public_cls_pp", "public_backbone_pp")
  metas, sds = {}, {}
  for n in names:
    arrays, metas[n] = load_fixture(official_fixtures_dir / f"{n}.npz")
    sds[n] = {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}
  module, variables = from_official(sds["public_cls_pp"], **metas["public_cls_pp"]["constructor_kwargs"])
  path = save_converted(tmp_path / "pp.msgpack", module, variables)
  restored, restored_vars = load_converted(path)
  assert restored == module
  jax.tree.map(np.testing.assert_array_equal, restored_vars, jax.tree.map(np.asarray, variables))
  dense, dense_vars = from_official(sds["public_backbone_pp"],
                                    **metas["public_backbone_pp"]["constructor_kwargs"])
  # The dense constructor's own img_size and scalar mlp_ratio; everything else is the classifier's trunk.
  assert dense == CrossFormerBackbone(**{**restored.backbone_kwargs(), "img_size": (1024, 1024),
                                         "mlp_ratio": 4.0})
  jax.tree.map(np.testing.assert_array_equal, load_backbone_params(path), dense_vars["params"])


def test_official_pp_options():
  dense = convert.module_from_official({"use_acl": True, "pad_type": 1, "no_mask": True}, classifier=False)
  assert dense.lda_mode == "main" and dense.use_acl and dense.pad_type == 0 and not dense.no_mask
  cls = convert.module_from_official({"use_acl": True, "pad_type": 1, "no_mask": True,
                                      "crs_interval": [4, 2, 1, 1]}, classifier=True)
  assert cls.backbone.pad_type == 1 and cls.backbone.no_mask
  assert convert.module_from_official({"mlp_ratio": [4, 4, 4, 4], "crs_interval": [8, 4, 2, 1]},
                                      classifier=True).backbone.lda_mode == "main"
  assert convert.module_from_official({"use_acl": False}, classifier=False).lda_mode == "v1"
  with pytest.raises(ValueError, match="official CPE is broken"):
    convert.module_from_official({"use_cpe": True}, classifier=False)
  with pytest.raises(ValueError, match="set lda_mode='main'"):
    convert.module_from_official({"use_acl": True}, classifier=False, lda_mode="v1")
  with pytest.raises(ValueError, match="set lda_mode='main'"):
    create_model("crossformerpp_s", lda_mode="v1")


@pytest.mark.parametrize("name", ["upernet_crossformerpp_s_ade20k", "fpn_crossformerpp_s_ade20k",
                                  "retinanet_crossformerpp_s_coco"])
def test_pp_task_configs_use_the_official_dense_settings(name):
  """The official ++ dense configs: ++-S widths, ACL, G (7, 7, 7, 7), I (8, 4, 2, 1), main LDA."""
  import importlib  # pylint: disable=import-outside-toplevel
  cfg = importlib.import_module(f"configs.{name}").get_config().model.backbone
  backbone = create_model(cfg.name, drop_path_rate=cfg.drop_path_rate, lda_mode=cfg.lda_mode,
                          **cfg.overrides.to_dict())
  assert backbone.feature_info.channels() == [64, 128, 256, 512]
  assert backbone.use_acl and backbone.lda_mode == "main" and backbone.drop_path_rate == 0.2
  assert (backbone.group_sizes, backbone.intervals) == PP_DENSE_GROUPS
  assert not backbone.adaptive_interval
