"""Counting train steps as they complete on the device, not as they are dispatched.

JAX dispatches a jitted step and returns at once; a loop that advanced its progress bar on dispatch ran
ahead of the device and then stalled at every metric fetch. :class:`CompletedSteps` keeps the dispatched
steps' outputs in order and reports how many have finished; it also bounds how many steps are in flight
(``max_in_flight``), so the bar moves steadily and queued inputs do not pile up in memory.
"""

import collections
from typing import Any, Deque, Tuple

import jax


def _is_ready(marker: Any) -> bool:
  return all(leaf.is_ready() for leaf in jax.tree.leaves(marker) if hasattr(leaf, "is_ready"))


class CompletedSteps:
  """Tracks dispatched steps by a marker (any non-donated output of the step, e.g. its metrics).

  ``dispatched(step, marker)`` after each call; ``poll()`` returns how many more steps have completed
  since the last call (in dispatch order: a step counts once it and all before it are done).
  """

  def __init__(self, max_in_flight: int = 2) -> None:
    if max_in_flight < 1:
      raise ValueError(f"max_in_flight must be >= 1, got {max_in_flight}")
    self.max_in_flight = max_in_flight
    self._pending: Deque[Tuple[int, Any]] = collections.deque()
    self._newly_done = 0
    self.last_completed = None

  @property
  def in_flight(self) -> int:
    """Steps dispatched and not yet seen complete."""
    return len(self._pending)

  def dispatched(self, step: int, marker: Any) -> None:
    """Registers a dispatched step; blocks while more than ``max_in_flight`` steps are unfinished."""
    self._pending.append((step, marker))
    while len(self._pending) > self.max_in_flight:
      self._complete_oldest(block=True)

  def _complete_oldest(self, block: bool) -> bool:
    step, marker = self._pending[0]
    if block:
      jax.block_until_ready(marker)
    elif not _is_ready(marker):
      return False
    self._pending.popleft()
    self.last_completed = step
    self._newly_done += 1
    return True

  def poll(self) -> int:
    """Number of steps newly completed since the last ``poll``/``wait_all`` (never blocks)."""
    while self._pending and self._complete_oldest(block=False):
      pass
    done, self._newly_done = self._newly_done, 0
    return done

  def wait_all(self) -> int:
    """Blocks until every dispatched step is done; returns the number newly completed."""
    while self._pending:
      self._complete_oldest(block=True)
    return self.poll()
