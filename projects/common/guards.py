"""Guards of a training job: stop on a non-finite loss or gradient, refuse to resume with another model.

* ``NonFiniteGuard`` keeps each step's loss and gradient norm as device scalars (no transfer, no sync) and
  checks them when the trainer fetches its logged metrics anyway and before every checkpoint save; the first
  non-finite step stops the job with ``NonFiniteError`` (what to try is in the message), so no checkpoint or
  result is written from a diverged state.
* ``check_resume_config(workdir, config)`` compares the ``config.json`` of a workdir that holds checkpoints
  with the new config *before* anything is written: differing model keys are refused; harmless keys (number
  of steps, schedule, logging, ...) are refused too unless ``config.allow_config_change`` (``--allow_config_change``)
  is set; keys without effect on the results (logging, progress bar, paths) are ignored. Both configs are
  read in today's layout first (``upgrade_legacy_config``), so an earlier run's ``config.json`` resumes.

Every error here derives from ``JobError``: a user-facing, one-message failure (``config_utils.job_main``
prints it without a traceback and exits with status 1).
"""

import json
import math
import os
import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import numpy as np

from backbones.weights import tree

# Keys without effect on the trained weights: ignored when comparing a resumed run's config.
IGNORED_KEYS = ("allow_config_change", "log_summary_steps", "log_eval_steps", "steps_per_eval", "progress_bar",
                "prefetch_to_device", "checkpoint_steps", "max_checkpoints_to_keep", "max_checkpoint_keep",
                "num_visualized_images", "experiment_name", "dataset.data_dir", "synthetic_data.manual_dir",
                "init_from.", "dataset_meta.", "official_checkpoint")
# Keys a resumed run may change with ``allow_config_change``: the run continues from the checkpoint with them.
CHANGEABLE_KEYS = ("num_training_steps", "num_training_epochs", "lr_configs.", "optimizer_configs.grad_clip.",
                   "model.dtype", "data_dtype_str", "eval_batch_size", "checkpoint")
ADVICE = ("lower the learning rate (--config.lr_configs.base_learning_rate), compute in float32 instead of "
          "bfloat16 (--config.model.dtype=float32), or clip gradients "
          "(--config.optimizer_configs.grad_clip.clip_value=1.0)")


# Earlier runs named every segmentation dataset "ade20k" in ``dataset_name`` and the real one by its tfds builder
# in ``dataset.name``; ``dataset_name`` alone names it now (``projects.registry``): tfds builder -> dataset_name.
LEGACY_DATASET_NAMES = {"ade20k_challenge": "ade20k", "cityscapes_train_ids": "cityscapes",
                        "segmentation_folder": "segmentation_folder"}


class JobError(RuntimeError):
  """A failure of a training job with a message for its user (no traceback needed)."""


class NonFiniteError(JobError, FloatingPointError):
  """The loss or the gradients became NaN/Inf."""


class ConfigMismatchError(JobError, ValueError):
  """A workdir's stored config differs from the new one in keys that may not change on resume."""


class NonFiniteGuard:
  """Remembers the per-step ``objective`` (the minimised loss), ``loss`` and ``grad_norm`` device scalars until
  ``check`` fetches them."""

  NAMES = ("objective", "loss", "grad_norm")

  def __init__(self) -> None:
    self._pending: List[Tuple[int, Dict[str, Any]]] = []

  def add(self, step: int, metrics: Mapping[str, Any]) -> None:
    """Queues step ``step``'s values (``(sum, count)`` pairs or bare scalars); nothing is transferred."""
    values = {}
    for name in self.NAMES:
      if name in metrics:
        value = metrics[name]
        values[name] = value[0] if isinstance(value, (tuple, list)) else value
    self._pending.append((step, values))

  def check(self, checkpoint_dir: Optional[str] = None, last_good_step: Optional[int] = None) -> None:
    """Fetches the queued scalars (already computed by then) and raises ``NonFiniteError`` at the first
    non-finite one, naming its step; clears the queue otherwise."""
    pending, self._pending = self._pending, []
    if not pending:
      return
    fetched = jax.device_get([values for _, values in pending])
    for (step, _), values in zip(pending, fetched):
      bad = [name for name, value in values.items() if not np.all(np.isfinite(np.asarray(value, np.float64)))]
      if bad:
        what = " and ".join(f"{'gradient norm' if n == 'grad_norm' else n} = {float(np.asarray(values[n]))}"
                            for n in bad)
        resume = ""
        if checkpoint_dir and last_good_step is not None:
          resume = (f" The last checkpoint (step {last_good_step}, in {checkpoint_dir}) predates it: rerun with "
                    "the same --workdir and --allow_config_change to resume from there with the new settings.")
        raise NonFiniteError(f"training diverged at step {step}: {what}. Nothing was saved from this step "
                             f"on. Try to {ADVICE}.{resume}")


@jax.jit
def _all_finite(tree: Any) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.bool_(True)


def check_params_finite(step: int, params: Any) -> None:
  """Raises ``NonFiniteError`` when a parameter is NaN/Inf after ``step`` (one fused reduction: for the
  checkpoint steps only, where the state is fetched anyway)."""
  finite = _all_finite(params)
  if isinstance(finite, jax.Array) and not finite.is_fully_addressable:
    finite = finite.addressable_data(0)
  if not bool(finite):
    raise NonFiniteError(f"training diverged at step {step}: parameters are NaN/Inf after its update (the "
                         f"update overflowed). Nothing was saved from this step on. Try to {ADVICE}.")


def _matches(key: str, patterns: Sequence[str]) -> bool:
  return any(key == p or (p.endswith(".") and key.startswith(p)) or key.startswith(p + ".") for p in patterns)


def config_differences(stored: Mapping[str, Any], new: Mapping[str, Any]) -> Dict[str, Tuple[Any, Any]]:
  """``{dotted key: (stored value, new value)}`` of the leaves that differ (JSON-comparable dicts), without
  the ``IGNORED_KEYS``."""
  a, b = tree.flatten(stored, sep=".", keep_empty=True), tree.flatten(new, sep=".", keep_empty=True)
  missing = object()
  diffs = {}
  for key in sorted(set(a) | set(b)):
    if _matches(key, IGNORED_KEYS):
      continue
    old, value = a.get(key, missing), b.get(key, missing)
    if old != value and not (_is_nan(old) and _is_nan(value)):
      diffs[key] = (None if old is missing else old, None if value is missing else value)
  return diffs


def _is_nan(value: Any) -> bool:
  return isinstance(value, float) and math.isnan(value)


def upgrade_legacy_config(config: Mapping[str, Any]) -> Dict[str, Any]:
  """``config`` (plain containers, e.g. an earlier run's ``config.json``) in today's layout: a segmentation
  ``dataset.name`` (tfds builder) becomes ``dataset_name``; raises a one-line ``ValueError`` saying what to
  change when the two disagree or the builder is unknown."""
  dataset = config.get("dataset")
  if not isinstance(dataset, Mapping) or "name" not in dataset:
    return dict(config)
  builder, given = dataset["name"], config.get("dataset_name")
  name = LEGACY_DATASET_NAMES.get(builder)
  if name is None or given not in (None, "", "ade20k", name):
    raise ValueError(f"config.dataset.name={builder!r} (with dataset_name={given!r}) is no longer read: set "
                     f"dataset_name to one of {sorted(set(LEGACY_DATASET_NAMES.values()))} and remove dataset.name")
  return {**config, "dataset_name": name, "dataset": {k: v for k, v in dataset.items() if k != "name"}}


def has_checkpoint(workdir: str) -> bool:
  """Whether ``workdir/checkpoints`` holds a finished checkpoint step directory."""
  directory = os.path.join(workdir, "checkpoints")
  return os.path.isdir(directory) and any(re.fullmatch(r"\d+", name) for name in os.listdir(directory))


def check_resume_config(workdir: str, config: Any) -> None:
  """Refuses to resume ``workdir`` with a config whose model (or, without ``allow_config_change``, any
  result-changing key) differs from the stored ``config.json``; does nothing for a fresh workdir."""
  path = os.path.join(workdir, "config.json")
  if not (os.path.isfile(path) and has_checkpoint(workdir)):
    return
  try:
    with open(path) as f:
      stored = json.load(f)
  except (OSError, ValueError) as e:
    raise ConfigMismatchError(f"cannot read {path} to check that resuming {workdir} is safe ({e}); restore "
                              "it or use a new --workdir") from None
  new = json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") else dict(config)
  try:
    stored = upgrade_legacy_config(stored)
  except ValueError as e:
    raise ConfigMismatchError(f"{path}: {e}") from None
  diffs = config_differences(stored, upgrade_legacy_config(new))
  if not diffs:
    return
  allow = bool(new.get("allow_config_change", False))
  refused = {k: v for k, v in diffs.items() if not (allow and _matches(k, CHANGEABLE_KEYS))}
  if not refused:
    return
  shown = "; ".join(f"{k}: {old!r} -> {value!r}" for k, (old, value) in list(refused.items())[:8])
  more = f" (+{len(refused) - 8} more)" if len(refused) > 8 else ""
  structural = [k for k in refused if not _matches(k, CHANGEABLE_KEYS)]
  if structural:
    hint = ("these change the model or the data and cannot be resumed: use a new --workdir (to fine-tune from "
            "it, point model.backbone.checkpoint at a converted checkpoint)")
  else:
    hint = "pass --allow_config_change (config.allow_config_change=True) to resume with them"
  raise ConfigMismatchError(f"{workdir} holds checkpoints of another config ({path}): {shown}{more}. Nothing "
                            f"was changed; {hint}.")
