"""Semantic FPN + CrossFormer++-S on ADE20K (official ``fpn_crossformerpp_s_ade20k_40k.py``: 80k iterations,
batch 16, mIoU 47.4); backbone G (7, 7, 7, 7), I (8, 4, 2, 1), ACL (``configs/crossformerpp_base.py``).

python -m projects.segmentation.main --config configs/fpn_crossformerpp_s_ade20k.py --workdir DIR \
    --config.dataset.data_dir=TFDS_DIR --config.init_from.checkpoint_path=CONVERTED_PP_IMAGENET_CKPT
"""

from configs import crossformerpp_base
from configs import segmentation_base


def get_config():
  """Returns the job config."""
  return crossformerpp_base.use_pp_backbone(segmentation_base.semantic_fpn("s"), "fpn_crossformerpp_s_ade20k")
