"""The evaluator interface the trainer drives, and the accumulation of ``{name: (sum, count)}`` metrics.

A task plugs its evaluation into ``trainer.train_and_evaluate`` with an ``Evaluator``:

* ``process_fn(outputs, batch)`` is pure and jittable; the trainer fuses it into the jitted eval step, so
  reductions (a confusion matrix) and post-processing (box decoding, top-k, NMS) run on the devices over the
  global batch. Its result may be any pytree of arrays.
* ``update(processed, host_batch)`` runs on the host after each eval step. It may keep device arrays and add
  them lazily (segmentation: the confusion matrix never leaves the devices until ``compute``) or fetch them
  with ``sharding.to_host`` (detection: decoded boxes for COCO).
* ``compute()`` returns the results of the pass: scalars (``float``) are logged to TensorBoard as
  ``eval/<name>``; other values (per-class arrays, ...) are returned to the caller untouched.
* ``reset()`` is called before every pass, then ``begin_pass(state)`` (default: nothing).
"""

import abc
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

import jax
import numpy as np


class Evaluator(abc.ABC):
  """Task-specific evaluation over one pass of the validation split (see the module docstring)."""

  @abc.abstractmethod
  def reset(self) -> None:
    """Clears the accumulated state before a new pass."""

  def begin_pass(self, state: Any) -> None:
    """Called with the train state before each pass, after ``reset``; evaluators that run their own
    inference (e.g. per-image test-time protocols) take the variables from it. Default: nothing."""
    del state

  @abc.abstractmethod
  def process_fn(self, outputs: Any, batch: Mapping[str, Any]) -> Any:
    """Jittable: turns the model outputs on a global ``batch`` into what ``update`` accumulates."""

  @abc.abstractmethod
  def update(self, processed: Any, host_batch: Mapping[str, Any]) -> None:
    """Accumulates the ``process_fn`` result of one batch (``host_batch`` is this process's numpy batch)."""

  @abc.abstractmethod
  def compute(self) -> Dict[str, Any]:
    """Returns the results of the pass (scalars are logged)."""


class MetricsAccumulator:
  """Sums ``{name: (sum, count)}`` metric dicts (device or host values) and averages them at the end."""

  def __init__(self) -> None:
    self._pending = []

  def add(self, metrics: Mapping[str, Tuple[Any, Any]]) -> None:
    """Queues one step's metrics; nothing is transferred until ``result``."""
    self._pending.append(metrics)

  def __len__(self) -> int:
    return len(self._pending)

  def result(self) -> Dict[str, float]:
    """Returns ``{name: sum_over_steps(sum) / sum_over_steps(count)}`` and clears the queue."""
    pending = jax.device_get(self._pending)
    self._pending = []
    sums: Dict[str, float] = {}
    counts: Dict[str, float] = {}
    for metrics in pending:
      for name, value in metrics.items():
        total, count = value if isinstance(value, (tuple, list)) else (value, 1.0)
        sums[name] = sums.get(name, 0.0) + float(np.sum(total))
        counts[name] = counts.get(name, 0.0) + float(np.sum(count))
    return {name: sums[name] / max(counts[name], 1e-12) for name in sums}


def scalar_results(results: Mapping[str, Any]) -> Dict[str, float]:
  """The entries of ``results`` that are scalars, as floats (for metric writers)."""
  out = {}
  for name, value in results.items():
    if np.ndim(value) == 0:
      try:
        out[name] = float(value)
      except (TypeError, ValueError):
        continue
  return out


def run_evaluation(eval_step, state: Any, batches: Iterable[Any], shard_fn,
                   evaluator: Optional[Evaluator] = None,
                   max_batches: Optional[int] = None) -> Dict[str, Any]:
  """One evaluation pass: ``eval_step(state, global_batch) -> (metrics, processed)`` over ``batches``.

  Returns the averaged model metrics merged with ``evaluator.compute()`` (evaluator keys win) and
  ``num_batches``.
  """
  accumulator = MetricsAccumulator()
  if evaluator is not None:
    evaluator.reset()
    evaluator.begin_pass(state)
  num_batches = 0
  for host_batch in batches:
    if max_batches is not None and 0 < max_batches <= num_batches:
      break
    metrics, processed = eval_step(state, shard_fn(host_batch))
    accumulator.add(metrics)
    if evaluator is not None:
      evaluator.update(processed, host_batch)
    num_batches += 1
  if num_batches == 0:
    raise ValueError("the evaluation iterator yielded no batches")
  results: Dict[str, Any] = dict(accumulator.result())
  if evaluator is not None:
    results.update(evaluator.compute())
  results["num_batches"] = num_batches
  return results
