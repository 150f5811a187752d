"""UPerNet + CrossFormer-B on ADE20K (official recipe, 160k iterations, batch 16).

python -m projects.segmentation.main --config configs/upernet_crossformer_b_ade20k.py --workdir DIR \
    --config.dataset.data_dir=TFDS_DIR --config.init_from.checkpoint_path=CONVERTED_IMAGENET_CKPT
"""

from configs import segmentation_base


def get_config():
  """Returns the job config."""
  return segmentation_base.upernet("b")
