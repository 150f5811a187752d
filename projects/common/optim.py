"""Optimizer and learning-rate schedules built from ``config.optimizer`` and ``config.lr_schedule``.

Schedules follow mmcv's iteration-based ``LrUpdaterHook`` semantics, which the official CrossFormer recipes
were trained with (the learning rate used by update ``t``, counting from 0):

* ``poly``:     ``(base_lr - min_lr) * (1 - t / total_steps) ** power + min_lr``
* ``step``:     ``base_lr * gamma ** (number of milestones <= t)``, floored at ``min_lr`` when given
* ``cosine``:   ``min_lr + (base_lr - min_lr) * (1 + cos(pi * t / total_steps)) / 2``
* ``constant``: ``base_lr``

and a linear warm-up (mmcv ``warmup="linear"``) that scales the *regular* rate for ``t < warmup_steps``:
``regular(t) * (1 - (1 - t / warmup_steps) * (1 - warmup_ratio))``, i.e. it starts at ``warmup_ratio``
times the regular rate.

Weight decay is masked (decoupled AdamW decay is not applied) for normalisation parameters, biases and,
inside the backbone, the dynamic-position-bias MLPs (parameter paths containing ``pos``), like the official
``paramwise_cfg`` / ``no_weight_decay`` lists.
"""

from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]

DEFAULT_NO_DECAY_KEYWORDS = ("norm", "bias")
DEFAULT_NO_DECAY_BACKBONE_KEYWORDS = ("pos",)


def _linear_warmup(regular: Schedule, warmup_steps: int, warmup_ratio: float) -> Schedule:
  """Wraps ``regular`` with mmcv's linear warm-up."""
  if warmup_steps <= 0:
    return regular

  def schedule(step):
    step = jnp.asarray(step, jnp.float32)
    # 1 - (1 - t/W)(1 - ratio), written without the float32 cancellation of small ratios.
    factor = warmup_ratio + (1.0 - warmup_ratio) * step / warmup_steps
    return jnp.where(step < warmup_steps, regular(step) * factor, regular(step))

  return schedule


def create_lr_schedule(lr_config: ml_collections.ConfigDict,
                       num_training_steps: Optional[int] = None) -> Schedule:
  """Returns ``step -> learning rate`` described by ``lr_config`` (``config.lr_schedule``).

  Keys: ``name`` (poly | step | cosine | constant), ``base_lr``, ``min_lr`` (default 0), ``power`` (poly,
  default 1.0), ``milestones`` and ``gamma`` (step, default 0.1), ``total_steps`` (poly/cosine; defaults to
  ``num_training_steps``), ``warmup_steps`` (default 0) and ``warmup_ratio`` (default 0.001).
  """
  name = lr_config.get("name", "constant")
  base_lr = float(lr_config.base_lr)
  min_lr = lr_config.get("min_lr", None)
  total_steps = lr_config.get("total_steps", None) or num_training_steps

  if name in ("poly", "cosine"):
    if not total_steps or total_steps <= 0:
      raise ValueError(f"lr_schedule '{name}' needs lr_schedule.total_steps or num_training_steps > 0")
    floor = float(min_lr or 0.0)
    power = float(lr_config.get("power", 1.0))

    if name == "poly":
      def regular(step):
        progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
        return (base_lr - floor) * (1.0 - progress) ** power + floor
    else:
      def regular(step):
        progress = jnp.clip(jnp.asarray(step, jnp.float32) / total_steps, 0.0, 1.0)
        return floor + (base_lr - floor) * 0.5 * (1.0 + jnp.cos(jnp.pi * progress))
  elif name == "step":
    milestones = tuple(int(m) for m in lr_config.get("milestones", ()))
    if list(milestones) != sorted(milestones):
      raise ValueError(f"lr_schedule.milestones must be increasing, got {milestones}")
    gamma = float(lr_config.get("gamma", 0.1))
    milestone_array = jnp.asarray(milestones or (jnp.iinfo(jnp.int32).max,), jnp.float32)

    def regular(step):
      step = jnp.asarray(step, jnp.float32)
      passed = jnp.sum(step >= milestone_array) if milestones else 0
      lr = base_lr * gamma ** passed
      return lr if min_lr is None else jnp.maximum(lr, float(min_lr))
  elif name == "constant":
    def regular(step):
      return jnp.full(jnp.shape(step), base_lr, jnp.float32)
  else:
    raise ValueError(f"unknown lr_schedule.name {name!r}; expected poly, step, cosine or constant")

  return _linear_warmup(regular, int(lr_config.get("warmup_steps", 0)),
                        float(lr_config.get("warmup_ratio", 0.001)))


def _path_names(path) -> Sequence[str]:
  names = []
  for entry in path:
    key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
    names.append(str(key))
  return names


def weight_decay_mask(params: Any,
                      no_decay_keywords: Sequence[str] = DEFAULT_NO_DECAY_KEYWORDS,
                      no_decay_backbone_keywords: Sequence[str] = DEFAULT_NO_DECAY_BACKBONE_KEYWORDS,
                      decay_1d: bool = False) -> Any:
  """Returns a pytree of bools like ``params``: ``True`` where weight decay applies.

  A parameter is excluded when any component of its path contains (case-insensitively) one of
  ``no_decay_keywords`` (norm layers, biases), when it lies under ``backbone`` and a path component contains
  one of ``no_decay_backbone_keywords`` (the DPB MLPs ``pos``), or, unless ``decay_1d``, when it has at most
  one dimension (norm scales and biases of modules with other names, e.g. ``BatchNorm_0/scale``).
  """
  no_decay = tuple(k.lower() for k in no_decay_keywords)
  no_decay_bb = tuple(k.lower() for k in no_decay_backbone_keywords)

  def decide(path, leaf):
    names = [n.lower() for n in _path_names(path)]
    if any(k in n for n in names for k in no_decay):
      return False
    if names and names[0] == "backbone" and any(k in n for n in names[1:] for k in no_decay_bb):
      return False
    if not decay_1d and jnp.ndim(leaf) <= 1:
      return False
    return True

  return jax.tree_util.tree_map_with_path(decide, params)


def config_weight_decay_mask(optimizer_config: ml_collections.ConfigDict, params: Any) -> Any:
  """``weight_decay_mask`` of ``params`` with the keywords of ``config.optimizer``."""
  return weight_decay_mask(
      params,
      no_decay_keywords=tuple(optimizer_config.get("no_decay_keywords", DEFAULT_NO_DECAY_KEYWORDS)),
      no_decay_backbone_keywords=tuple(
          optimizer_config.get("no_decay_backbone_keywords", DEFAULT_NO_DECAY_BACKBONE_KEYWORDS)),
      decay_1d=bool(optimizer_config.get("decay_1d", False)))


def create_optimizer(config: ml_collections.ConfigDict,
                     schedule: Schedule) -> optax.GradientTransformation:
  """Returns the optax optimizer of ``config.optimizer`` using learning-rate ``schedule``.

  ``config.optimizer`` keys: ``name`` (adamw | sgd), ``b1``/``b2``/``eps`` (AdamW), ``momentum`` (SGD),
  ``weight_decay``, ``grad_clip_norm`` (global-norm clipping; ``None``/0 disables it),
  ``no_decay_keywords``, ``no_decay_backbone_keywords`` and ``decay_1d`` (see ``weight_decay_mask``).
  """
  opt = config.optimizer
  name = opt.get("name", "adamw")
  weight_decay = float(opt.get("weight_decay", 0.0))

  def mask_fn(params):
    return config_weight_decay_mask(opt, params)

  if name == "adamw":
    tx = optax.adamw(schedule, b1=float(opt.get("b1", 0.9)), b2=float(opt.get("b2", 0.999)),
                     eps=float(opt.get("eps", 1e-8)), weight_decay=weight_decay, mask=mask_fn)
  elif name == "sgd":
    parts = []
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=mask_fn))
    parts.append(optax.sgd(schedule, momentum=opt.get("momentum", 0.9) or None))
    tx = optax.chain(*parts)
  else:
    raise ValueError(f"unknown optimizer.name {name!r}; expected adamw or sgd")

  clip = opt.get("grad_clip_norm", None)
  if clip:
    tx = optax.chain(optax.clip_by_global_norm(float(clip)), tx)
  return tx


def describe_mask(mask: Any) -> Dict[str, int]:
  """Counts the decayed and not-decayed parameter leaves of a mask (for logging)."""
  leaves = jax.tree.leaves(mask)
  return {"decayed": sum(bool(x) for x in leaves), "not_decayed": sum(not bool(x) for x in leaves)}
