"""Loads the official PyTorch CrossFormer dense backbone from a local checkout, for side-by-side timing.

The official repository (github.com/cheerss/CrossFormer, branch ``crossformer``) is never copied into this
project: the benchmarks import ``models/crossformer_backbone.py`` from the checkout named by
``--official`` or ``$CROSSFORMER_OFFICIAL`` and skip the official column when it (or torch) is absent.
That file imports timm, mmcv and mmdet for four helpers; where those packages are not installed, small
stand-ins written here are registered for the import (stochastic depth, a pair helper, a truncated
normal initialiser, a logger), so only torch is needed (the ``torch`` extra).
"""

import importlib.util
import logging
import os
import sys
import types
from typing import Any, Optional

OFFICIAL_ENV = "CROSSFORMER_OFFICIAL"
BACKBONE_FILE = os.path.join("models", "crossformer_backbone.py")
# The official CrossFormer-S dense configuration (detection/segmentation crossformer_factory.py).
S_KWARGS = dict(patch_size=[4, 8, 16, 32], in_chans=3, embed_dim=96, depths=[2, 2, 6, 2],
                num_heads=[3, 6, 12, 24], group_size=[7, 7, 7, 7], crs_interval=[8, 4, 2, 1], mlp_ratio=4,
                qkv_bias=True, qk_scale=None, drop_rate=0.0, drop_path_rate=0.2, patch_norm=True,
                use_checkpoint=False, merge_size=[[2, 4], [2, 4], [2, 4]])


def official_root(path: Optional[str] = None, check_torch: bool = True) -> Optional[str]:
  """The official checkout to use (argument, else ``$CROSSFORMER_OFFICIAL``), or None when unusable.

  ``check_torch=False`` when another interpreter (one with torch) runs the official side.
  """
  path = path or os.environ.get(OFFICIAL_ENV)
  if not path or not os.path.isfile(os.path.join(path, BACKBONE_FILE)):
    return None
  if not check_torch:
    return path
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  return path


def _stand_ins(torch) -> dict:
  """Minimal replacements for the four third-party helpers the official file imports."""

  class DropPath(torch.nn.Module):
    """Per-sample stochastic depth."""

    def __init__(self, drop_prob: float = 0.0):
      super().__init__()
      self.drop_prob = drop_prob

    def forward(self, x):
      if not self.training or self.drop_prob == 0.0:
        return x
      keep = 1.0 - self.drop_prob
      mask = torch.rand((x.shape[0],) + (1,) * (x.ndim - 1), dtype=x.dtype, device=x.device) < keep
      return x * mask / keep

  def to_2tuple(value):
    return tuple(value) if isinstance(value, (tuple, list)) else (value, value)

  def trunc_normal_(tensor, std=1.0):
    return torch.nn.init.trunc_normal_(tensor, std=std, a=-2 * std, b=2 * std)

  def load_checkpoint(*args, **kwargs):
    raise NotImplementedError("the benchmark never loads official checkpoints")

  layers = types.ModuleType("timm.models.layers")
  layers.DropPath, layers.to_2tuple, layers.trunc_normal_ = DropPath, to_2tuple, trunc_normal_
  mmdet_utils = types.ModuleType("mmdet.utils")
  mmdet_utils.get_root_logger = lambda *a, **k: logging.getLogger("official")
  mmcv_runner = types.ModuleType("mmcv.runner")
  mmcv_runner.load_checkpoint = load_checkpoint
  modules = {"timm.models.layers": layers, "mmdet.utils": mmdet_utils, "mmcv.runner": mmcv_runner}
  for name in ("timm", "timm.models", "mmdet", "mmcv"):
    modules[name] = types.ModuleType(name)
  return modules


def load_backbone_module(root: str) -> Any:
  """Imports the official ``crossformer_backbone.py`` from ``root`` (stand-ins only for missing packages)."""
  import torch  # pylint: disable=g-import-not-at-top
  added = []
  for name, module in _stand_ins(torch).items():
    try:
      importlib.import_module(name)
    except ImportError:
      sys.modules[name] = module
      added.append(name)
  try:
    spec = importlib.util.spec_from_file_location("official_crossformer_backbone",
                                                  os.path.join(root, BACKBONE_FILE))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
  finally:
    for name in added:
      sys.modules.pop(name, None)
  return module


def crossformer_s(root: str, image_hw=(224, 224)) -> Any:
  """The official CrossFormer-S dense backbone (random init), float32, returning the 4 stage maps."""
  module = load_backbone_module(root)
  return module.CrossFormer(img_size=list(image_hw), num_classes=1000, **S_KWARGS)
