"""Backbones in JAX/Flax, created by name from ``backbones.registry`` (CrossFormer registers its variants on
import); their weights live in ``backbones.weights``."""

from backbones.crossformer.convert import convert_state_dict, from_official
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone
from backbones.crossformer.sizes import check_input, pad_to_valid_size, padded_size, stage_sizes
from backbones.feature_info import FeatureInfo
from backbones.registry import (build_from_config, create_model, get_pretrained_cfg, list_models, load_variables,
                                model_info, register_backbone, register_family)
from backbones.weights.converted import load_backbone_params, load_converted, save_converted
from backbones.weights.hub import load_pretrained, save_pretrained

__all__ = [
    "CrossFormer", "CrossFormerBackbone", "FeatureInfo", "build_from_config", "check_input", "convert_state_dict",
    "create_model", "from_official", "get_pretrained_cfg", "list_models", "load_backbone_params", "load_converted",
    "load_pretrained", "load_variables", "model_info", "pad_to_valid_size", "padded_size", "register_backbone",
    "register_family", "save_converted", "save_pretrained", "stage_sizes",
]

