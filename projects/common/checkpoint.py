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

from projects.common import guards


def _root_cause(error: BaseException) -> str:
  """``Type: first line`` of the innermost cause of ``error`` (orbax wraps tensorstore's errors)."""
  while error.__cause__ is not None:
    error = error.__cause__
  first = (str(error).strip().splitlines() or [""])[0][:300]
  return f"{type(error).__name__}: {first}" if first else type(error).__name__


class CheckpointError(guards.JobError):
  """No checkpoint of the directory can be restored."""


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

  @property
  def directory(self) -> str:
    """The checkpoint directory."""
    return str(self.manager.directory)

  def wants_save(self, step: int, force: bool = False) -> bool:
    """Whether ``save(step, ..., force)`` would write a checkpoint."""
    if not force and step % self.save_every_steps:
      return False
    return step not in self.manager.all_steps()

  def save(self, step: int, state: Any, force: bool = False) -> bool:
    """Saves ``state`` at ``step`` if ``step`` is a multiple of the interval (or ``force``); returns whether it
    saved. A step that is already saved is not saved again."""
    if not self.wants_save(step, force):
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
    """Returns the newest intact checkpoint restored into ``state``'s structure, or ``state`` if there is none.

    A checkpoint that fails to restore (truncated data file, missing ``_METADATA``, ...) is skipped with a
    warning naming it and moved aside to ``<step>.corrupt`` (kept for inspection; process 0 renames it), so
    that the run re-saves that step; when no checkpoint restores, ``CheckpointError`` names the directory.
    """
    steps = self.all_steps()
    if not steps:
      return state
    bad = []
    for step in reversed(steps):
      path = os.path.join(self.directory, str(step))
      logging.info("restoring checkpoint of step %d from %s", step, self.directory)
      try:
        restored = self.restore(state, step)
      except Exception as e:  # pylint: disable=broad-except  (orbax/tensorstore raise many types)
        reason = _root_cause(e)
        logging.warning("checkpoint %s is corrupt or incomplete (%s); trying an older one", path, reason)
        bad.append((step, path, reason))
        continue
      self._set_aside(bad)
      if bad:
        logging.warning("resumed from step %d; skipped corrupt checkpoint(s) %s", step,
                        ", ".join(p for _, p, _ in bad))
      return restored
    details = "; ".join(f"{p} ({why})" for _, p, why in bad)
    raise CheckpointError(f"no intact checkpoint in {self.directory}: {details}. Restore them from a backup "
                          "or move the directory away to start over")

  def _set_aside(self, bad) -> None:
    """Renames the corrupt step directories ``<step>.corrupt`` (process 0) and refreshes the step list."""
    if not bad:
      return
    if jax.process_index() == 0:
      for step, path, _ in bad:
        target = f"{path}.corrupt"
        suffix = 1
        while os.path.exists(target):
          target, suffix = f"{path}.corrupt{suffix}", suffix + 1
        os.rename(path, target)
        logging.warning("moved the corrupt checkpoint of step %d to %s", step, target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("checkpoint_set_aside")
    self.manager.reload()

  def wait_until_finished(self) -> None:
    """Blocks until asynchronous saves are on disk."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for pending saves and releases the manager's resources."""
    self.manager.wait_until_finished()
    self.manager.close()
