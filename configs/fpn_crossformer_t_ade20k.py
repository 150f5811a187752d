"""Semantic FPN + CrossFormer-T on ADE20K (official recipe, 80k iterations, batch 16).

CrossFormer-T has no official dense recipe: the S recipe with T's backbone.

python -m projects.segmentation.main --config configs/fpn_crossformer_t_ade20k.py --workdir DIR \
    --config.dataset.data_dir=TFDS_DIR --config.init_from.checkpoint_path=CONVERTED_IMAGENET_CKPT
"""

from configs import segmentation_base


def get_config():
  """Returns the job config."""
  return segmentation_base.semantic_fpn("t")
