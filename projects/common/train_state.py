"""The training state: everything a resumed run needs to continue bit-for-bit."""

from typing import Any, Dict

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
  """
  step: jnp.ndarray
  params: Any
  model_state: Dict[str, Any]
  opt_state: Any
  rng: jnp.ndarray

  def variables(self) -> Dict[str, Any]:
    """The variables dict for ``flax_model.apply``: ``{"params": ..., **model_state}``."""
    return {"params": self.params, **self.model_state}


def count_params(params: Any) -> int:
  """Total number of scalars in a parameter pytree."""
  return int(sum(jnp.size(x) for x in jax.tree.leaves(params)))
