"""The task-agnostic trainer: ``train_and_evaluate(model, dataset, config, workdir, evaluator=...)``.

Used by every job of the library (ADE20K segmentation, COCO detection). The task supplies a ``BaseModel``
(network, ``loss_function``, ``get_metrics_fn_jit``), a ``Dataset`` (``train_iter_fn(start_step)``,
``eval_iter_fn()``, ``meta_data``) and optionally an ``evaluation.Evaluator``.

Config keys read here (Scenic's names and meanings; defaults in brackets):
  rng_seed (0), batch_size (required), num_training_steps, or num_training_epochs (x the dataset's
  ``meta_data["steps_per_epoch"]``, else ``num_train_examples // batch_size``, as Scenic),
  log_summary_steps (50), log_eval_steps (num_training_steps; <= 0 disables periodic evaluation),
  steps_per_eval (None = a full pass), checkpoint (True: save checkpoints), checkpoint_steps (1000),
  max_checkpoint_keep (3), data_dtype_str ("float32": the inputs are cast to it; the model decides its
  compute dtype, ``model.dtype``), init_from.checkpoint_path (None: a pretrained backbone for
  ``params["backbone"]``, see ``pretrained``), optimizer + optimizer_configs and lr_configs (see ``optim``).
  Ours: progress_bar (True), prefetch_to_device (2), rng_names (("dropout",)), weight_decay_configs,
  allow_config_change (False: resuming a workdir refuses a changed config, ``guards.check_resume_config``),
  ema_decay (0.0 = no parameter EMA; e.g. 0.9998), ema_warmup (True: decay min(d, (1+t)/(10+t))),
  init_input_shape (None: from ``meta_data["input_shape"]`` or the first training batch).

Train step contract: ``loss_function`` returns the loss, or ``(loss, metrics)`` whose metrics the step then
reports (they must be the split's metrics, as ``get_metrics_fn_jit("train")`` returns them: detection computes
its anchor targets once); otherwise the step calls ``get_metrics_fn_jit("train")``. Train and eval ``loss``
therefore mean the same thing; the minimised value (with L2, auxiliary terms, label smoothing) is logged as
``objective``.

Parallelism: one jitted step over global arrays on a 1-D data mesh (``sharding``): batches are split along
the batch axis, the state is replicated, and reductions over the batch are global.
"""

import functools
import os
import time
from typing import Any, Callable, Dict, Mapping, NamedTuple, Optional, Sequence

from absl import logging
from clu import metric_writers
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from backbones import preprocess
from projects.common import checkpoint as checkpoint_lib
from projects.common import evaluation
from projects.common import guards
from projects.common import host_memory
from projects.common import optim
from projects.common import pretrained
from projects.common import progress as progress_lib
from projects.common import sharding
from projects.common.base_model import BaseModel
from projects.common.train_state import TrainState, count_params, init_ema, update_ema

# hook(step, state, metrics): called after every train step with the step's device metrics.
Hook = Callable[[int, TrainState, Mapping[str, Any]], None]


class TrainResult(NamedTuple):
  """What ``train_and_evaluate`` returns."""
  state: TrainState
  train_summary: Dict[str, float]
  eval_summary: Dict[str, Any]


def compute_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The compute dtype named by ``config.model.dtype`` (float32 or bfloat16)."""
  name = str(config.get("model", {}).get("dtype", "float32"))
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"config.model.dtype must be float32, bfloat16 or float16, got {name!r}")
  return jnp.dtype(name)


def data_dtype(config: ml_collections.ConfigDict) -> jnp.dtype:
  """The dtype the inputs are fed in: Scenic's ``config.data_dtype_str`` (default float32)."""
  name = str(config.get("data_dtype_str", None) or "float32")
  if name not in ("float32", "bfloat16", "float16"):
    raise ValueError(f"config.data_dtype_str must be float32, bfloat16 or float16, got {name!r}")
  return jnp.dtype(name)


def _cast_inputs(batch: Mapping[str, Any], dtype: jnp.dtype) -> Any:
  inputs = batch["inputs"]
  if inputs.dtype == jnp.uint8:  # raw 0-255 RGB (predict on user images): normalise as the pipelines do
    inputs = ((inputs.astype(jnp.float32) - jnp.asarray(preprocess.IMAGENET_MEAN, jnp.float32))
              / jnp.asarray(preprocess.IMAGENET_STD, jnp.float32))
  if jnp.issubdtype(inputs.dtype, jnp.floating) and inputs.dtype != dtype:
    inputs = inputs.astype(dtype)
  return inputs


def model_apply_kwargs(model: BaseModel, batch: Mapping[str, Any], train: bool) -> Dict[str, Any]:
  """Extra keyword arguments of ``flax_model.apply`` for ``batch``: ``model.apply_kwargs(batch, train)`` for
  models whose forward pass needs more than the images (two-stage detectors: image sizes, and the ground
  truth in training), ``{}`` for the others."""
  fn = getattr(model, "apply_kwargs", None)
  return dict(fn(batch, train)) if fn is not None else {}


def _split_apply_output(result: Any, mutable: Sequence[str]):
  if mutable:
    return result
  return result, {}


def make_train_step(model: BaseModel, tx, schedule: optim.Schedule, dtype: jnp.dtype,
                    rng_names: Sequence[str] = ("dropout",), ema_decay: float = 0.0,
                    ema_warmup: bool = True) -> Callable[..., Any]:
  """Returns the (un-jitted) ``train_step(state, batch) -> (state, metrics)``.

  Metrics are ``{name: (sum, count)}``: those returned by ``loss_function`` as ``(loss, metrics)``, else
  ``model.get_metrics_fn_jit("train")``'s, plus ``objective`` (the minimised value), ``grad_norm`` (global L2
  norm of the gradients) and ``learning_rate`` (as ``(value, 1)``).
  When the state keeps ``ema_params``, they are updated with ``ema_decay`` (``train_state.update_ema``).
  """
  metrics_fn = model.get_metrics_fn_jit("train")

  def train_step(state: TrainState, batch: Mapping[str, Any]):
    step_rng = jax.random.fold_in(state.rng, state.step)
    rngs = {name: jax.random.fold_in(step_rng, i) for i, name in enumerate(rng_names)}
    mutable = sorted(state.model_state.keys())
    inputs = _cast_inputs(batch, dtype)

    def loss_fn(params):
      variables = {"params": params, **state.model_state}
      result = model.flax_model.apply(variables, inputs, train=True, rngs=rngs,
                                      mutable=mutable if mutable else False,
                                      **model_apply_kwargs(model, batch, train=True))
      outputs, new_model_state = _split_apply_output(result, mutable)
      loss = model.loss_function(outputs, batch, params)
      loss_metrics = None
      if isinstance(loss, tuple):  # Scenic's detection convention: (total_loss, metrics)
        loss, loss_metrics = loss
      return loss, (outputs, new_model_state, loss_metrics)

    (loss, (outputs, new_model_state, loss_metrics)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params)
    updates, new_opt_state = tx.update(grads, state.opt_state, state.params)
    new_params = jax.tree.map(jnp.add, state.params, updates)
    metrics = dict(metrics_fn(outputs, batch) if loss_metrics is None else loss_metrics)
    metrics["objective"] = (loss, jnp.ones((), jnp.float32))
    metrics["grad_norm"] = (optax.tree.norm(grads).astype(jnp.float32), jnp.ones((), jnp.float32))
    metrics["learning_rate"] = (schedule(state.step), jnp.ones((), jnp.float32))
    new_state = state.replace(step=state.step + 1, params=new_params,
                              model_state=dict(new_model_state), opt_state=new_opt_state)
    if state.ema_params is not None:
      new_state = new_state.replace(ema_params=update_ema(state.ema_params, new_params, state.step + 1,
                                                          ema_decay, ema_warmup))
    return new_state, metrics

  return train_step


def jit_train_step(model: BaseModel, tx, schedule: optim.Schedule, dtype: jnp.dtype,
                   mesh: jax.sharding.Mesh, **kwargs) -> Callable[..., Any]:
  """:func:`make_train_step` jitted over ``mesh``: state replicated and donated, batch sharded on its
  leading axis (``kwargs`` go to :func:`make_train_step`). The trainer's step; the benchmarks time it."""
  replicated = sharding.replicated_sharding(mesh)
  return jax.jit(make_train_step(model, tx, schedule, dtype, **kwargs),
                 in_shardings=(replicated, sharding.batch_sharding(mesh)),
                 out_shardings=(replicated, replicated), donate_argnums=(0,))


def make_eval_step(model: BaseModel, dtype: jnp.dtype,
                   evaluator: Optional[evaluation.Evaluator] = None) -> Callable[..., Any]:
  """Returns the (un-jitted) ``eval_step(state, batch) -> (metrics, evaluator.process_fn(...))``."""
  metrics_fn = model.get_metrics_fn_jit("validation")

  def eval_step(state: TrainState, batch: Mapping[str, Any]):
    outputs = model.flax_model.apply(state.variables(), _cast_inputs(batch, dtype), train=False,
                                     **model_apply_kwargs(model, batch, train=False))
    metrics = metrics_fn(outputs, batch)
    processed = evaluator.process_fn(outputs, batch) if evaluator is not None else None
    return metrics, processed

  return eval_step


def make_predict_fn(model: BaseModel, mesh: jax.sharding.Mesh,
                    dtype: jnp.dtype = jnp.float32) -> Callable[[Dict[str, Any], Any], Any]:
  """Returns a jitted ``predict(variables, global_batch) -> outputs`` (``train=False``), batch-sharded.

  ``global_batch["inputs"]`` is either normalised float (as the input pipelines give) or uint8 RGB 0-255
  pixels, which are normalised with the ImageNet statistics first (``backbones.preprocess``).
  """
  def predict(variables, batch):
    return model.flax_model.apply(variables, _cast_inputs(batch, dtype), train=False,
                                  **model_apply_kwargs(model, batch, train=False))
  return jax.jit(predict, in_shardings=(sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)))


def num_training_steps(config: ml_collections.ConfigDict, meta_data: Mapping[str, Any]) -> int:
  """Scenic's rule: ``num_training_steps``, else ``num_training_epochs`` x steps per epoch (the dataset's
  ``meta_data["steps_per_epoch"]``, else ``num_train_examples // batch_size``)."""
  steps, epochs = config.get("num_training_steps", None), config.get("num_training_epochs", None)
  if not steps and epochs:
    per_epoch = meta_data.get("steps_per_epoch") or (
        int(meta_data.get("num_train_examples", 0)) // int(config.batch_size))
    if not per_epoch:
      raise ValueError("config.num_training_epochs needs the dataset's meta_data['steps_per_epoch'] or "
                       "'num_train_examples'; set config.num_training_steps instead")
    steps = int(round(float(epochs) * int(per_epoch)))
  if not steps or int(steps) <= 0:
    raise ValueError(f"config.num_training_steps (or num_training_epochs) must be positive, got {steps}")
  return int(steps)


def _init_input_shape(config, dataset) -> tuple:
  shape = config.get("init_input_shape", None) or dataset.meta_data.get("input_shape", None)
  if shape is None:
    first = next(iter(dataset.train_iter_fn(0)))
    shape = np.shape(first["inputs"])
  shape = tuple(int(s) for s in shape)
  if len(shape) != 4:
    raise ValueError(f"init input shape must be (batch, height, width, channels), got {shape}")
  return (1,) + shape[1:]


def initialize_state(model: BaseModel, config: ml_collections.ConfigDict, dataset: Any,
                     tx, mesh: jax.sharding.Mesh, load_pretrained: bool = True) -> TrainState:
  """Initialises params (with ``load_pretrained``, the backbone from ``config.init_from.checkpoint_path``),
  the other collections and the optimizer state, replicated over ``mesh``."""
  rng = jax.random.PRNGKey(int(config.get("rng_seed", 0)))
  init_rng, train_rng = jax.random.split(rng)
  input_shape = _init_input_shape(config, dataset)
  replicated = sharding.replicated_sharding(mesh)

  # A model whose training forward needs the batch (``apply_kwargs``: the ground truth) is initialised in
  # eval mode, which creates the same parameters.
  init_train = getattr(model, "apply_kwargs", None) is None

  @functools.partial(jax.jit, out_shardings=replicated)
  def init_variables(key):
    params_key, dropout_key = jax.random.split(key)
    return model.flax_model.init({"params": params_key, "dropout": dropout_key},
                                 jnp.zeros(input_shape, jnp.float32), train=init_train)

  variables = dict(init_variables(init_rng))
  params = variables.pop("params")
  backbone_ckpt = pretrained.init_from_path(config)
  if backbone_ckpt and load_pretrained:
    backbone = model.build_backbone(jnp.float32) if (model.config.get("model") or {}).get("backbone") else None
    params = sharding.replicate(pretrained.load_pretrained_backbone(dict(params), backbone_ckpt,
                                                                    backbone=backbone), mesh)
  num_params = count_params(params)
  logging.info("model parameters: %d (%.2f M)", num_params, num_params / 1e6)
  if "backbone" in params:
    num_bb = count_params(params["backbone"])
    logging.info("backbone parameters: %d (%.2f M)", num_bb, num_bb / 1e6)
  opt_state = jax.jit(tx.init, out_shardings=replicated)(params)
  ema_params = init_ema(params) if float(config.get("ema_decay", 0.0) or 0.0) > 0.0 else None
  return TrainState(step=sharding.replicate(jnp.zeros((), jnp.int32), mesh), params=params,
                    model_state=variables, opt_state=opt_state,
                    rng=sharding.replicate(train_rng, mesh), ema_params=ema_params)


def _write_scalars(writer, step: int, prefix: str, values: Mapping[str, Any]) -> None:
  scalars = {f"{prefix}/{k}": v for k, v in evaluation.scalar_results(values).items()}
  if scalars:
    writer.write_scalars(step, scalars)


def _check_finite(guard: guards.NonFiniteGuard, checkpointer: Optional[checkpoint_lib.Checkpointer]) -> None:
  if checkpointer is None:
    guard.check()
  else:
    guard.check(checkpointer.directory, checkpointer.latest_step())


def train_and_evaluate(model: BaseModel, dataset: Any, config: ml_collections.ConfigDict, workdir: str,
                       evaluator: Optional[evaluation.Evaluator] = None, *,
                       mesh: Optional[jax.sharding.Mesh] = None,
                       hooks: Sequence[Hook] = (),
                       writer: Optional[metric_writers.MetricWriter] = None) -> TrainResult:
  """Trains ``model`` on ``dataset`` as ``config`` says, evaluating periodically and at the end.

  Resumes from the latest intact checkpoint in ``workdir/checkpoints`` when there is one; the resumed run
  reproduces the uninterrupted one (data order from ``train_iter_fn(start_step)``, per-step rng
  ``fold_in(rng, step)``). A workdir whose ``config.json`` differs from ``config`` is refused before
  anything is written (``guards.check_resume_config``); a NaN/Inf loss or gradient stops the run with
  ``guards.NonFiniteError`` before any checkpoint or evaluation of the diverged state.

  Args:
    model: the task model (``BaseModel``).
    dataset: ``Dataset(train_iter_fn, eval_iter_fn, meta_data)``; ``eval_iter_fn`` may be ``None`` when no
      evaluation is wanted.
    config: the job config (keys in the module docstring).
    workdir: checkpoints go to ``workdir/checkpoints``, TensorBoard events to ``workdir``.
    evaluator: task evaluation (mIoU, COCO AP); without it only the model's metrics are evaluated.
    mesh: the device mesh (default: all devices, ``sharding.create_mesh()``).
    hooks: callables ``hook(step, state, metrics)`` run after every step (tests, custom logging). The state
      is donated to the next step: a hook must copy what it keeps (``jax.device_get``) before returning.
    writer: a metric writer (default: ``clu`` TensorBoard writer in ``workdir``, logging-only on
      processes other than 0).

  Returns:
    ``TrainResult(state, train_summary, eval_summary)`` with the final state, the last logged train
    metrics and the last evaluation results (including non-scalar evaluator results).
  """
  if not config.get("batch_size"):
    raise ValueError("config.batch_size (global batch size) is required")
  num_steps = num_training_steps(config, dataset.meta_data)
  guards.check_resume_config(workdir, config)  # before anything in workdir is written
  mesh = mesh or sharding.create_mesh()
  global_batch = int(config.batch_size)
  sharding.process_batch_size(global_batch, mesh)
  is_main = jax.process_index() == 0
  os.makedirs(workdir, exist_ok=True)
  if writer is None:
    writer = metric_writers.create_default_writer(workdir, just_logging=not is_main)
  dtype = data_dtype(config)
  log_every = max(1, int(config.get("log_summary_steps", 50)))
  eval_every = int(config.get("log_eval_steps", num_steps) or 0)
  steps_per_eval = config.get("steps_per_eval", None)

  schedule = optim.create_lr_schedule(config.get("lr_configs"), num_steps)
  tx = optim.create_optimizer(config, schedule)
  checkpointer = None
  if config.get("checkpoint", True):
    checkpointer = checkpoint_lib.Checkpointer(
        os.path.join(workdir, "checkpoints"), save_every_steps=int(config.get("checkpoint_steps", 1000)),
        max_to_keep=config.get("max_checkpoint_keep", 3))
  resuming = checkpointer is not None and checkpointer.latest_step() is not None
  state = initialize_state(model, config, dataset, tx, mesh, load_pretrained=not resuming)
  mask_counts = optim.describe_mask(optim.config_weight_decay_mask(config, state.params)
                                    or jax.tree.map(lambda _: True, state.params))
  logging.info("weight decay on %(decayed)d parameter arrays, none on %(not_decayed)d", mask_counts)

  if checkpointer is not None:
    state = checkpointer.restore_or_keep(state)
  start_step = int(jax.device_get(state.step))
  if start_step:
    logging.info("resuming at step %d", start_step)
  if is_main and start_step == 0:
    writer.write_scalars(0, {"num_params": float(count_params(state.params))})

  replicated = sharding.replicated_sharding(mesh)
  batch_spec = sharding.batch_sharding(mesh)
  ema_decay = float(config.get("ema_decay", 0.0) or 0.0)
  if not 0.0 <= ema_decay < 1.0:
    raise ValueError(f"config.ema_decay must be in [0, 1) (0 = no EMA), got {ema_decay}")
  train_step = jit_train_step(model, tx, schedule, dtype, mesh,
                              rng_names=tuple(config.get("rng_names", ("dropout",))),
                              ema_decay=ema_decay, ema_warmup=bool(config.get("ema_warmup", True)))
  eval_step = jax.jit(make_eval_step(model, dtype, evaluator), in_shardings=(replicated, batch_spec))

  def evaluate(step: int) -> Dict[str, Any]:
    """Evaluates the live parameters (``eval/*``) and, when kept, their EMA (``eval_ema/*``, ``["ema"]``)."""
    if dataset.eval_iter_fn is None:
      return {}
    results = {}
    for prefix, params in (("eval", state.params), ("eval_ema", state.ema_params)):
      if params is None:
        continue
      start = time.time()
      out = evaluation.run_evaluation(eval_step, state.replace(params=params), dataset.eval_iter_fn(),
                                      functools.partial(sharding.shard_batch, mesh=mesh), evaluator,
                                      max_batches=steps_per_eval)
      out["duration_s"] = time.time() - start
      _write_scalars(writer, step, prefix, out)
      logging.info("%s at step %d: %s", prefix, step, evaluation.scalar_results(out))
      if prefix == "eval":
        results = out
      else:
        results["ema"] = out
    writer.flush()
    return results

  train_summary: Dict[str, float] = {}
  eval_summary: Dict[str, Any] = {}
  release_after_compile = host_memory.ReleaseAfterCompile(train_step, eval_step)
  accumulator = evaluation.MetricsAccumulator()
  finite_guard = guards.NonFiniteGuard()
  batches = sharding.prefetch_to_mesh(dataset.train_iter_fn(start_step), mesh,
                                      size=int(config.get("prefetch_to_device", 2)))
  progress = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step",
                       disable=not (is_main and config.get("progress_bar", True)), dynamic_ncols=True)
  completed = progress_lib.CompletedSteps(max_in_flight=max(1, int(config.get("prefetch_to_device", 2))))
  interval_start, interval_examples = time.time(), 0
  try:
    for step in range(start_step + 1, num_steps + 1):
      try:
        batch = next(batches)
      except StopIteration:
        raise ValueError(f"the training iterator ended before step {step} of {num_steps}") from None
      state, metrics = train_step(state, batch)
      release_after_compile()  # a new shape compiled: hand the compiler's freed heap back
      completed.dispatched(step, metrics)  # the bar counts finished steps (metrics are not donated)
      accumulator.add(metrics)
      finite_guard.add(step, metrics)
      interval_examples += global_batch
      for hook in hooks:
        hook(step, state, metrics)
      if step == start_step + 1:
        jax.block_until_ready(state)
        compile_s = time.time() - interval_start
        logging.info("first train step (compilation included) took %.1f s", compile_s)
        if is_main:
          writer.write_scalars(step, {"train/first_step_seconds": compile_s})
        interval_start, interval_examples = time.time(), 0
      if step % log_every == 0 or step == num_steps:
        train_summary = accumulator.result()  # fetches: the interval's work is done after this
        _check_finite(finite_guard, checkpointer)
        elapsed = max(time.time() - interval_start, 1e-9)
        if interval_examples:
          train_summary["images_per_sec"] = interval_examples / elapsed
        interval_start, interval_examples = time.time(), 0
        _write_scalars(writer, step, "train", train_summary)
        progress.set_postfix(loss=f"{train_summary.get('loss', train_summary['objective']):.4f}",
                             img_s=f"{train_summary.get('images_per_sec', 0.0):.1f}")
      progress.update(completed.poll())
      if checkpointer is not None and checkpointer.wants_save(step, force=(step == num_steps)):
        progress.update(completed.wait_all())
        _check_finite(finite_guard, checkpointer)  # never save a diverged state
        guards.check_params_finite(step, state.params)
        checkpointer.save(step, state, force=(step == num_steps))
      if (eval_every > 0 and step % eval_every == 0) or step == num_steps:
        progress.update(completed.wait_all())
        _check_finite(finite_guard, checkpointer)
        eval_summary = evaluate(step)
        release_after_compile()
        interval_start, interval_examples = time.time(), 0  # images/s counts training time only
    if start_step >= num_steps and not eval_summary:
      eval_summary = evaluate(num_steps)
    progress.update(completed.wait_all())
  finally:
    progress.close()
    if checkpointer is not None:
      checkpointer.close()
    writer.flush()
  return TrainResult(state=state, train_summary=train_summary, eval_summary=eval_summary)
