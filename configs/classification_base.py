"""ImageNet-1k classification recipes of the official CrossFormer code, and a fine-tuning recipe, as configs.

``imagenet(variant, batch_size)`` returns the complete official recipe (``configs/crossformer_*_imagenet.py``
and ``configs/crossformerpp_*_imagenet.py`` are one-line wrappers; pass a global batch size as
``--config configs/crossformer_s_imagenet.py:256`` to rescale the rates and the warm-up), ``finetune(...)``
the recipe for your own classes (``configs/finetune_crossformer_s_folder.py``).

The official recipe (``config.py`` + ``configs/crossformer*/*.yaml`` + ``main.py`` of github.com/cheerss/CrossFormer):

* AdamW, betas (0.9, 0.999), eps 1e-8, weight decay 0.05 on every parameter except the 1-D ones (norm
  scales, biases; the official ``set_weight_decay``: its keyword lists, ``absolute_pos_embed`` and
  ``relative_position_bias_table``, name nothing a CrossFormer has): ``skip_scale_and_bias_regularization``
  and no keyword exclusion;
* base lr 5e-4, warm-up lr 5e-7 and minimum lr 5e-6, each scaled by ``global batch / 512`` (the official
  1024 = 128 x 8 GPUs gives 1e-3); 300 epochs, 20 linear warm-up epochs, then cosine to the minimum,
  stepped per iteration (timm's ``CosineLRScheduler(t_in_epochs=False)``; ours runs the cosine over the
  steps after the warm-up, timm's over all steps from 0, a difference below 0.3% of the rate);
* gradient clipping at global norm 5.0; label smoothing 0.1; drop path per variant: the backbone registry's
  value (``model.backbone.drop_path_rate=None``): T 0.1, S 0.2, B 0.3, L 0.5, ++-S 0.2, ++-B 0.3, ++-L 0.5,
  ++-H 0.5;
* data (``projects.classification.data.pipeline.default_dataset_config``): random resized crop 224 bicubic,
  flip, RandAugment rand-m9-mstd0.5-inc1, random erasing 0.25 (pixel), Mixup 0.8 / CutMix 1.0 switched
  with probability 0.5; evaluation resize 256 bicubic + centre crop 224.
"""

from typing import Optional

import ml_collections
from ml_collections import config_dict

import backbones

from configs import common

MODEL_NAME = "crossformer_classification"  # projects.registry
IMAGENET_TRAIN_EXAMPLES = 1_281_167
OFFICIAL_BATCH = 1024  # 128 per GPU x 8 GPUs
VARIANTS = ("crossformer_t", "crossformer_s", "crossformer_b", "crossformer_l",
            "crossformerpp_s", "crossformerpp_b", "crossformerpp_l", "crossformerpp_h")


def dataset_config(**overrides) -> ml_collections.ConfigDict:
  """``config.dataset``: the official pipeline's values (keys of ``pipeline.default_dataset_config``)."""
  values = dict(data_dir=config_dict.placeholder(str), manual_dir=config_dict.placeholder(str), val_fraction=0.0,
                crop_size=224, crop_pct=0.875, flip_prob=0.5, rand_augment="rand-m9-mstd0.5-inc1", color_jitter=0.4,
                erase_prob=0.25, mixup_alpha=0.8, cutmix_alpha=1.0, mix_prob=1.0, switch_prob=0.5,
                shuffle_buffer_size=10_000)
  unknown = sorted(set(overrides) - set(values))
  if unknown:
    raise ValueError(f"unknown dataset keys {unknown}; known: {sorted(values)}")
  values.update(overrides)
  return ml_collections.ConfigDict(values)


def model_config(backbone: str, drop_path_rate: Optional[float] = None, **overrides) -> ml_collections.ConfigDict:
  """``config.model``: the classifier ``backbone`` (a ``backbones.list_models()`` name) with ``overrides``;
  ``drop_path_rate`` None = the variant's own (the official recipe's)."""
  return ml_collections.ConfigDict(dict(
      backbone=dict(name=backbone, overrides=dict(overrides),
                    drop_path_rate=drop_path_rate if drop_path_rate is not None else config_dict.placeholder(float),
                    lda_mode=config_dict.placeholder(str), remat=False),
      dtype="float32",  # "bfloat16" for mixed precision (params stay float32)
  ))


def cosine_lr_configs(base_lr: float, warmup_steps: int, warmup_lr: float, min_lr: float
                      ) -> ml_collections.ConfigDict:
  """Linear warm-up from ``warmup_lr`` over ``warmup_steps``, then cosine to ``min_lr`` at the end of the run
  (Scenic ``lr_configs``; the cosine spans the run's remaining ``num_training_steps``)."""
  return ml_collections.ConfigDict(dict(
      learning_rate_schedule="compound", factors="constant * linear_warmup * cosine_decay",
      base_learning_rate=base_lr, warmup_steps=int(warmup_steps), warmup_alpha=warmup_lr / base_lr,
      alpha=min_lr / base_lr, steps_per_cycle=config_dict.placeholder(int)))


def official_optimizer(config: ml_collections.ConfigDict, weight_decay: float = 0.05) -> None:
  """The official AdamW (no decay on 1-D parameters only) with gradient clipping 5.0."""
  common.adamw(config, weight_decay=weight_decay, grad_clip_norm=5.0, no_decay_keywords=(),
               no_decay_backbone_keywords=())


def _job(num_training_steps: Optional[int], batch_size: int) -> ml_collections.ConfigDict:
  config = common.trainer_config(num_training_steps, batch_size, eval_batch_size=batch_size,
                                 log_summary_steps=100, checkpoint_steps=2000)
  config.model_name = MODEL_NAME
  config.label_smoothing = 0.1
  config.layer_decay = config_dict.placeholder(float)  # layer-wise lr decay for fine-tuning, e.g. 0.75 (optim)
  config.synthetic_data = None  # dict(num_train, num_val, seed): generate the tiny demo folder (tiny config)
  config.num_visualized_images = 16
  return config


def imagenet(variant: str, batch_size: int = OFFICIAL_BATCH) -> ml_collections.ConfigDict:
  """The official ImageNet-1k recipe of ``variant`` (one of ``VARIANTS``) at global ``batch_size``."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown variant {variant!r}; expected one of {sorted(VARIANTS)}")
  steps_per_epoch = IMAGENET_TRAIN_EXAMPLES // batch_size
  config = _job(300 * steps_per_epoch, batch_size)
  config.experiment_name = f"{variant}_imagenet"
  config.dataset_name = "imagenet2012"
  config.dataset = dataset_config()
  config.model = model_config(variant)
  official_optimizer(config)
  scale = batch_size / 512.0
  config.lr_configs = cosine_lr_configs(5e-4 * scale, 20 * steps_per_epoch, 5e-7 * scale, 5e-6 * scale)
  config.log_eval_steps = 10 * steps_per_epoch
  config.official_top1 = backbones.get_pretrained_cfg(variant)["top1"]  # the variant's metadata, written once
  return config


def finetune(variant: str = "crossformer_s", batch_size: int = 64, num_training_steps: int = 3000,
             base_lr: float = 1e-4) -> ml_collections.ConfigDict:
  """Fine-tuning ``variant`` on your own classes (``image_folder``) from an ImageNet checkpoint.

  ``init_from.checkpoint_path`` (a converted or official classifier checkpoint) gives the trunk
  (``params["backbone"]``); the final norm and the head for your classes start fresh. Smaller rate than
  pre-training (``base_lr`` at this batch, 5% warm-up, cosine to 1%), drop path 0.1, no Mixup/CutMix
  (small data), the official augmentation otherwise; ``--config.layer_decay=0.75`` adds layer-wise lr decay.
  """
  config = _job(num_training_steps, batch_size)
  config.experiment_name = f"{variant}_finetune_folder"
  config.dataset_name = "image_folder"
  config.dataset = dataset_config(mix_prob=0.0, shuffle_buffer_size=2048)
  config.model = model_config(variant, drop_path_rate=0.1)
  official_optimizer(config)
  config.lr_configs = cosine_lr_configs(base_lr, num_training_steps // 20, base_lr * 1e-3, base_lr * 1e-2)
  config.log_eval_steps = max(1, num_training_steps // 10)
  return config
