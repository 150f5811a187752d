"""What every task's ``get_dataset`` returns (docs/CONTRACTS.md), shared by the trainer and the tasks."""

from typing import Any, Callable, Dict, Iterator, NamedTuple


Batch = Dict[str, Any]  # numpy arrays (detection nests its targets under ``label``)


class Dataset(NamedTuple):
  """``train_iter_fn(start_step)`` yields the batches from that step on, in an order fixed by
  ``(seed, step)``; ``eval_iter_fn()`` yields one pass over the evaluation split; ``meta_data`` holds
  facts such as ``num_classes`` and ``class_names``."""
  train_iter_fn: Callable[[int], Iterator[Batch]]
  eval_iter_fn: Callable[[], Iterator[Batch]]
  meta_data: Dict[str, Any]



