"""Config helpers shared by every job (segmentation and detection), in Scenic's field names.

A job config is one ``ml_collections.ConfigDict`` that serves both Scenic's trainers and ours
(``projects.common.trainer``). Scenic's fields, with the meaning Scenic gives them:

  experiment_name, model_name, dataset_name, trainer_name (registry names, ``projects.registry``),
  rng_seed, data_dtype_str (dtype of the inputs fed to the model), batch_size, eval_batch_size,
  num_training_steps | num_training_epochs (one of them), log_summary_steps, log_eval_steps, steps_per_eval,
  checkpoint (bool: save checkpoints), checkpoint_steps, max_checkpoint_keep,
  optimizer (a string) + optimizer_configs, lr_configs, l2_decay_factor, label_smoothing,
  class_rebalancing_factor, init_from.checkpoint_path (the pretrained backbone).

Our extras, under names Scenic does not use: ``weight_decay_configs`` (keyword weight-decay exclusions),
``progress_bar``, ``prefetch_to_device``, ``init_input_shape``, ``rng_names``, ``model.*`` (architecture),
``dataset.*`` (the input pipeline), ``synthetic_data``, ``num_visualized_images``.

Optional keys that default to None are ``config_dict.placeholder``s, so they can still be set from the
command line (``--config.init_from.checkpoint_path=crossformer_s.msgpack``). Nothing here imports the
TensorFlow pipelines: configs are plain values (big_vision style); a variant's facts (drop-path rate) are read
from ``backbones.registry``, where they are declared once.
"""

from typing import Any, Optional, Sequence

import ml_collections
from ml_collections import config_dict

from backbones import registry

TRAINER_NAME = "crossformer_trainer"


def trainer_config(num_training_steps: Optional[int], batch_size: int, *, rng_seed: int = 0,
                   eval_batch_size: Optional[int] = None, log_summary_steps: int = 50,
                   log_eval_steps: Optional[int] = None, checkpoint_steps: int = 4000,
                   max_checkpoint_keep: int = 3) -> ml_collections.ConfigDict:
  """The top-level keys of a training job (read by ``projects.common.trainer`` and Scenic's trainers)."""
  return ml_collections.ConfigDict(dict(
      experiment_name="",
      model_name="",
      dataset_name="",
      trainer_name=TRAINER_NAME,
      rng_seed=rng_seed,
      data_dtype_str="float32",
      batch_size=batch_size,  # global, split over all devices of all processes
      eval_batch_size=eval_batch_size or batch_size,
      num_training_steps=num_training_steps if num_training_steps else config_dict.placeholder(int),
      num_training_epochs=config_dict.placeholder(float),  # Scenic: set this or num_training_steps
      log_summary_steps=log_summary_steps,
      log_eval_steps=log_eval_steps if log_eval_steps is not None else (num_training_steps or 0),
      steps_per_eval=config_dict.placeholder(int),  # None: a full pass over the validation split
      checkpoint=True,
      checkpoint_steps=checkpoint_steps,
      max_checkpoint_keep=max_checkpoint_keep,
      l2_decay_factor=config_dict.placeholder(float),
      label_smoothing=config_dict.placeholder(float),
      class_rebalancing_factor=0.0,
      init_from=init_from_config(),
      progress_bar=True,
      debug_train=False,  # Scenic's trainers pass these as the model's `debug` argument
      debug_eval=False,
      prefetch_to_device=2,
      ema_decay=0.0,  # parameter EMA (0: off; e.g. 0.9998), evaluated as eval_ema/* and checkpointed
      ema_warmup=True,  # decay min(ema_decay, (1 + t) / (10 + t))
  ))


def init_from_config(checkpoint_path: Optional[str] = None) -> ml_collections.ConfigDict:
  """``config.init_from``: ``checkpoint_path`` = a converted backbone (``.msgpack``, a Scenic train-state
  checkpoint written by ``projects.convert_checkpoint --format scenic``, or an official ``.pth``/``.npz``)
  loaded into ``params["backbone"]``."""
  return ml_collections.ConfigDict(dict(
      checkpoint_path=checkpoint_path if checkpoint_path else config_dict.placeholder(str)))


def adamw(config: ml_collections.ConfigDict, weight_decay: float, b1: float = 0.9, b2: float = 0.999,
          eps: float = 1e-8, grad_clip_norm: Optional[float] = None,
          no_decay_keywords: Sequence[str] = ("norm", "bias"),
          no_decay_backbone_keywords: Sequence[str] = ("pos",)) -> ml_collections.ConfigDict:
  """Sets ``optimizer="adamw"``, ``optimizer_configs`` (optax arguments, Scenic's norm/bias skipping,
  ``grad_clip``) and our ``weight_decay_configs`` (norm / bias / DPB ``pos`` exclusions) on ``config``."""
  config.optimizer = "adamw"
  config.optimizer_configs = ml_collections.ConfigDict(dict(
      b1=b1, b2=b2, eps=eps, weight_decay=weight_decay,
      skip_scale_and_bias_regularization=True,
      grad_clip=dict(clip_method="clip_by_global_norm",
                     clip_value=grad_clip_norm if grad_clip_norm else config_dict.placeholder(float))))
  config.weight_decay_configs = ml_collections.ConfigDict(dict(
      no_decay_keywords=tuple(no_decay_keywords), no_decay_backbone_keywords=tuple(no_decay_backbone_keywords)))
  return config


def mmcv_lr_configs(base_lr: float, *, policy: str = "constant", power: float = 1.0, min_lr: float = 0.0,
                    milestones: Sequence[int] = (), gamma: float = 0.1, warmup_steps: int = 0,
                    warmup_ratio: float = 0.001, decay_steps: Any = None) -> ml_collections.ConfigDict:
  """Scenic ``lr_configs`` (compound factors Scenic builds itself) that reproduce an mmcv iteration schedule
  exactly: ``poly`` -> ``constant * polynomial`` (``end_factor = min_lr / base_lr``), ``step`` at
  ``milestones`` -> ``constant * piecewise_constant`` (``decay_events = milestone - 1``: Scenic lowers the rate
  after an event, mmcv from the milestone on), plus mmcv's linear warm-up -> ``linear_warmup`` with
  ``warmup_alpha = warmup_ratio`` (the same formula). ``decay_steps`` (poly) may be a ``FieldReference`` to
  ``num_training_steps``; ``None`` means the run's ``num_training_steps`` (our extension)."""
  factors = ["constant"]
  config = ml_collections.ConfigDict(dict(learning_rate_schedule="compound", base_learning_rate=base_lr))
  if policy == "poly":
    factors.append("polynomial")
    config.power = float(power)
    config.end_factor = float(min_lr) / float(base_lr) if base_lr else 0.0
    config.decay_steps = decay_steps if decay_steps is not None else config_dict.placeholder(int)
  elif policy == "step":
    factors.append("piecewise_constant")
    config.decay_events = [int(m) - 1 for m in milestones]
    config.decay_factors = [float(gamma) ** (i + 1) for i in range(len(milestones))]
  elif policy != "constant":
    raise ValueError(f"unknown mmcv policy {policy!r}; expected poly, step or constant")
  factors.append("linear_warmup")
  config.warmup_steps = int(warmup_steps)
  config.warmup_alpha = float(warmup_ratio)
  config.factors = " * ".join(factors)
  return config


# CrossFormer variant letter -> registered backbone name (its drop-path rate is the registry's metadata).
BACKBONES = {v: f"crossformer_{v}" for v in ("t", "s", "b", "l")}
OFFICIAL_GROUPS = ((7, 7, 7, 7), (8, 4, 2, 1))


def backbone_config(variant: str, group_sizes: Sequence[int] = OFFICIAL_GROUPS[0],
                    intervals: Sequence[int] = OFFICIAL_GROUPS[1], **overrides) -> ml_collections.ConfigDict:
  """``config.model.backbone`` for CrossFormer-``variant`` (t/s/b/l) with the variant's registered drop-path
  rate (the official dense factories'; T has none: its classification value); its weights come from
  ``config.init_from.checkpoint_path``."""
  if variant not in BACKBONES:
    raise ValueError(f"unknown CrossFormer variant {variant!r}; expected one of {sorted(BACKBONES)}")
  name = BACKBONES[variant]
  return ml_collections.ConfigDict(dict(
      name=name,
      overrides=dict(group_sizes=tuple(group_sizes), intervals=tuple(intervals), **overrides),
      drop_path_rate=registry.variant_kwargs(name)["drop_path_rate"],
      lda_mode="v1",
      remat=False,
  ))
