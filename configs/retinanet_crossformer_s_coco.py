"""RetinaNet + CrossFormer-S on COCO 2017 (official 1x recipe: 12 epochs at batch 16, AdamW 1e-4; box AP 44.4).

python -m projects.detection.main --config configs/retinanet_crossformer_s_coco.py --workdir DIR \
    --config.dataset.data_dir=TFDS_DIR --config.dataset.manual_dir=COCO_DIR \
    --config.init_from.checkpoint_path=CONVERTED_IMAGENET_CKPT

The 12 epochs (step decay at epochs 8 and 11) are converted to steps from the prepared dataset's size and the
batch size at start-up (``configs/detection_base.py``).
"""

from configs import detection_base


def get_config():
  """Returns the job config."""
  return detection_base.retinanet("s")
