"""CrossFormer++ backbones in the segmentation and detection recipes (the official ++ dense configs).

The official ++ task configs (``{segmentation,detection}/configs/crossformer_pp/*.py``, branch main) train
``CrossFormer_S2``: the ++-S widths (embed 64, depths (2, 2, 18, 2), heads (2, 4, 8, 16)), ACL on,
drop_path 0.2, main-branch LDA, with group sizes (7, 7, 7, 7) and intervals (8, 4, 2, 1)
(``adaptive_interval`` False), not the ImageNet classifier's PGS (4, 4, 14, 7) / (4, 2, 1, 1): the
classification checkpoint is fine-tuned with other groups. Their optimizer, schedule, data and heads are
those of the CrossFormer-S recipes; the neck / decode-head ``in_channels`` (64, 128, 256, 512) and the
UPerNet auxiliary head's 256 follow from the backbone. Official ++ dense configs exist for ++-S only
(RetinaNet and Mask R-CNN 1x, Semantic FPN 80k, UPerNet 160k).
"""

import ml_collections

from backbones import registry
from backbones.crossformer.variants import PP_DENSE_GROUPS
from configs import common


def backbone_config(variant: str = "s") -> ml_collections.ConfigDict:
  """``config.model.backbone`` for CrossFormer++-``variant`` with the official dense ++ grouping."""
  name = f"crossformerpp_{variant}"
  config = common.backbone_config("s", *PP_DENSE_GROUPS)  # the v1 keys; name, rate and LDA set below
  config.name = name
  config.drop_path_rate = registry.variant_kwargs(name)["drop_path_rate"]
  config.lda_mode = "main"
  return config


def use_pp_backbone(config: ml_collections.ConfigDict, experiment_name: str,
                    variant: str = "s") -> ml_collections.ConfigDict:
  """Puts the CrossFormer++-``variant`` backbone into a CrossFormer recipe ``config`` (in place)."""
  config.experiment_name = experiment_name
  config.model.backbone = backbone_config(variant)
  return config
