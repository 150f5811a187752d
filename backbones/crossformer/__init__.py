"""The official CrossFormer architecture (arXiv 2108.00154), its checkpoint conversion and its variants
(registered in ``backbones.registry`` on import)."""

from backbones.crossformer import variants  # noqa: F401  (registers the variants)
from backbones.crossformer.convert import from_official
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone

__all__ = ["CrossFormer", "CrossFormerBackbone", "from_official"]
