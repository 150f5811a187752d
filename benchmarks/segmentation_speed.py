"""Segmentation training speed: train-step images/s, compile time, peak memory, input-pipeline images/s.

  python -m benchmarks.segmentation_speed                       # UperNet-CrossFormer-S, 512 x 512
  python -m benchmarks.segmentation_speed --config configs/fpn_crossformer_s_ade20k.py --dtype bfloat16
  python -m benchmarks.segmentation_speed --config configs/tiny_ade20k.py --size 128 --batch_size 8 \\
      --pipeline --data_dir workdirs/tiny_ade20k/data

The train step is the trainer's own (``projects.common.trainer.make_train_step``: forward, loss, backward,
AdamW update, BatchNorm statistics), jitted with the trainer's shardings and state donation over all devices,
fed a fixed random batch already on the devices, so it measures the model and not the input pipeline.
Compilation is timed on its own (``lower().compile()``). Peak memory is the device's ``peak_bytes_in_use``
where the backend reports it (GPU/TPU) and the process's peak RSS otherwise (CPU). ``--pipeline`` times the
ADE20K input pipeline alone (``get_dataset(config).train_iter_fn``; needs the prepared dataset).
Defaults: batch 16 on an accelerator, 2 on CPU.
"""

import argparse
import os
import resource
import sys
import time
from typing import Dict, List, Optional, Sequence, Tuple

import jax
import numpy as np

from projects.common import config_utils
from projects.common import optim
from projects.common import sharding
from projects.common import trainer
from projects.segmentation.models.encoder_decoder import SegmentationModel

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _peak_memory() -> Tuple[str, Optional[float]]:
  stats = jax.local_devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    return "device peak", stats["peak_bytes_in_use"] / 2 ** 30
  return "host peak RSS", resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20  # KiB -> GiB


def benchmark_train_step(config, batch_size: int, size: int, steps: int, warmup: int,
                         num_classes: int = 150) -> Dict[str, float]:
  """Compiles and times the trainer's train step on a random (batch_size, size, size, 3) batch."""
  mesh = sharding.create_mesh()
  with config.unlocked():
    config.init_input_shape = (1, size, size, 3)
    config.batch_size = batch_size
    config.init_from.checkpoint_path = None
  model = SegmentationModel(config, {"num_classes": num_classes})
  schedule = optim.create_lr_schedule(config.lr_configs, int(config.num_training_steps))
  tx = optim.create_optimizer(config, schedule)
  start = time.perf_counter()
  state = trainer.initialize_state(model, config, None, tx, mesh)
  jax.block_until_ready(state)
  init_s = time.perf_counter() - start
  rng = np.random.default_rng(0)
  host_batch = {"inputs": rng.normal(size=(batch_size, size, size, 3)).astype(np.float32),
                "label": rng.integers(-1, num_classes, size=(batch_size, size, size)).astype(np.int32),
                "batch_mask": np.ones((batch_size,), np.float32)}
  batch = sharding.shard_batch(host_batch, mesh)
  step_fn = trainer.jit_train_step(model, tx, schedule, trainer.compute_dtype(config), mesh)
  start = time.perf_counter()
  compiled = step_fn.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  for _ in range(warmup):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(state)
  start = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready((state, metrics))
  elapsed = time.perf_counter() - start
  memory_kind, memory_gib = _peak_memory()
  return {"init_s": init_s, "compile_s": compile_s, "step_ms": 1e3 * elapsed / steps,
          "images_per_s": batch_size * steps / elapsed, "memory_gib": memory_gib, "memory_kind": memory_kind,
          "loss": float(metrics["loss"][0])}


def benchmark_pipeline(config, batch_size: int, batches: int) -> Dict[str, float]:
  """Images/s of the training input pipeline alone (decoding, augmentation, batching)."""
  from projects.segmentation.data import pipeline  # pylint: disable=g-import-not-at-top
  with config.unlocked():
    config.batch_size = batch_size
  iterator = pipeline.get_dataset(config).train_iter_fn(0)
  start = time.perf_counter()
  next(iterator)  # start-up: opening files, filling the shuffle buffer
  first_s = time.perf_counter() - start
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  elapsed = time.perf_counter() - start
  return {"first_batch_s": first_s, "images_per_s": batch_size * batches / elapsed}


def _table(rows: List[Tuple[str, str]]) -> str:
  width, value_width = max(len(k) for k, _ in rows), max(len(v) for _, v in rows)
  line = "+" + "-" * (width + 2) + "+" + "-" * (value_width + 2) + "+"
  out = [line] + [f"| {k:<{width}} | {v:>{value_width}} |" for k, v in rows] + [line]
  return "\n".join(out)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", default=os.path.join(REPO, "configs", "upernet_crossformer_s_ade20k.py"))
  parser.add_argument("--size", type=int, default=512, help="square crop size")
  parser.add_argument("--batch_size", type=int, default=None, help="global batch (default 16 GPU/TPU, 2 CPU)")
  parser.add_argument("--steps", type=int, default=10, help="timed steps")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None, help="config.model.dtype")
  parser.add_argument("--remat", action="store_true", help="rematerialise backbone blocks")
  parser.add_argument("--pipeline", action="store_true", help="also time the input pipeline alone")
  parser.add_argument("--pipeline_batches", type=int, default=20)
  parser.add_argument("--data_dir", default=None, help="tfds data dir of the prepared ade20k_challenge")
  args = parser.parse_args(argv)

  on_cpu = jax.default_backend() == "cpu"
  batch_size = args.batch_size or (2 if on_cpu else 16)
  batch_size = max(jax.device_count(), batch_size - batch_size % jax.device_count())
  config = config_utils.load_config(args.config)
  with config.unlocked():
    if args.dtype:
      config.model.dtype = args.dtype
    if args.remat:
      config.model.backbone.remat = True
  result = benchmark_train_step(config, batch_size, args.size, args.steps, args.warmup)
  rows = [
      ("config", os.path.basename(args.config)),
      ("devices", f"{jax.device_count()} x {jax.devices()[0].device_kind}"),
      ("input", f"{batch_size} x {args.size} x {args.size}"),
      ("dtype", str(config.model.dtype)),
      ("init (s)", f"{result['init_s']:.1f}"),
      ("compile train step (s)", f"{result['compile_s']:.1f}"),
      ("train step (ms)", f"{result['step_ms']:.1f}"),
      ("train images/s", f"{result['images_per_s']:.2f}"),
      (f"memory, {result['memory_kind']} (GiB)", f"{result['memory_gib']:.2f}"),
  ]
  if args.pipeline:
    with config.unlocked():
      if args.data_dir:
        config.dataset.data_dir = args.data_dir
      config.dataset.crop_size = (args.size, args.size)
    pipe = benchmark_pipeline(config, batch_size, args.pipeline_batches)
    rows += [("pipeline first batch (s)", f"{pipe['first_batch_s']:.1f}"),
             ("pipeline images/s", f"{pipe['images_per_s']:.1f}")]
  print(_table(rows))
  sys.stdout.flush()


if __name__ == "__main__":
  main()
