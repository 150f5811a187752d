"""The official CrossFormer architecture (arXiv 2108.00154) and its checkpoint conversion."""

from backbones.crossformer.convert import from_official
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone

__all__ = ["CrossFormer", "CrossFormerBackbone", "from_official"]
