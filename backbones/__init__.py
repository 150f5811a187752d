"""CrossFormer backbones in JAX/Flax: the dense feature pyramid, the classifier and their checkpoints."""

from backbones.checkpoint_io import load_backbone_params, load_converted, save_converted
from backbones.crossformer.convert import convert_state_dict, from_official
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone
from backbones.crossformer.sizes import check_input, pad_to_valid_size, padded_size, stage_sizes
from backbones.factory import create_model, list_models, load_variables
from backbones.feature_info import FeatureInfo
from backbones.pretrained_cfg import get_pretrained_cfg

__all__ = [
    "CrossFormer", "CrossFormerBackbone", "FeatureInfo", "check_input", "convert_state_dict",
    "create_model", "from_official", "get_pretrained_cfg", "list_models", "load_backbone_params", "load_converted",
    "load_variables", "pad_to_valid_size", "padded_size", "save_converted", "stage_sizes",
]
