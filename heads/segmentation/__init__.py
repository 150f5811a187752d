"""Semantic-segmentation decode heads (mmseg ``FPNHead``, ``UPerHead``, ``FCNHead``) in Flax."""

from heads.segmentation.semantic_fpn import FPNHead
from heads.segmentation.upernet import FCNHead, UPerHead

__all__ = ["FPNHead", "UPerHead", "FCNHead"]
