"""timm-style ``pretrained_cfg`` of every variant: what the released weights expect and what they score.

``get_pretrained_cfg("crossformer_s")`` gives the preprocessing (``mean``/``std`` on 0-1 pixels as timm
writes them, ``input_size``, ``crop_pct``, ``interpolation``), the official checkpoint file of the variant
(``file``: the name the official repository releases it under), its ImageNet-1K ``top1`` and the official
parameter / GFLOPs figures. The commands read ``mean``/``std`` from here (``backbones.preprocess``).
"""

from typing import Any, Dict

from backbones import preprocess

_COMMON = dict(
    num_classes=1000, input_size=(3, 224, 224), crop_pct=224 / 256, interpolation="bicubic",
    mean=tuple(round(m / 255, 6) for m in preprocess.IMAGENET_MEAN),
    std=tuple(round(s / 255, 6) for s in preprocess.IMAGENET_STD),
    license="mit", paper="arXiv:2108.00154", hf_hub_id=None,
)

# Official classification checkpoints (cheerss/CrossFormer README): file name, top-1, params, GFLOPs at 224.
PRETRAINED_CFGS: Dict[str, Dict[str, Any]] = {
    "crossformer_t": dict(file="crossformer-t.pth", top1=81.5, params_m=27.8, gflops=2.9),
    "crossformer_s": dict(file="crossformer-s.pth", top1=82.5, params_m=30.7, gflops=4.9),
    "crossformer_b": dict(file="crossformer-b.pth", top1=83.4, params_m=52.0, gflops=9.2),
    "crossformer_l": dict(file="crossformer-l.pth", top1=84.0, params_m=92.0, gflops=16.1),
}


def get_pretrained_cfg(name: str) -> Dict[str, Any]:
  """The pretrained_cfg of variant ``name`` (a fresh dict)."""
  if name not in PRETRAINED_CFGS:
    raise ValueError(f"no pretrained_cfg for {name!r}; available: {sorted(PRETRAINED_CFGS)}")
  return {"architecture": name, **_COMMON, **PRETRAINED_CFGS[name]}
