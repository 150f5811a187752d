"""A tiny CrossFormer + Mask R-CNN trained on the synthetic COCO-format dataset: the instance-segmentation demo.

python -m projects.detection.main --config configs/tiny_coco_instance.py --workdir workdirs/tiny_coco_instance

(``make demo-instance``.) On first use it writes the synthetic COCO-format tree (``make_synthetic_coco``: three
shape categories with polygon and RLE segmentations, a crowd region, an image without objects) and builds it
with the real ``coco_tree`` builder into ``<workdir>/data`` (or ``--config.dataset.data_dir``); then it trains
Mask R-CNN with the structure of the official 1x recipe (AdamW, epoch-based step decay with linear warm-up,
keep-ratio resize, flip, pad to 32, instance masks through the pipeline) at a small scale, evaluates COCO box
and mask AP and writes ``coco_bbox_detections.json``, ``coco_segm_detections.json`` (RLE masks),
``eval_results.json`` and ``detections.png`` (masks as coloured overlays) into the workdir.

Scale: images resized keep-ratio into 192 x 192 (one padded bucket; the synthetic images are 96 to 192
pixels); a 32-wide CrossFormer with one block per stage, a 32-channel FPN / RPN, a 64-wide box head and a 2-conv
32-channel mask head; fewer proposals and RoI
samples than the full recipe (the images hold at most four objects): 1.3 CPU-seconds per training step.

Schedule: the 1x recipe's shape at a small scale -- 12 epochs of the 127 training images with objects at batch
8 (192 steps), learning rate x0.1 after epochs 8 and 11, a 20-step warm-up, AdamW 5e-4; evaluation after
epochs 6 and 12. Measured (2 CPU cores shared with other jobs, load ~25): box AP 0.573 (AP50 0.694), mask AP
0.588 (AP50 0.714, AP75 0.653) on the 32 validation images; 0.440 / 0.491 after epoch 6. 337 CPU-seconds in
all (205 user + 132 system: data generation and preparation, compilation, training, two evaluations); the
wall time of 31 min was set by the load, not measurable here on an idle machine.
"""

from configs import common
from configs import detection_base


def get_config():
  """Returns the tiny instance-segmentation job config."""
  config = detection_base.mask_rcnn("s")
  config.experiment_name = "tiny_coco_instance"
  config.batch_size = config.eval_batch_size = 8
  config.log_summary_steps = 20
  config.max_checkpoint_keep = 1
  config.synthetic_data = dict(num_train=128, num_val=32, seed=0, manual_dir=None)
  config.dataset = detection_base.dataset_config(
      image_scale=(192, 192), bucket_aspect_ratios=(1.0,), max_boxes=8, with_masks=True)
  config.model.backbone = common.backbone_config(
      "s", group_sizes=(8, 8, 8, 8), intervals=(8, 4, 2, 1), embed_dim=32, depths=(1, 1, 1, 1),
      num_heads=(1, 2, 4, 8))
  config.model.backbone.drop_path_rate = 0.0
  config.model.neck.out_channels = 32
  config.model.rpn_head.feat_channels = 32
  config.model.bbox_head.fc_out_channels = 64
  config.model.mask_head.conv_out_channels = 32
  config.model.mask_head.num_convs = 2
  config.model.train_cfg.rpn_nms_pre = 200
  config.model.train_cfg.rpn_max_per_img = 100
  config.model.train_cfg.rcnn_num = 64
  config.model.test_cfg.rpn_nms_pre = 200
  config.model.test_cfg.rpn_max_per_img = 50
  config.model.test_cfg.max_per_img = 20
  common.adamw(config, weight_decay=1e-4)
  config.lr_configs = common.mmcv_lr_configs(5e-4, policy="step", milestones=(), gamma=0.1, warmup_steps=20,
                                             warmup_ratio=0.01)
  config.lr_configs.gamma = 0.1
  # 128 training images (127 with objects) at batch 8: 16 steps per epoch (recomputed at start-up).
  detection_base.epoch_schedule(config, num_epochs=12, milestone_epochs=(8, 11), num_images=127)
  config.eval_every_epochs = config.checkpoint_every_epochs = 6
  config.log_eval_steps = config.checkpoint_steps = 6 * 16
  config.num_visualized_images = 4
  return config
