"""Forward latency and throughput of the CrossFormer backbones, compile time reported separately.

    python benchmarks/backbone_speed.py                         # all variants, 224/512/800x1344, batch 1 and 8
    python benchmarks/backbone_speed.py --variants crossformer_s --sizes 800x1344 --batches 1

Prints one row per (variant, size, batch): compile seconds, median forward ms, images/s, and the
largest LDA group (tokens) the v1 semantics form at that size: v1 keeps the interval fixed, so its
long-distance groups grow with the image (S at 800x1344: 25x42 = 1050 tokens in every stage).
"""

import argparse
import statistics
import time
from typing import List, Sequence, Tuple

import jax
import jax.numpy as jnp

from backbones import create_model, list_models, stage_sizes
from backbones.crossformer import grouping
from backbones.crossformer.model import per_stage


def largest_group(model, height: int, width: int) -> int:
  """Tokens in the largest attention group any block forms for this input size."""
  group_sizes = per_stage(model.group_sizes, len(model.dims), "group_sizes")
  intervals = per_stage(model.intervals, len(model.dims), "intervals")
  largest = 0
  for (h, w), g, i, depth in zip(stage_sizes(height, width), group_sizes, intervals, model.depths):
    for b in range(depth):
      largest = max(largest, grouping.plan_groups(h, w, g, i, b % 2 == 1, model.lda_mode).group_tokens)
  return largest


def benchmark(name: str, height: int, width: int, batch: int, repeats: int, dtype, lda_mode: str):
  """Returns (compile seconds, median forward seconds) for one configuration."""
  model = create_model(name, dtype=dtype, lda_mode=lda_mode)
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, height, width, 3), dtype)
  start = time.perf_counter()
  forward = jax.jit(model.apply).lower(variables, x).compile()
  compile_s = time.perf_counter() - start
  jax.block_until_ready(forward(variables, x))  # warm-up
  times = []
  for _ in range(repeats):
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, x))
    times.append(time.perf_counter() - start)
  return compile_s, statistics.median(times), model


def parse_sizes(text: str) -> List[Tuple[int, int]]:
  return [tuple(int(v) for v in size.split("x")) for size in text.split(",")]


def main(argv: Sequence[str] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--variants", default=",".join(list_models()))
  parser.add_argument("--sizes", default="224x224,512x512,800x1344")
  parser.add_argument("--batches", default="1,8")
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
  parser.add_argument("--lda_mode", default="v1", choices=("v1", "main"))
  args = parser.parse_args(argv)
  dtype = jnp.bfloat16 if args.dtype == "bfloat16" else jnp.float32
  device = jax.devices()[0]
  print(f"device: {device.platform} {device.device_kind} x{jax.device_count()}, dtype {args.dtype}, "
        f"lda_mode {args.lda_mode}, jax {jax.__version__}")
  header = f"{'variant':<15}{'size':>10}{'batch':>6}{'compile s':>11}{'forward ms':>12}{'img/s':>9}{'max group':>11}"
  print(header)
  print("-" * len(header))
  for name in args.variants.split(","):
    for height, width in parse_sizes(args.sizes):
      for batch in (int(b) for b in args.batches.split(",")):
        compile_s, forward_s, model = benchmark(name, height, width, batch, args.repeats, dtype,
                                                args.lda_mode)
        print(f"{name:<15}{f'{height}x{width}':>10}{batch:>6}{compile_s:>11.1f}"
              f"{forward_s * 1e3:>12.1f}{batch / forward_s:>9.2f}"
              f"{largest_group(model, height, width):>11}", flush=True)


if __name__ == "__main__":
  main()
