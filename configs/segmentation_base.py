"""ADE20K semantic-segmentation recipes of the official CrossFormer code (reference §2.4), as configs.

``semantic_fpn(variant)`` and ``upernet(variant)`` return complete job configs; the per-recipe files
(``configs/fpn_crossformer_s_ade20k.py``, ...) are one-line ``get_config()`` wrappers and the tiny job
(``configs/tiny_ade20k.py``) shrinks one. Trainer / optimizer keys come from ``configs.common``, model keys
are those of ``projects.segmentation.models.encoder_decoder.SegmentationModel``, dataset keys those of
``projects.segmentation.data.pipeline.get_dataset``; ``config.dataset_name`` names the dataset.

Recipes:
* Semantic FPN (``fpn_crossformer_*_ade20k_40k.py``, 80k iterations despite the name): FPN neck 256 x 4,
  FPNHead 128 channels + dropout 0.1 + SyncBN, AdamW lr 1e-4 wd 1e-4, poly power 0.9 min_lr 0, batch 16.
  v1's FPN-S and FPN-L use group sizes (14, 14, 7, 7) and intervals (16, 8, 2, 1); FPN-B (7, 7, 7, 7) and
  (8, 4, 2, 1).
* UPerNet (``upernet_crossformer_*_ade20k.py`` + ``schedule_160k``): UPerHead 512 channels, pool scales
  (1, 2, 3, 6), FCN auxiliary head on stage 3 (256 channels, loss weight 0.4), AdamW lr 6e-5 betas (0.9, 0.999)
  wd 0.01, poly power 1.0 min_lr 0 with 1500 warm-up iterations from ratio 1e-6, 160k iterations, batch 16.
* Data: train ``Resize(2048, 512)`` ratio 0.5-2.0, random crop 512 x 512 (cat_max_ratio 0.75), flip 0.5,
  photometric distortion, pad to 512; test ``AlignResize(2048, 512)`` keep-ratio to multiples of 32.
* Loss: mmseg 0.x ``CrossEntropyLoss`` averages over *all* pixels (ignored ones count 0):
  ``avg_non_ignore=False``.
* Weight decay: these configs never decay norms, biases (``optimizer_configs.skip_scale_and_bias_regularization``,
  Scenic's) and the backbone's DPB MLPs (``weight_decay_configs``, ours; Scenic's trainers ignore it). The
  official UperNet excludes only norms (``paramwise_cfg`` norm decay_mult 0) and the official FPN excludes
  nothing; reproduce those with ``--config.weight_decay_configs.no_decay_keywords='("norm",)'
  --config.weight_decay_configs.no_decay_backbone_keywords='()'
  --config.optimizer_configs.skip_scale_and_bias_regularization=False``.
* Schedules are Scenic ``lr_configs`` that reproduce mmcv's exactly (``configs.common.mmcv_lr_configs``);
  ``lr_configs.decay_steps`` follows ``num_training_steps`` (a ``FieldReference``).

The released results use an ImageNet-pretrained backbone: set ``init_from.checkpoint_path`` to a converted
checkpoint (``python -m projects.convert_checkpoint``).
"""

from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict

from configs import common

NUM_CLASSES = 150
# Released ADE20K models (segmentation/README.md of github.com/cheerss/CrossFormer; Google Drive file ids). The
# README names no files: ``official_checkpoint`` is the name the docs tell users to save the download as.
OFFICIAL_FPN = {"s": "1I-zpGG5rvkTtrTUnOF8Fx11yeb6pXGYi", "b": "1EjAnRc8Sau0un1ymqDVhFebHPeBIjukK",
                "l": "12WS9lX9yR5skxdt3N2HE3b2EaDSMwUMY"}
OFFICIAL_UPERNET = {"s": "1VKu4D6oxYdO1VVILLMhOQy8oCxKGH5gx", "b": "1B8VTNeidrzlfsOkQUKgmX4m_UfCIm58i",
                    "l": "1I9ph5MeCwlTF2PNCkIYMFXYsdywp9nU1"}
DRIVE_URL = "https://drive.google.com/file/d/{}/view"


def set_official_checkpoint(config: ml_collections.ConfigDict, name: str, drive_ids, variant: str) -> None:
  """``config.official_checkpoint`` (file name) and ``official_checkpoint_url`` (None: nothing released)."""
  released = variant in drive_ids
  config.official_checkpoint = config_dict.placeholder(str) if not released else f"{name}.pth"
  config.official_checkpoint_url = (config_dict.placeholder(str) if not released
                                    else DRIVE_URL.format(drive_ids[variant]))


MODEL_NAME = "crossformer_segmentation"  # projects.registry
DATASET_NAME = "ade20k"  # projects.registry
FPN_V1_GROUPS = {"s": ((14, 14, 7, 7), (16, 8, 2, 1)), "l": ((14, 14, 7, 7), (16, 8, 2, 1))}


# The official mmseg ADE20K pipeline, as plain values (``projects.segmentation.data.pipeline`` reads them).
DATASET_DEFAULTS = dict(
    data_dir=None,  # the tfds data dir (None: tfds's default); --config.dataset.data_dir=DIR
    num_classes=NUM_CLASSES,
    scale=(2048, 512),  # train Resize, ratio_range x
    ratio_range=(0.5, 2.0),
    crop_size=(512, 512),
    cat_max_ratio=0.75,
    flip_prob=0.5,
    photometric_distortion=True,
    shuffle_buffer_size=2048,
    eval_scale=(2048, 512),  # test AlignResize
    size_divisor=32,
    eval_buckets=None,  # None: the pipeline's landscape/portrait buckets for eval_scale
)


def dataset_config(**overrides) -> ml_collections.ConfigDict:
  """``config.dataset``: the official recipe's values (``DATASET_DEFAULTS``) with ``overrides``."""
  unknown = sorted(set(overrides) - set(DATASET_DEFAULTS))
  if unknown:
    raise ValueError(f"unknown dataset keys {unknown}; known: {sorted(DATASET_DEFAULTS)}")
  config = ml_collections.ConfigDict({**DATASET_DEFAULTS, **overrides})
  if config.data_dir is None:
    config.data_dir = config_dict.placeholder(str)  # settable with --config.dataset.data_dir=DIR
  return config


def _base(variant: str, num_training_steps: int, batch_size: int) -> ml_collections.ConfigDict:
  config = common.trainer_config(num_training_steps, batch_size, eval_batch_size=batch_size,
                                 log_summary_steps=50, log_eval_steps=num_training_steps // 10,
                                 checkpoint_steps=4000)
  config.model_name = MODEL_NAME
  config.dataset_name = DATASET_NAME
  config.dataset = dataset_config()
  # dict(num_train, num_val, seed, short_side, max_aspect, manual_dir) to generate and build the synthetic
  # ADE20K stand-in into dataset.data_dir (default <workdir>/data) when missing (configs/tiny_ade20k.py).
  config.synthetic_data = None
  config.num_visualized_images = 4
  # mmseg test_cfg (projects.segmentation.predictor.TestTime): whole or slide (crop 512, stride 341); the
  # evaluate/predict commands' --mode ms_flip adds the official ratios 0.5-1.75 with flip. canvases: the padded
  # (h, w) canvases whole-mode views run in, one compiled program each (None: the eval buckets scaled to each
  # ratio; `python -m projects.segmentation.canvases --config ...` chooses them from the data's sizes).
  config.inference = ml_collections.ConfigDict(dict(mode="whole", crop_size=(512, 512), stride=(341, 341),
                                                    ratios=(1.0,), flip=False,
                                                    canvases=config_dict.placeholder(tuple)))
  config.l2_decay_factor = config_dict.placeholder(float)
  config.model = ml_collections.ConfigDict(dict(
      backbone=common.backbone_config(variant),
      neck=None,
      decode_head=None,
      auxiliary_head=None,
      dtype="float32",  # "bfloat16" for mixed precision (params stay float32)
      norm_axis_name=None,  # None: BatchNorm statistics over the global batch (jit over global arrays)
      avg_non_ignore=False,
      ignore_label=-1,  # the pipeline marks ADE20K's "other" and all padding -1
  ))
  return config


def _poly(config: ml_collections.ConfigDict, base_lr: float, power: float, warmup_steps: int = 0,
          warmup_ratio: float = 1e-6) -> ml_collections.ConfigDict:
  """mmcv poly (min_lr 0) over ``num_training_steps`` with linear warm-up, as Scenic ``lr_configs``."""
  return common.mmcv_lr_configs(base_lr, policy="poly", power=power, min_lr=0.0, warmup_steps=warmup_steps,
                                warmup_ratio=warmup_ratio, decay_steps=config.get_ref("num_training_steps"))


def semantic_fpn(variant: str, group_sizes: Optional[Sequence[int]] = None,
                 intervals: Optional[Sequence[int]] = None) -> ml_collections.ConfigDict:
  """Semantic FPN + CrossFormer-``variant`` on ADE20K, 80k iterations at batch 16."""
  groups = FPN_V1_GROUPS.get(variant, common.OFFICIAL_GROUPS)
  config = _base(variant, num_training_steps=80_000, batch_size=16)
  config.experiment_name = f"fpn_crossformer_{variant}_ade20k"
  config.model.backbone = common.backbone_config(variant, group_sizes or groups[0], intervals or groups[1])
  config.model.neck = ml_collections.ConfigDict(dict(out_channels=256, num_outs=4, start_level=0, norm="none"))
  config.model.decode_head = ml_collections.ConfigDict(dict(
      type="semantic_fpn", channels=128, feature_strides=(4, 8, 16, 32), dropout=0.1, norm="batch"))
  common.adamw(config, weight_decay=1e-4)
  config.lr_configs = _poly(config, base_lr=1e-4, power=0.9)
  set_official_checkpoint(config, f"fpn_crossformer_{variant}_ade20k", OFFICIAL_FPN, variant)
  return config


def upernet(variant: str) -> ml_collections.ConfigDict:
  """UPerNet (+ FCN auxiliary head) + CrossFormer-``variant`` on ADE20K, 160k iterations at batch 16."""
  config = _base(variant, num_training_steps=160_000, batch_size=16)
  config.experiment_name = f"upernet_crossformer_{variant}_ade20k"
  config.model.decode_head = ml_collections.ConfigDict(dict(
      type="upernet", channels=512, pool_scales=(1, 2, 3, 6), dropout=0.1, norm="batch"))
  config.model.auxiliary_head = ml_collections.ConfigDict(dict(
      channels=256, in_index=2, num_convs=1, concat_input=False, dropout=0.1, norm="batch", loss_weight=0.4))
  common.adamw(config, weight_decay=0.01, b1=0.9, b2=0.999)
  config.lr_configs = _poly(config, base_lr=6e-5, power=1.0, warmup_steps=1500, warmup_ratio=1e-6)
  set_official_checkpoint(config, f"upernet_crossformer_{variant}_ade20k", OFFICIAL_UPERNET, variant)
  return config
