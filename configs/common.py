"""Config helpers shared by every job (segmentation and detection): trainer keys, optimizer, schedules.

Optional keys that default to None are ``config_dict.placeholder``s, so they can still be set from the
command line (``--config.optimizer.grad_clip_norm=1.0``).

Each helper returns a fresh ``ml_collections.ConfigDict``; job configs combine them in ``get_config()``.
The keys are those read by ``projects.common.trainer`` and ``projects.common.optim``.
"""

from typing import Optional, Sequence

import ml_collections
from ml_collections import config_dict


def trainer_config(num_training_steps: int, batch_size: int, *, seed: int = 0,
                   eval_batch_size: Optional[int] = None, log_summary_steps: int = 50,
                   log_eval_steps: Optional[int] = None, checkpoint_steps: int = 4000,
                   max_checkpoints_to_keep: int = 3) -> ml_collections.ConfigDict:
  """The top-level keys of a training job (``projects.common.trainer``)."""
  return ml_collections.ConfigDict(dict(
      seed=seed,
      batch_size=batch_size,  # global, split over all devices of all processes
      eval_batch_size=eval_batch_size or batch_size,
      num_training_steps=num_training_steps,
      log_summary_steps=log_summary_steps,
      log_eval_steps=log_eval_steps if log_eval_steps is not None else num_training_steps,
      steps_per_eval=config_dict.placeholder(int),  # None: a full pass over the validation split
      checkpoint=True,
      checkpoint_steps=checkpoint_steps,
      max_checkpoints_to_keep=max_checkpoints_to_keep,
      progress_bar=True,
      prefetch_to_device=2,
  ))


def adamw(weight_decay: float, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
          grad_clip_norm: Optional[float] = None,
          no_decay_keywords: Sequence[str] = ("norm", "bias"),
          no_decay_backbone_keywords: Sequence[str] = ("pos",)) -> ml_collections.ConfigDict:
  """``config.optimizer`` for AdamW with the norm / bias / DPB (``pos``) weight-decay exclusions."""
  return ml_collections.ConfigDict(dict(
      name="adamw", b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      grad_clip_norm=grad_clip_norm if grad_clip_norm is not None else config_dict.placeholder(float),
      no_decay_keywords=tuple(no_decay_keywords), no_decay_backbone_keywords=tuple(no_decay_backbone_keywords),
      decay_1d=False))


def poly_schedule(base_lr: float, power: float = 1.0, min_lr: float = 0.0, warmup_steps: int = 0,
                  warmup_ratio: float = 1e-6) -> ml_collections.ConfigDict:
  """``config.lr_schedule`` for mmcv's poly decay over ``num_training_steps`` with linear warm-up."""
  return ml_collections.ConfigDict(dict(
      name="poly", base_lr=base_lr, power=power, min_lr=min_lr, total_steps=config_dict.placeholder(int),
      warmup_steps=warmup_steps, warmup_ratio=warmup_ratio))


def step_schedule(base_lr: float, milestones: Sequence[int], gamma: float = 0.1, warmup_steps: int = 500,
                  warmup_ratio: float = 0.001) -> ml_collections.ConfigDict:
  """``config.lr_schedule`` for mmcv's step decay (milestones in steps) with linear warm-up."""
  return ml_collections.ConfigDict(dict(
      name="step", base_lr=base_lr, milestones=tuple(int(m) for m in milestones), gamma=gamma,
      min_lr=config_dict.placeholder(float),
      warmup_steps=warmup_steps, warmup_ratio=warmup_ratio))


# CrossFormer variant -> (backbone name, dense drop-path rate of the official factories; T has none: the
# classification value 0.1 is used).
BACKBONES = {
    "t": ("crossformer_t", 0.1),
    "s": ("crossformer_s", 0.2),
    "b": ("crossformer_b", 0.3),
    "l": ("crossformer_l", 0.5),
}
OFFICIAL_GROUPS = ((7, 7, 7, 7), (8, 4, 2, 1))


def backbone_config(variant: str, group_sizes: Sequence[int] = OFFICIAL_GROUPS[0],
                    intervals: Sequence[int] = OFFICIAL_GROUPS[1], checkpoint: Optional[str] = None,
                    **overrides) -> ml_collections.ConfigDict:
  """``config.model.backbone`` for CrossFormer-``variant`` (t/s/b/l)."""
  if variant not in BACKBONES:
    raise ValueError(f"unknown CrossFormer variant {variant!r}; expected one of {sorted(BACKBONES)}")
  name, drop_path_rate = BACKBONES[variant]
  return ml_collections.ConfigDict(dict(
      name=name,
      overrides=dict(group_sizes=tuple(group_sizes), intervals=tuple(intervals), **overrides),
      drop_path_rate=drop_path_rate,
      lda_mode="v1",
      remat=False,
      # A converted ImageNet checkpoint loaded into params["backbone"] by the trainer.
      checkpoint=checkpoint if checkpoint else config_dict.placeholder(str),
  ))
