"""The training state: everything a resumed run needs to continue bit-for-bit (and the parameter EMA)."""

from typing import Any, Dict, Optional, Union

import flax
import jax
import jax.numpy as jnp


@flax.struct.dataclass
class TrainState:
  """Immutable training state (a pytree; saved whole by the checkpointer).

  Attributes:
    step: number of optimizer updates done so far (int32 scalar).
    params: the ``params`` collection of the Flax model.
    model_state: the other mutable collections (``batch_stats``, ...), a dict keyed by collection name.
    opt_state: the optax optimizer state.
    rng: the base PRNG key of the run; per-step keys are ``fold_in(rng, step)``, so the random stream
      depends only on the seed and the step, not on how often the run was interrupted.
    ema_params: exponential moving average of ``params`` (:func:`update_ema`), or None when the run keeps
      none; checkpointed and restored with the rest of the state.
  """
  step: jnp.ndarray
  params: Any
  model_state: Dict[str, Any]
  opt_state: Any
  rng: jnp.ndarray
  ema_params: Optional[Any] = None

  def variables(self) -> Dict[str, Any]:
    """The variables dict for ``flax_model.apply``: ``{"params": ..., **model_state}``."""
    return {"params": self.params, **self.model_state}

  def ema_variables(self) -> Dict[str, Any]:
    """The variables dict with the EMA parameters (the other collections are the live ones)."""
    if self.ema_params is None:
      raise ValueError("this TrainState keeps no parameter EMA (config.ema_decay is 0)")
    return {"params": self.ema_params, **self.model_state}


def ema_decay_at(step: Union[int, jnp.ndarray], decay: float, warmup: bool = True) -> jnp.ndarray:
  """The EMA decay used for the update that produces step ``step`` (``step`` >= 1 updates done).

  With ``warmup`` the decay is ``min(decay, (1 + step) / (10 + step))`` (TensorFlow's
  ``ExponentialMovingAverage(num_updates=...)``, also timm's ``ModelEmaV2`` warm-up in spirit): early
  averages follow the fast-moving weights instead of staying near the initialisation.
  """
  decay = jnp.asarray(decay, jnp.float32)
  if not warmup:
    return decay
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def update_ema(ema_params: Any, params: Any, step: Union[int, jnp.ndarray], decay: float,
               warmup: bool = True) -> Any:
  """``ema <- d * ema + (1 - d) * params`` with ``d = ema_decay_at(step, decay, warmup)``, per leaf dtype."""
  d = ema_decay_at(step, decay, warmup)
  return jax.tree.map(lambda e, p: (d * e + (1.0 - d) * p).astype(e.dtype), ema_params, params)


def init_ema(params: Any) -> Any:
  """A fresh copy of ``params`` (own buffers: the state is donated, so the EMA must not alias them)."""
  return jax.jit(lambda p: jax.tree.map(jnp.copy, p))(params)


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(params)))
