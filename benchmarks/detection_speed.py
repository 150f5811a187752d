"""Training and inference throughput of RetinaNet-CrossFormer at COCO scale, compile time reported separately.

    python benchmarks/detection_speed.py                                  # RetinaNet-S, 800x1344, batch 2
    python benchmarks/detection_speed.py --batch 1 --steps 2              # on CPU
    python benchmarks/detection_speed.py --config configs/retinanet_crossformer_b_coco.py --dtype bfloat16

The training step is the shared trainer's (``projects.common.trainer.make_train_step``: forward, focal + L1
loss with in-graph anchor assignment, backward, AdamW update) jitted over the data mesh like
``train_and_evaluate``; inference is the network plus the post-processing (``RetinaNetModel.predict``: top-k,
decoding, NMS, 100 detections per image). Inputs are random images of the given padded size with random
ground-truth boxes (COCO's 80 classes). Prints the device and one row per measurement: compile seconds,
median step milliseconds and images/s.
"""

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable, Dict, NamedTuple, Sequence

import jax
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from projects.common import config_utils  # noqa: E402  pylint: disable=g-import-not-at-top
from projects.common import optim  # noqa: E402  pylint: disable=g-import-not-at-top
from projects.common import sharding  # noqa: E402  pylint: disable=g-import-not-at-top
from projects.common import trainer  # noqa: E402  pylint: disable=g-import-not-at-top
from projects.detection.retinanet import RetinaNetModel  # noqa: E402  pylint: disable=g-import-not-at-top

NUM_CLASSES = 80
MAX_BOXES = 20


class _Meta(NamedTuple):
  """The part of a ``Dataset`` that ``trainer.initialize_state`` reads."""
  meta_data: Dict[str, Any]


def random_batch(batch: int, height: int, width: int, seed: int = 0) -> Dict[str, Any]:
  """A detection batch (docs/CONTRACTS.md) of random images with ``MAX_BOXES`` random boxes each."""
  rng = np.random.default_rng(seed)
  corner = rng.uniform(0, 0.7, (batch, MAX_BOXES, 2)) * (width, height)
  size = rng.uniform(0.05, 0.3, (batch, MAX_BOXES, 2)) * (width, height)
  boxes = np.concatenate([corner, corner + size], -1).astype(np.float32)
  return {
      "inputs": rng.normal(size=(batch, height, width, 3)).astype(np.float32),
      "batch_mask": np.ones((batch,), np.float32),
      "label": {"boxes": boxes, "labels": rng.integers(0, NUM_CLASSES, (batch, MAX_BOXES)).astype(np.int32),
                "image/id": np.arange(batch, dtype=np.int64),
                "image_size": np.tile(np.array([[height, width]], np.int32), (batch, 1)),
                "orig_size": np.tile(np.array([[height, width]], np.int32), (batch, 1)),
                "scale": np.ones((batch, 2), np.float32)},
  }


def time_calls(fn: Callable[[], Any], steps: int) -> float:
  """Median seconds of ``steps`` calls of ``fn`` (each waits for its result)."""
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return statistics.median(times)


def main(argv: Sequence[str] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", default="configs/retinanet_crossformer_s_coco.py")
  parser.add_argument("--size", default="800x1344", help="padded input HxW (multiples of 32)")
  parser.add_argument("--batch", type=int, default=2, help="global batch (a multiple of the device count)")
  parser.add_argument("--steps", type=int, default=5, help="timed steps after the warm-up step")
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--skip_train", action="store_true", help="only measure inference")
  args = parser.parse_args(argv)
  height, width = (int(v) for v in args.size.split("x"))
  config = config_utils.load_config(args.config, {"model.dtype": args.dtype,
                                                  "num_training_epochs": 0, "num_training_steps": 1000})
  mesh = sharding.create_mesh()
  model = RetinaNetModel(config, {"num_classes": NUM_CLASSES})
  dtype = trainer.compute_dtype(config)
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, {config.experiment_name}, "
        f"input {height}x{width}, batch {args.batch}, dtype {args.dtype}, jax {jax.__version__}", flush=True)

  schedule = optim.create_lr_schedule(config.lr_configs, config.num_training_steps)
  tx = optim.create_optimizer(config, schedule)
  # Parameters do not depend on the input size: initialise at a small one.
  with config.unlocked():
    config.init_input_shape = (1, 256, 256, 3)
  state = trainer.initialize_state(model, config, _Meta({}), tx, mesh)
  batch = sharding.shard_batch(random_batch(args.batch, height, width), mesh)
  replicated, batch_spec = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
  print(f"parameters: {sum(x.size for x in jax.tree.leaves(state.params)) / 1e6:.1f} M", flush=True)

  rows = []
  variables = state.variables()

  def predict(variables, batch):
    outputs = model.flax_model.apply(variables, batch["inputs"].astype(dtype), train=False)
    return model.predict(outputs, batch)

  start = time.perf_counter()
  infer = jax.jit(predict, in_shardings=(replicated, batch_spec)).lower(variables, batch).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(infer(variables, batch))  # warm-up
  rows.append(("inference", compile_s, time_calls(lambda: infer(variables, batch), args.steps)))

  if not args.skip_train:
    step_fn = trainer.jit_train_step(model, tx, schedule, dtype, mesh)
    start = time.perf_counter()
    compiled = step_fn.lower(state, batch).compile()
    compile_s = time.perf_counter() - start
    holder = {"state": state}

    def train_once():
      holder["state"], metrics = compiled(holder["state"], batch)
      return metrics["loss"]

    jax.block_until_ready(train_once())  # warm-up
    rows.append(("train step", compile_s, time_calls(train_once, args.steps)))

  header = f"{'measurement':<12}{'compile s':>11}{'step ms':>11}{'img/s':>9}"
  print(header)
  print("-" * len(header))
  for name, compile_s, step_s in rows:
    print(f"{name:<12}{compile_s:>11.1f}{step_s * 1e3:>11.1f}{args.batch / step_s:>9.2f}", flush=True)


if __name__ == "__main__":
  main()
