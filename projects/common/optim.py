"""Optimizer and learning-rate schedule from Scenic's config fields (``optimizer``, ``optimizer_configs``,
``lr_configs``), so that one config drives Scenic's trainers and ours.

Learning rate (``config.lr_configs``, Scenic's ``lr_schedules.get_learning_rate_fn`` semantics):
``learning_rate_schedule="compound"`` multiplies the ``factors`` (e.g. ``"constant * polynomial *
linear_warmup"``); without ``learning_rate_schedule`` the rate is the constant ``base_learning_rate``. The
rate used by update ``t`` (counting from 0) is ``lr(t)``. Factors implemented (Scenic's formulas, keys as
Scenic's):

* ``constant``: ``base_learning_rate``.
* ``linear_warmup``: ``min(1, warmup_alpha + t * (1 - warmup_alpha) / warmup_steps)``. This *is* mmcv's
  ``warmup="linear"`` with ``warmup_ratio = warmup_alpha``: mmcv scales the regular rate by
  ``1 - (1 - t / W) * (1 - ratio)``, the same number; multiplied with the decay factor it reproduces the
  official CrossFormer recipes exactly.
* ``polynomial``: ``(1 - end_factor) * (1 - min(t, decay_steps) / decay_steps) ** power + end_factor``
  (mmcv ``poly`` with ``min_lr = end_factor * base_learning_rate``).
* ``piecewise_constant``: ``([1] + decay_factors)[#(decay_events < t)]`` (absolute factors). mmcv's ``step``
  lowers the rate from milestone step ``m`` on, i.e. ``decay_events = m - 1``.
* ``cosine_decay`` (``steps_per_cycle``, ``alpha``, shifted by ``warmup_steps`` as in Scenic), ``linear_decay``
  (``total_steps``, ``end_learning_rate``), ``decay_every`` (``steps_per_decay``, ``decay_factor``),
  ``exponential_decay`` (``decay_steps``, ``decay_rate``, ``staircase``), ``rsqrt_decay`` (``timescale``).

Extension (ours, documented; Scenic needs the explicit value): a step count left ``None``
(``decay_steps``, ``steps_per_cycle``, ``total_steps``) defaults to the run's ``num_training_steps``.

Optimizer (Scenic's ``optimizers.get_optax_optimizer_config`` + ``get_optimizer`` semantics):
``config.optimizer`` names an optax optimizer (``adamw``, ``sgd``, ...; Scenic's legacy ``adam`` with a
``weight_decay`` means ``adamw``, ``momentum``/``nesterov`` mean ``sgd``); ``config.optimizer_configs``
holds its keyword arguments (``b1``/``b2``/``eps``, Scenic's ``beta1``/``beta2``/``epsilon`` accepted),
``weight_decay``, ``skip_scale_and_bias_regularization`` (no decay on 1-D parameters) and ``grad_clip``
(``clip_method`` ``"clip_by_global_norm"``, ``clip_value``; applied before the optimizer).

Our extra weight-decay exclusions (``config.weight_decay_configs``, ignored by Scenic's trainers, which only
know ``skip_scale_and_bias_regularization``): ``no_decay_keywords`` (default ``()``: any path component
containing one, e.g. ``norm``, ``bias``) and ``no_decay_backbone_keywords`` (components under ``backbone``,
e.g. the dynamic-position-bias MLPs ``pos``), as the official ``paramwise_cfg`` / ``no_weight_decay`` lists.

Layer-wise learning-rate decay (ours, for fine-tuning; ``config.layer_decay``, default None = off): the updates
of a parameter of layer ``i`` of ``L`` are scaled by ``layer_decay ** (L + 1 - i)`` (BEiT's rule, here in the
CrossFormer backbone's naming, ``layer_ids``): ``backbone/patch_embed`` is layer 0, the blocks are 1..L in
order (a stage's ``downsample`` shares the number of the next stage's first block), everything outside the
backbone (norm, head) is L + 1 and keeps the full rate. AdamW's decoupled weight decay is scaled alike.
"""

import re

from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

Schedule = Callable[[jnp.ndarray], jnp.ndarray]

DEFAULT_NO_DECAY_KEYWORDS = ("norm", "bias")
DEFAULT_NO_DECAY_BACKBONE_KEYWORDS = ("pos",)
FACTORS = ("constant", "linear_warmup", "polynomial", "piecewise_constant", "cosine_decay", "linear_decay",
           "decay_every", "exponential_decay", "rsqrt_decay")
# optax optimizers whose decoupled weight decay takes a ``mask``.
_MASKED_DECAY = ("adamw", "lamb", "adamaxw")
_ALIASES = {"beta1": "b1", "beta2": "b2", "epsilon": "eps"}


def _steps(lr_configs: Any, key: str, num_training_steps: Optional[int]) -> float:
  value = lr_configs.get(key, None) or num_training_steps
  if not value or value <= 0:
    raise ValueError(f"lr_configs.{key} must be a positive number of steps (or set num_training_steps), "
                     f"got {lr_configs.get(key, None)!r}")
  return float(value)


def _factor(name: str, lr_configs: Any, num_training_steps: Optional[int]) -> Callable[[jnp.ndarray], Any]:
  """One compound factor as ``step (float32) -> multiplier``."""
  c = lr_configs
  if name == "constant":
    base = float(c.base_learning_rate)
    return lambda t: base
  if name == "linear_warmup":
    warmup, alpha = float(c.get("warmup_steps", 0) or 0), float(c.get("warmup_alpha", 0.0) or 0.0)
    if warmup <= 0:
      return lambda t: 1.0
    return lambda t: jnp.minimum(1.0, alpha + t * (1.0 - alpha) / warmup)
  if name == "polynomial":
    decay_steps = _steps(c, "decay_steps", num_training_steps)
    end, power = float(c.get("end_factor", 0.0) or 0.0), float(c.get("power", 1.0))
    return lambda t: (1.0 - end) * ((t <= decay_steps) * (1.0 - t / decay_steps)) ** power + end
  if name == "piecewise_constant":
    events = [float(e) for e in c.decay_events]
    factors = [float(f) for f in c.decay_factors]
    if len(events) != len(factors) or events != sorted(events):
      raise ValueError(f"lr_configs.decay_events must be increasing and as many as decay_factors, got "
                       f"{events} and {factors}")
    table = jnp.asarray([1.0] + factors, jnp.float32)
    bounds = jnp.asarray(events or [float("inf")], jnp.float32)
    return lambda t: table[jnp.sum(bounds < t)] if events else 1.0
  if name == "cosine_decay":
    cycle = _steps(c, "steps_per_cycle", num_training_steps)
    alpha, warmup = float(c.get("alpha", 0.0)), float(c.get("warmup_steps", 0) or 0)
    if float(c.get("t_mul", 1.0)) != 1.0 or float(c.get("m_mul", 1.0)) != 1.0:
      raise ValueError("lr_configs.t_mul / m_mul other than 1 are not supported here")
    total = float(c.get("total_steps", None) or cycle)
    cycle = cycle - int(warmup / (total / cycle))
    if cycle <= 0:
      return lambda t: 1.0
    start = warmup + float(c.get("start_decay_step", 0.0))

    def cosine(t):
      progress = jnp.maximum(0.0, t - start) / cycle
      progress = progress - jnp.floor(progress)
      return (1.0 - alpha) * jnp.maximum(0.0, 0.5 * (1.0 + jnp.cos(jnp.pi * progress))) + alpha
    return cosine
  if name == "linear_decay":
    warmup = float(c.get("warmup_steps", 0) or 0)
    total = _steps(c, "total_steps", num_training_steps)
    end = float(c.get("end_learning_rate", 0.0))
    if total <= warmup:
      raise ValueError(f"lr_configs.total_steps ({total}) must exceed warmup_steps ({warmup})")
    return lambda t: jnp.maximum(1.0 - jnp.maximum(0.0, (t - warmup) / (total - warmup)), 0.0)
  if name == "decay_every":
    every, factor = float(c.steps_per_decay), float(c.decay_factor)
    return lambda t: factor ** jnp.floor(t / every)
  if name == "exponential_decay":
    decay_steps, rate = float(c.decay_steps), float(c.decay_rate)
    staircase = bool(c.get("staircase", False))
    return lambda t: rate ** (jnp.floor(t / decay_steps) if staircase else t / decay_steps)
  if name == "rsqrt_decay":
    warmup, timescale = float(c.get("warmup_steps", 0) or 0), float(c.get("timescale", 10_000))
    return lambda t: jnp.where(warmup < t, jnp.sqrt(timescale) / jnp.sqrt(t + timescale - warmup), 1.0)
  raise ValueError(f"unknown lr_configs factor {name!r}; known: {', '.join(FACTORS)}")


def create_lr_schedule(lr_configs: ml_collections.ConfigDict,
                       num_training_steps: Optional[int] = None) -> Schedule:
  """Returns ``step -> learning rate`` (float32) for ``config.lr_configs`` (see the module docstring)."""
  if lr_configs is None or "base_learning_rate" not in lr_configs:
    raise ValueError("config.lr_configs.base_learning_rate is required (Scenic's lr_configs)")
  kind = lr_configs.get("learning_rate_schedule", None)
  if kind is None:
    base = float(lr_configs.base_learning_rate)
    return lambda step: jnp.full(jnp.shape(step), base, jnp.float32)
  if kind != "compound":
    raise ValueError(f"unknown lr_configs.learning_rate_schedule {kind!r}; expected 'compound'")
  names = [n.strip() for n in str(lr_configs.factors).split("*") if n.strip()]
  factors = [_factor(n, lr_configs, num_training_steps) for n in names]
  if "linear_decay" in names:
    # Scenic's linear_decay acts on the running product: (ratio - end) * decay + end.
    end = float(lr_configs.get("end_learning_rate", 0.0))

  def schedule(step):
    t = jnp.asarray(step, jnp.float32)
    ratio = jnp.ones_like(t)
    for name, factor in zip(names, factors):
      if name == "linear_decay":
        ratio = (ratio - end) * factor(t) + end
      else:
        ratio = ratio * factor(t)
    return ratio.astype(jnp.float32)

  return schedule


def _path_names(path) -> Sequence[str]:
  names = []
  for entry in path:
    key = getattr(entry, "key", getattr(entry, "name", getattr(entry, "idx", entry)))
    names.append(str(key))
  return names


def weight_decay_mask(params: Any,
                      no_decay_keywords: Sequence[str] = DEFAULT_NO_DECAY_KEYWORDS,
                      no_decay_backbone_keywords: Sequence[str] = DEFAULT_NO_DECAY_BACKBONE_KEYWORDS,
                      skip_scale_and_bias: bool = True) -> Any:
  """Returns a pytree of bools like ``params``: ``True`` where weight decay applies.

  A parameter is excluded when any component of its path contains (case-insensitively) one of
  ``no_decay_keywords``, when it lies under ``backbone`` and a later component contains one of
  ``no_decay_backbone_keywords``, or, with ``skip_scale_and_bias`` (Scenic's
  ``skip_scale_and_bias_regularization``), when it is 1-D (norm scales and biases of any name).
  """
  no_decay = tuple(k.lower() for k in no_decay_keywords)
  no_decay_bb = tuple(k.lower() for k in no_decay_backbone_keywords)

  def decide(path, leaf):
    names = [n.lower() for n in _path_names(path)]
    if any(k in n for n in names for k in no_decay):
      return False
    if names and names[0] == "backbone" and any(k in n for n in names[1:] for k in no_decay_bb):
      return False
    if skip_scale_and_bias and jnp.ndim(leaf) == 1:
      return False
    return True

  return jax.tree_util.tree_map_with_path(decide, params)


_BLOCK = re.compile(r"^layers_(\d+)_(?:blocks_(\d+)|downsample)$")


def layer_ids(params: Any) -> Any:
  """A pytree like ``params`` of ints: each parameter's layer number for layer-wise decay (module
  docstring), and the number of layers ``L`` as ``(tree, L)``."""
  blocks = set()
  for path, _ in jax.tree_util.tree_flatten_with_path(params)[0]:
    names = _path_names(path)
    match = _BLOCK.match(names[1]) if len(names) > 1 and names[0] == "backbone" else None
    if match and match.group(2) is not None:
      blocks.add((int(match.group(1)), int(match.group(2))))
  order = {block: i + 1 for i, block in enumerate(sorted(blocks))}
  num_layers = len(order)

  def layer(path, _):
    names = _path_names(path)
    if not names or names[0] != "backbone":
      return num_layers + 1
    match = _BLOCK.match(names[1]) if len(names) > 1 else None
    if match is None:
      return 0  # patch_embed and anything before the first block
    stage = int(match.group(1))
    if match.group(2) is not None:
      return order[(stage, int(match.group(2)))]
    later = [i for (s, _), i in order.items() if s > stage]
    return min(later) if later else num_layers + 1

  return jax.tree_util.tree_map_with_path(layer, params), num_layers


def scale_by_layer_decay(decay: float) -> optax.GradientTransformation:
  """Multiplies each parameter's update by ``decay ** (L + 1 - layer)`` (``layer_ids``)."""
  def factors(params):
    ids, num_layers = layer_ids(params)
    return jax.tree.map(lambda i: jnp.float32(decay) ** (num_layers + 1 - i), ids)

  def update(updates, state, params=None):
    if params is None:
      raise ValueError("layer-wise lr decay needs the parameters (optax update(..., params))")
    return jax.tree.map(lambda u, f: u * f.astype(u.dtype), updates, factors(params)), state

  return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def optimizer_configs(config: ml_collections.ConfigDict) -> Dict[str, Any]:
  """``{"optimizer": name, **kwargs}`` from ``config.optimizer`` (a string) and ``config.optimizer_configs``,
  with Scenic's legacy names translated (``adam`` + weight decay -> ``adamw``, ``momentum`` -> ``sgd``...)."""
  raw = config.get("optimizer_configs", None)
  opt = dict(raw.to_dict() if isinstance(raw, ml_collections.ConfigDict) else (raw or {}))
  name = config.get("optimizer", None)
  if name is not None and not isinstance(name, str):
    raise ValueError("config.optimizer must be the optimizer's name (a string, e.g. 'adamw') with its "
                     "arguments in config.optimizer_configs (Scenic's layout); got "
                     f"{type(name).__name__}")
  if "optimizer" in opt and name is not None:
    raise ValueError("both config.optimizer and config.optimizer_configs.optimizer are set; set one")
  name = opt.pop("optimizer", name)
  if not name:
    raise ValueError("config.optimizer (e.g. 'adamw') is required")
  for old, new in _ALIASES.items():
    if old in opt:
      opt[new] = opt.pop(old)
  if name == "adam" and "weight_decay" in opt:
    name = "adamw"
  elif name == "momentum":
    name = "sgd"
    opt.setdefault("momentum", 0.9)
  elif name == "nesterov":
    name, opt["nesterov"] = "sgd", True
  if config.get("grad_clip_configs", None) is not None:
    opt["grad_clip"] = dict(config.grad_clip_configs)
  return {"optimizer": name, **opt}


def config_weight_decay_mask(config: ml_collections.ConfigDict, params: Any) -> Optional[Any]:
  """The weight-decay mask of ``config`` for ``params`` (``None``: every parameter decays, Scenic's default)."""
  opt = optimizer_configs(config)
  extras = config.get("weight_decay_configs", None) or {}
  skip = bool(opt.get("skip_scale_and_bias_regularization", False))
  keywords = tuple(extras.get("no_decay_keywords", ()) or ())
  backbone_keywords = tuple(extras.get("no_decay_backbone_keywords", ()) or ())
  if not (skip or keywords or backbone_keywords):
    return None
  return weight_decay_mask(params, keywords, backbone_keywords, skip_scale_and_bias=skip)


def create_optimizer(config: ml_collections.ConfigDict, schedule: Schedule) -> optax.GradientTransformation:
  """Returns the optax optimizer of ``config.optimizer`` / ``config.optimizer_configs`` at rate ``schedule``.

  Unknown keyword arguments raise (optax's own ``TypeError``), as in Scenic.
  """
  opt = optimizer_configs(config)
  name = opt.pop("optimizer")
  opt.pop("skip_scale_and_bias_regularization", None)
  grad_clip = opt.pop("grad_clip", None) or {}
  weight_decay = float(opt.get("weight_decay", 0.0) or 0.0)

  def mask_fn(params):
    mask = config_weight_decay_mask(config, params)
    return jax.tree.map(lambda _: True, params) if mask is None else mask

  parts = []
  method, value = grad_clip.get("clip_method"), grad_clip.get("clip_value")
  if method is not None and value is not None:
    if not hasattr(optax, method):
      raise ValueError(f"unknown optimizer_configs.grad_clip.clip_method {method!r}")
    parts.append(getattr(optax, method)(float(value)))
  if name == "sgd" and "weight_decay" in opt:
    opt.pop("weight_decay")
    if weight_decay:
      parts.append(optax.add_decayed_weights(weight_decay, mask=mask_fn))
  elif name in _MASKED_DECAY and weight_decay:
    opt["mask"] = mask_fn
  if not hasattr(optax, name):
    raise ValueError(f"config.optimizer {name!r} is not an optax optimizer")
  parts.append(getattr(optax, name)(learning_rate=schedule, **opt))
  layer_decay = config.get("layer_decay", None)
  if layer_decay is not None:
    if not 0.0 < float(layer_decay) <= 1.0:
      raise ValueError(f"config.layer_decay must be in (0, 1] (None = off), got {layer_decay}")
    parts.append(scale_by_layer_decay(float(layer_decay)))
  return optax.chain(*parts) if len(parts) > 1 else parts[0]


def describe_mask(mask: Any) -> Dict[str, int]:
  """Counts the decayed and not-decayed parameter leaves of a mask (for logging; ``None`` = all decayed)."""
  leaves = jax.tree.leaves(mask) if mask is not None else []
  return {"decayed": sum(bool(x) for x in leaves), "not_decayed": sum(not bool(x) for x in leaves)}
