"""Mask R-CNN + CrossFormer-B on COCO 2017 (official 1x recipe: 12 epochs at batch 16, AdamW 1e-4; 47.2 box / 42.7
mask AP).

python -m projects.detection.main --config configs/mask_rcnn_crossformer_b_coco.py --workdir DIR \
    --config.dataset.data_dir=TFDS_DIR --config.dataset.manual_dir=COCO_DIR \
    --config.init_from.checkpoint_path=CONVERTED_IMAGENET_CKPT

Instance masks need the ``coco_tree`` builder on the extracted COCO tree (the stock tfds ``coco/2017`` stores no
masks): ``python -m projects.detection.data.prepare_coco --builder coco_tree --manual_dir COCO_DIR --data_dir
TFDS_DIR``. The 12 epochs (step decay at epochs 8 and 11) are converted to steps from the prepared dataset's size
and the batch size at start-up (``configs/detection_base.py``). COCO ``bbox`` and ``segm`` AP every epoch.
"""

from configs import detection_base


def get_config():
  """Returns the job config."""
  return detection_base.mask_rcnn("b")
