"""Checkpointing of the ``TrainState`` with an orbax ``CheckpointManager``.

Saves are atomic: orbax writes each step into ``<step>.orbax-checkpoint-tmp-<timestamp>`` and renames it to
``<step>`` only once every file (and, multi-host, every process) is done, so a run killed mid-save leaves a
temporary directory that is never restored (and is removed on the next start, ``cleanup_tmp_directories``).
Only fully written steps count for ``latest_step``.
"""

import os
from typing import Any, Optional

from absl import logging
import jax
import orbax.checkpoint as ocp


class Checkpointer:
  """Saves every ``save_every_steps`` steps (and when forced), keeps the last ``max_to_keep``.

  Attributes:
    manager: the underlying ``ocp.CheckpointManager``.
  """

  def __init__(self, directory: str, save_every_steps: int = 1000, max_to_keep: Optional[int] = 3,
               asynchronous: bool = True) -> None:
    if save_every_steps <= 0:
      raise ValueError(f"checkpoint save interval must be positive, got {save_every_steps}")
    self.save_every_steps = int(save_every_steps)
    # The interval is applied here (``save``): orbax's own policy also saves the first step of a run.
    options = ocp.CheckpointManagerOptions(
        save_interval_steps=1,
        max_to_keep=max_to_keep,
        create=True,
        cleanup_tmp_directories=True,
        enable_async_checkpointing=asynchronous)
    self.manager = ocp.CheckpointManager(os.path.abspath(os.fspath(directory)), options=options)

  def latest_step(self) -> Optional[int]:
    """The newest complete checkpoint's step, or ``None``."""
    return self.manager.latest_step()

  def all_steps(self):
    """The steps of the complete checkpoints on disk, oldest first."""
    return sorted(self.manager.all_steps())

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if ``step`` is a multiple of the interval (or ``force``); returns whether it
    saved. A step that is already saved is not saved again."""
    if not force and step % self.save_every_steps:
      return False
    if step in self.manager.all_steps():
      return False
    saved = self.manager.save(int(step), args=ocp.args.StandardSave(state), force=True)
    if saved:
      logging.info("saving checkpoint for step %d", step)
    return saved

  def restore(self, target: Any, step: Optional[int] = None) -> Any:
    """Restores the checkpoint of ``step`` (default: the latest) shaped, typed and sharded like ``target``.

    ``target`` is a concrete state (e.g. the freshly initialised one) or its abstract
    ``jax.ShapeDtypeStruct`` version; raises ``FileNotFoundError`` when there is no checkpoint.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.manager.directory}")
    abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
    return self.manager.restore(int(step), args=ocp.args.StandardRestore(abstract))

  def restore_or_keep(self, state: Any) -> Any:
    """Returns the latest checkpoint restored into ``state``'s structure, or ``state`` if there is none."""
    step = self.latest_step()
    if step is None:
      return state
    logging.info("restoring checkpoint of step %d from %s", step, self.manager.directory)
    return self.restore(state, step)

  def wait_until_finished(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self.manager.wait_until_finished()
    self.manager.close()
