"""RetinaNet + CrossFormer++-S on COCO 2017 (official ``retinanet_crossformerpp_s_fpn_1x_coco.py``: 1x,
batch 16, AdamW 1e-4; box AP 45.1); backbone G (7, 7, 7, 7), I (8, 4, 2, 1), ACL
(``configs/crossformerpp_base.py``).

python -m projects.detection.main --config configs/retinanet_crossformerpp_s_coco.py --workdir DIR \
    --config.dataset.data_dir=TFDS_DIR --config.dataset.manual_dir=COCO_DIR \
    --config.init_from.checkpoint_path=CONVERTED_PP_IMAGENET_CKPT
"""

from configs import crossformerpp_base
from configs import detection_base


def get_config():
  """Returns the job config."""
  return crossformerpp_base.use_pp_backbone(detection_base.retinanet("s"), "retinanet_crossformerpp_s_coco")
