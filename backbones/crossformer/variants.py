"""Official CrossFormer (reference section 1.4) and CrossFormer++ (section 6.2) variants, registered in
``backbones.registry``: architecture arguments (:class:`CrossFormerBackbone` fields, drop-path rate
included) and the timm-style pretrained_cfg of the released ImageNet-1K classifiers.

The CrossFormer++ variants are the released ImageNet classifiers (``configs/crossformer_pp/*.yaml``):
group sizes (4, 4, 14, 7) with intervals (4, 2, 1, 1), ``group_type`` constant, ACL on, main-branch LDA.
``features_only`` gives the same trunk. The official dense ++ task configs fine-tune with other
grouping (:data:`PP_DENSE_GROUPS`), which the ++ segmentation/detection configs set as overrides.

Drop-path rates are the official classification configs'; the official dense factories use the same
rates for S/B/L (T has no dense config: its classification value is used).
"""

from backbones import preprocess
from backbones import registry
from backbones.crossformer import build
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone

FAMILY = "crossformer"
_COMMON = dict(group_sizes=(7, 7, 7, 7), intervals=(8, 4, 2, 1), patch_sizes=(4, 8, 16, 32),
               merge_sizes=((2, 4), (2, 4), (2, 4)), mlp_ratio=4.0)
_PP_COMMON = dict(_COMMON, group_sizes=(4, 4, 14, 7), intervals=(4, 2, 1, 1), group_type="constant", img_size=224,
                  use_acl=True, lda_mode="main")
# (group_sizes, intervals) of the official dense CrossFormer++ configs (CrossFormer_S2 with
# {detection,segmentation}/configs/crossformer_pp/*.py, adaptive_interval False).
PP_DENSE_GROUPS = ((7, 7, 7, 7), (8, 4, 2, 1))
# pretrained_cfg entries shared by every variant (timm writes mean/std on 0-1 pixels).
PRETRAINED_DEFAULTS = dict(
    num_classes=1000, input_size=(3, 224, 224), crop_pct=224 / 256, interpolation="bicubic",
    mean=tuple(round(m / 255, 6) for m in preprocess.IMAGENET_MEAN),
    std=tuple(round(s / 255, 6) for s in preprocess.IMAGENET_STD),
    license="mit", paper="arXiv:2108.00154", hf_hub_id=None, url=None,
)
_PP_PAPER = "arXiv:2303.06908"

registry.register_family(registry.Family(
    name=FAMILY, modules=(CrossFormerBackbone, CrossFormer), create=build.create,
    from_config=build.from_config, load_variables=build.load_variables, pretrained_defaults=PRETRAINED_DEFAULTS))

# Official classification checkpoints (cheerss/CrossFormer README): ``file`` is the name the docs tell users
# to save the (unnamed) download as; top-1, params (M), GFLOPs at 224. CrossFormer++ (main branch, released on
# BaiduCloud only): README params/GFLOPs, whose 4.9 G for ++-S no count of the code reproduces (its own
# flops() gives 4.39 G).
registry.register_backbone(
    "crossformer_t", FAMILY, dict(_COMMON, dims=(64, 128, 256, 512), depths=(1, 1, 8, 6), num_heads=(2, 4, 8, 16),
                                  drop_path_rate=0.1),
    file="crossformer-t.pth", top1=81.5, params_m=27.8, gflops=2.9)
registry.register_backbone(
    "crossformer_s", FAMILY, dict(_COMMON, dims=(96, 192, 384, 768), depths=(2, 2, 6, 2), num_heads=(3, 6, 12, 24),
                                  drop_path_rate=0.2),
    file="crossformer-s.pth", top1=82.5, params_m=30.7, gflops=4.9)
registry.register_backbone(
    "crossformer_b", FAMILY, dict(_COMMON, dims=(96, 192, 384, 768), depths=(2, 2, 18, 2), num_heads=(3, 6, 12, 24),
                                  drop_path_rate=0.3),
    file="crossformer-b.pth", top1=83.4, params_m=52.0, gflops=9.2)
registry.register_backbone(
    "crossformer_l", FAMILY, dict(_COMMON, dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                                  num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    file="crossformer-l.pth", top1=84.0, params_m=92.0, gflops=16.1)
registry.register_backbone(
    "crossformerpp_s", FAMILY, dict(_PP_COMMON, dims=(64, 128, 256, 512), depths=(2, 2, 18, 2),
                                    num_heads=(2, 4, 8, 16), drop_path_rate=0.2),
    file="crossformer++-s.pth", top1=83.2, params_m=23.3, gflops=4.9, paper=_PP_PAPER)
registry.register_backbone(
    "crossformerpp_b", FAMILY, dict(_PP_COMMON, dims=(96, 192, 384, 768), depths=(2, 2, 18, 2),
                                    num_heads=(3, 6, 12, 24), drop_path_rate=0.3),
    file="crossformer++-b.pth", top1=84.2, params_m=52.0, gflops=9.5, paper=_PP_PAPER)
registry.register_backbone(
    "crossformerpp_l", FAMILY, dict(_PP_COMMON, dims=(128, 256, 512, 1024), depths=(2, 2, 18, 2),
                                    num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    file="crossformer++-l.pth", top1=84.7, params_m=92.0, gflops=16.6, paper=_PP_PAPER)
registry.register_backbone(
    "crossformerpp_h", FAMILY, dict(_PP_COMMON, dims=(128, 256, 512, 1024), depths=(6, 6, 18, 2),
                                    num_heads=(4, 8, 16, 32), drop_path_rate=0.5),
    file="crossformer++-h.pth", top1=84.9, params_m=96.0, gflops=21.8, paper=_PP_PAPER)
