"""Official CrossFormer (reference section 1.4) and CrossFormer++ (section 6.2) variants, as
:class:`CrossFormerBackbone` arguments.

The CrossFormer++ variants are the released ImageNet classifiers (``configs/crossformer_pp/*.yaml``):
group sizes (4, 4, 14, 7) with intervals (4, 2, 1, 1), ``group_type`` constant, ACL on, main-branch LDA.
``features_only`` gives the same trunk. The official dense ++ task configs fine-tune with other
grouping (:data:`PP_DENSE_GROUPS`), which the ++ segmentation/detection configs set as overrides.
"""

from typing import Any, Dict

_COMMON = dict(group_sizes=(7, 7, 7, 7), intervals=(8, 4, 2, 1), patch_sizes=(4, 8, 16, 32),
               merge_sizes=((2, 4), (2, 4), (2, 4)), mlp_ratio=4.0)
_PP_COMMON = dict(group_sizes=(4, 4, 14, 7), intervals=(4, 2, 1, 1), group_type="constant", img_size=224,
                  use_acl=True, lda_mode="main")
# (group_sizes, intervals) of the official dense CrossFormer++ configs (CrossFormer_S2 with
# {detection,segmentation}/configs/crossformer_pp/*.py, adaptive_interval False).
PP_DENSE_GROUPS = ((7, 7, 7, 7), (8, 4, 2, 1))

VARIANTS: Dict[str, Dict[str, Any]] = {
    "crossformer_t": dict(dims=(64, 128, 256, 512), depths=(1, 1, 8, 6), num_heads=(2, 4, 8, 16),
                          drop_path_rate=0.1),
    "crossformer_s": dict(dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                          drop_path_rate=0.2),
    "crossformer_b": dict(dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                          drop_path_rate=0.3),
    "crossformer_l": dict(dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                          num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "crossformerpp_s": dict(_PP_COMMON, dims=(64, 128, 256, 512), depths=(2, 2, 18, 2),
                            num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    "crossformerpp_b": dict(_PP_COMMON, dims=(96, 192, 384, 768), depths=(2, 2, 18, 2),
                            num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    "crossformerpp_l": dict(_PP_COMMON, dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                            num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    "crossformerpp_h": dict(_PP_COMMON, dims=(128, 256, 512, 1024), depths=(6, 6, 18, 2),
                            num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
}


def variant_kwargs(name: str) -> Dict[str, Any]:
  """The backbone arguments of a named variant (a fresh dict)."""
  if name not in VARIANTS:
    raise ValueError(f"unknown CrossFormer variant {name!r}; available: {sorted(VARIANTS)}")
  return {**_COMMON, **VARIANTS[name]}
