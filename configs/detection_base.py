"""COCO detection recipes of the official CrossFormer code (reference §2.2, §2.4), as configs.

``retinanet(variant)`` returns a complete RetinaNet-CrossFormer-``variant`` 1x job config and ``mask_rcnn(variant)``
the Mask R-CNN one; the per-recipe files (``configs/retinanet_crossformer_s_coco.py``, ``..._b_coco.py``,
``configs/mask_rcnn_crossformer_{s,b}_coco.py``) are one-line ``get_config()`` wrappers and the tiny jobs
(``configs/tiny_coco.py``, ``configs/tiny_coco_instance.py``) shrink one. ``config.model_name`` selects the
model (``projects.registry``; the model class declares what the job needs to know: ``iou_types``, masks).
Trainer / optimizer keys (Scenic's names) come from ``configs.common``, model keys are those of
``projects.detection.models.retinanet.RetinaNetModel`` / ``projects.detection.models.mask_rcnn.MaskRCNNModel``,
dataset keys (plain values, ``DATASET_DEFAULTS``) those of ``projects.detection.data.input_pipeline.get_dataset``.

Recipe (``detection/configs/retinanet_crossformer_{s,b}_fpn_1x_coco.py``, mmdet 2.x):
* Backbone CrossFormer-S (drop_path 0.2) / -B (drop_path 0.3), G = (7, 7, 7, 7), I = (8, 4, 2, 1), all four
  stages to an FPN (256 channels, ``start_level=1``, ``add_extra_convs="on_input"``, 5 outputs P3-P7).
* RetinaHead: 4 stacked 3x3 convs of 256 channels, 9 anchors (3 scales x 3 ratios, octave base scale 4),
  focal loss (gamma 2, alpha 0.25) + L1 on the deltas, MaxIoU assignment 0.5 / 0.4.
* AdamW lr 1e-4, weight decay 1e-4, no gradient clipping; batch 16.
* 1x schedule: 12 epochs, learning rate x0.1 at the starts of epochs 9 and 12 (mmcv ``step=[8, 11]``), linear
  warm-up over 500 iterations from ratio 0.001.
* Data: ``Resize(1333, 800)`` keep-ratio, flip 0.5, Normalize, ``Pad`` to a multiple of 32; images without
  annotations are skipped.
* Test: ``nms_pre`` 1000, score > 0.05, NMS IoU 0.5, 100 detections per image; evaluation every epoch.

Mask R-CNN recipe (``detection/configs/crossformer/mask_rcnn_crossformer_{s,b}_fpn_1x_coco.py`` on mmdet's
``mask_rcnn_r50_fpn.py`` and ``coco_instance.py``): the same backbones, optimizer (AdamW lr 1e-4, weight decay
1e-4 -- the official files say 1e-4, not the 0.05 of some later Swin-style recipes), warm-up, 1x schedule,
batch 16 and data pipeline as RetinaNet, with ``LoadAnnotations(with_mask=True)`` (``dataset.with_masks``, set
by the job); an FPN of 256 channels on all four stages with 5 outputs P2-P6 (P6 by max-pool), RPN (3 anchors per
location, scale 8, strides 4-64), RoIAlign 7x7 / 14x14 (``finest_scale`` 56), Shared2FC box head (1024) and a
4-conv FCN mask head (256, 28x28 masks); mmdet 2.x ``train_cfg``/``test_cfg`` (RPN 256 / 0.5 samples, 2000
pre-NMS proposals in training and 1000 at test, NMS 0.7, 1000 proposals; R-CNN 512 / 0.25 samples; score > 0.05,
NMS 0.5, 100 detections, mask threshold 0.5). Evaluation: COCO ``bbox`` and ``segm``. Official results: S 45.4
box / 41.4 mask AP (50.2 M parameters), B 47.2 / 42.7 (71.5 M).

Epochs -> steps: Scenic's ``num_training_epochs`` (12) is set and ``num_training_steps`` left None. Our job
(``projects.detection.train.resolve_epoch_schedule``) converts the epochs with the *actual* number of steps per
epoch that the input pipeline plans for the configured dataset and global batch size
(``meta_data["steps_per_epoch"]``: mmdet's ``GroupSampler`` with one group per padded shape bucket, each bucket
padded up to whole batches): ``num_training_steps = num_training_epochs * steps_per_epoch``,
``lr_configs.decay_events = decay_epochs * steps_per_epoch - 1`` (a milestone at epoch e means "lower the rate
from the first step of epoch e + 1", as mmcv's epoch-based ``StepLrUpdaterHook``; Scenic's piecewise-constant
factor lowers it *after* an event, hence the -1), ``log_eval_steps = eval_every_epochs * steps_per_epoch`` and
``checkpoint_steps = checkpoint_every_epochs * steps_per_epoch``. The warm-up stays in iterations (500), as in
mmcv. The ``decay_events`` written into these configs are the nominal ones for COCO train2017 at batch 16 (what
Scenic's trainers use): 117,266 images with annotations -> ceil(117266 / 16) = 7,330 steps per epoch, 87,960
steps in all, milestones at steps 58,640 and 80,630 (the pipeline's bucketed count is a few steps larger and
replaces them at run time in our job). Set ``--config.num_training_epochs=0 --config.num_training_steps=N`` to
train exactly N steps with the given ``lr_configs.decay_events``.

The released results use an ImageNet-pretrained backbone: set ``init_from.checkpoint_path`` to a converted
checkpoint (``python -m projects.convert_checkpoint``).
"""

import math
from typing import Sequence

import ml_collections
from ml_collections import config_dict

from configs import common

# COCO train2017: 118,287 images, of which 117,266 have at least one annotation (mmdet's filter_empty_gt).
COCO_TRAIN_IMAGES = 117_266
MODEL_NAME = "crossformer_retinanet"  # projects.registry
DATASET_NAME = "coco"  # projects.registry
DETECTION_VARIANTS = ("s", "b")
# Released RetinaNet models (detection/README.md of github.com/cheerss/CrossFormer; Google Drive file ids).
OFFICIAL_RETINANET = {"s": "1OEEottS4fYGVZcPZG6WuBlKMK0tZLPZW", "b": "1TOuLLf_S4Ixo6COvaHQAocACR4NKKnGz"}
OFFICIAL_MASK_RCNN = {"s": "1qgO3-wnsJQw9Nj304AOj-TjVyadPPtvf", "b": "1urkCa8Inss9CL1G1OgM4tWR5PSf6Ofn4"}


def epochs_to_steps(epochs: float, num_images: int, batch_size: int) -> int:
  """Optimizer steps in ``epochs`` epochs of ``num_images`` at global ``batch_size`` (last batch padded)."""
  return int(round(epochs * math.ceil(num_images / batch_size)))


# The official mmdet COCO pipeline, as plain values (``projects.detection.data.input_pipeline`` reads them).
DATASET_DEFAULTS = dict(
    builder="coco_tree",  # or "coco" (tfds's stock builder fed the official zips)
    builder_config="2017",
    data_dir=None,  # the tfds data dir; --config.dataset.data_dir=DIR
    manual_dir=None,  # the extracted COCO tree (coco_tree) or the zips (coco)
    annotation_file=None,  # None: instances_val2017.json of manual_dir
    train_split="train",
    eval_split="validation",
    image_scale=(1333, 800),  # keep-ratio Resize
    size_divisor=32,
    bucket_aspect_ratios=(1.0, 1.34),
    max_boxes=100,
    flip_prob=0.5,
    min_image_size=32,
    with_masks=False,  # instance bitmaps in the batches (Mask R-CNN; the job sets it from the model)
    num_parallel_calls=-1,
    prefetch=2,
)


def dataset_config(**overrides) -> ml_collections.ConfigDict:
  """``config.dataset``: the official recipe's values (``DATASET_DEFAULTS``) with ``overrides``."""
  unknown = sorted(set(overrides) - set(DATASET_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown dataset keys {unknown}; known: {sorted(DATASET_DEFAULTS)}")
  config = ml_collections.ConfigDict({**DATASET_DEFAULTS, **overrides})
  for key in ("data_dir", "manual_dir", "annotation_file"):
    if config[key] is None:
      config[key] = config_dict.placeholder(str)  # settable with --config.dataset.<key>=...
  return config


def retinanet_model_config(variant: str) -> ml_collections.ConfigDict:
  """``config.model`` of RetinaNet-CrossFormer-``variant`` (mmdet 2.x ``retinanet_r50_fpn`` head settings)."""
  return ml_collections.ConfigDict(dict(
      dtype="float32",  # "bfloat16" for mixed precision (params and losses stay float32)
      backbone=common.backbone_config(variant),
      neck=dict(out_channels=256, start_level=1, add_extra_convs="on_input", num_outs=5,
                relu_before_extra_convs=False),
      bbox_head=dict(feat_channels=256, stacked_convs=4, prior_prob=0.01, norm="none"),
      anchor=dict(strides=(8, 16, 32, 64, 128), ratios=(0.5, 1.0, 2.0), octave_base_scale=4.0,
                  scales_per_octave=3),
      box_coder=dict(target_means=(0.0, 0.0, 0.0, 0.0), target_stds=(1.0, 1.0, 1.0, 1.0)),
      train_cfg=dict(pos_iou_thr=0.5, neg_iou_thr=0.4, min_pos_iou=0.0, allowed_border=-1,
                     pad_size_divisor=32),
      loss=dict(focal_gamma=2.0, focal_alpha=0.25, cls_weight=1.0, box_loss="l1", smooth_l1_beta=1.0 / 9.0,
                box_weight=1.0),
      # version "mmdet2": the official repository's mmdetection 2.8 post-processing ("mmdet3": 3.x's).
      test_cfg=dict(nms_pre=1000, score_thr=0.05, iou_threshold=0.5, max_per_img=100, min_bbox_size=0.0,
                    version="mmdet2"),
  ))


def mask_rcnn_model_config(variant: str) -> ml_collections.ConfigDict:
  """``config.model`` of Mask R-CNN-CrossFormer-``variant`` (keys of ``projects.detection.models.mask_rcnn``)."""
  return ml_collections.ConfigDict(dict(
      dtype="float32",  # "bfloat16" for mixed precision (params and losses stay float32)
      backbone=common.backbone_config(variant),
      neck=dict(out_channels=256),
      rpn_head=dict(feat_channels=256),
      bbox_head=dict(fc_out_channels=1024),
      mask_head=dict(conv_out_channels=256, num_convs=4),
      roi=dict(max_samples=8, mask_max_samples=4),
      train_cfg=dict(rpn_nms_pre=2000, rpn_max_per_img=1000, rpn_num=256, rpn_pos_fraction=0.5, rcnn_num=512,
                     rcnn_pos_fraction=0.25, pad_size_divisor=32),
      test_cfg=dict(version="mmdet2", rpn_nms_pre=1000, rpn_max_per_img=1000, score_thr=0.05, iou_threshold=0.5,
                    max_per_img=100, mask_thr_binary=0.5),
  ))


def epoch_schedule(config: ml_collections.ConfigDict, num_epochs: int, milestone_epochs: Sequence[int],
                   num_images: int) -> None:
  """Sets the epoch keys of ``config`` and their nominal step values for ``num_images`` training images.

  ``num_training_epochs`` (Scenic's) is set and ``num_training_steps`` left None; the nominal
  ``lr_configs.decay_events`` (Scenic's piecewise-constant boundaries: the last step before each milestone)
  serve Scenic's trainers, ours recomputes them from ``lr_configs.decay_epochs`` and the dataset's real
  steps per epoch (``projects.detection.train.resolve_epoch_schedule``).
  """
  batch = int(config.batch_size)
  steps_per_epoch = epochs_to_steps(1, num_images, batch)
  config.num_training_epochs = num_epochs
  config.num_training_steps = None
  config.eval_every_epochs = 1
  config.checkpoint_every_epochs = 1
  config.log_eval_steps = steps_per_epoch
  config.checkpoint_steps = steps_per_epoch
  config.lr_configs.decay_epochs = tuple(int(e) for e in milestone_epochs)
  config.lr_configs.decay_events = [int(e) * steps_per_epoch - 1 for e in milestone_epochs]
  config.lr_configs.decay_factors = [float(config.lr_configs.get("gamma", 0.1)) ** (i + 1)
                                     for i in range(len(milestone_epochs))]


def retinanet(variant: str) -> ml_collections.ConfigDict:
  """RetinaNet + CrossFormer-``variant`` (s or b) on COCO 2017, official 1x recipe at batch 16."""
  if variant not in DETECTION_VARIANTS:
    raise ValueError(f"the official RetinaNet recipes exist for CrossFormer {DETECTION_VARIANTS}, "
                     f"got {variant!r}")
  config = common.trainer_config(None, batch_size=16, eval_batch_size=16, log_summary_steps=50,
                                 max_checkpoint_keep=3)
  config.experiment_name = f"retinanet_crossformer_{variant}_coco"
  config.model_name = MODEL_NAME
  config.dataset_name = DATASET_NAME
  config.dataset = dataset_config()
  # dict(num_train, num_val, seed, manual_dir) to generate the synthetic COCO-format tree and build it with
  # the coco_tree builder into dataset.data_dir (default <workdir>/data) when missing (configs/tiny_coco.py).
  config.synthetic_data = None
  config.num_visualized_images = 4
  config.visualization_score_threshold = 0.3
  config.model = retinanet_model_config(variant)
  common.adamw(config, weight_decay=1e-4)
  config.lr_configs = common.mmcv_lr_configs(1e-4, policy="step", milestones=(), gamma=0.1, warmup_steps=500,
                                             warmup_ratio=0.001)
  config.lr_configs.gamma = 0.1  # ours: the factor per milestone epoch (decay_epochs)
  epoch_schedule(config, num_epochs=12, milestone_epochs=(8, 11), num_images=COCO_TRAIN_IMAGES)
  # The released checkpoint (the README names no file: save the download under this name).
  config.official_checkpoint = f"retinanet_crossformer_{variant}_fpn_1x_coco.pth"
  config.official_checkpoint_url = f"https://drive.google.com/file/d/{OFFICIAL_RETINANET[variant]}/view"
  return config


def mask_rcnn(variant: str) -> ml_collections.ConfigDict:
  """Mask R-CNN + CrossFormer-``variant`` (s or b) on COCO 2017, official 1x recipe at batch 16."""
  config = retinanet(variant)  # the shared recipe: optimizer, schedule, data, trainer keys
  config.experiment_name = f"mask_rcnn_crossformer_{variant}_coco"
  config.model_name = "crossformer_mask_rcnn"
  config.model = mask_rcnn_model_config(variant)
  config.dataset.with_masks = True  # LoadAnnotations(with_mask=True); needs the coco_tree builder
  # Instance bitmaps are M x H x W bytes per image on the host (100 x 800 x 1344: 108 MB): keep one batch
  # in flight rather than two.
  config.dataset.prefetch = 1
  config.official_checkpoint = f"mask_rcnn_crossformer_{variant}_fpn_1x_coco.pth"
  config.official_checkpoint_url = f"https://drive.google.com/file/d/{OFFICIAL_MASK_RCNN[variant]}/view"
  return config
