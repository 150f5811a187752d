"""Forward + backward time of the heads' convolutions, per ``heads.conv`` implementation, interleaved.

    python -m benchmarks.conv_speed                      # the UperNet-S / FPN / RetinaNet shapes below
    python -m benchmarks.conv_speed --shapes 2,128,128,512,512,3,1 --rounds 3

A shape is ``batch,height,width,in,out,kernel,stride`` (padding ``kernel // 2``). Each row reports the best
wall seconds and the process CPU seconds (all threads) of a jitted ``grad`` of ``sum(sin(conv))`` w.r.t. input
and kernel; CPU seconds are the steadier figure on a shared machine.
"""

import argparse
import time
from typing import Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from heads.conv import CONV_IMPLS, conv2d

SHAPES = (
    "2,128,128,512,512,3,1",  # UperNet-S fpn_convs / bottleneck-like, stride-4 map at 512²
    "2,128,128,96,512,1,1",  # UperNet lateral on the stride-4 map
    "2,128,128,512,150,1,1",  # conv_seg classifier
    "2,100,168,256,256,3,1",  # RetinaNet tower on P3 at 800x1344
    "2,25,42,256,256,3,2",  # RetinaNet extra level (strided)
)


def measure(shape: Tuple[int, ...], impl: str, repeats: int) -> Tuple[float, float]:
  """(best wall s, its process CPU s) of one forward + backward at ``shape`` with ``impl``."""
  batch, h, w, cin, cout, k, s = shape
  x = jax.random.normal(jax.random.PRNGKey(0), (batch, h, w, cin))
  kernel = jax.random.normal(jax.random.PRNGKey(1), (k, k, cin, cout)) * 0.02
  pad = ((k // 2, k // 2), (k // 2, k // 2))
  step = jax.jit(jax.grad(lambda x, kernel: jnp.sum(jnp.sin(conv2d(x, kernel, (s, s), pad, impl=impl))), (0, 1)))
  jax.block_until_ready(step(x, kernel))
  best = (float("inf"), float("inf"))
  for _ in range(repeats):
    cpu, start = time.process_time(), time.perf_counter()
    jax.block_until_ready(step(x, kernel))
    best = min(best, (time.perf_counter() - start, time.process_time() - cpu))
  return best


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--shapes", default=";".join(SHAPES), help="';'-separated b,h,w,in,out,k,stride")
  parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every implementation")
  parser.add_argument("--repeats", type=int, default=2, help="timed calls per measurement (best kept)")
  args = parser.parse_args(argv)
  print(f"backend {jax.default_backend()}, {jax.local_device_count()} device(s)")
  print(f"{'shape':<24}{'impl':<10}{'wall s':>8}{'CPU s':>8}")
  for spec in args.shapes.split(";"):
    shape = tuple(int(v) for v in spec.split(","))
    if len(shape) != 7:
      raise SystemExit(f"--shapes entry {spec!r} must be b,h,w,in,out,kernel,stride")
    for _ in range(args.rounds):
      for impl in CONV_IMPLS:
        wall, cpu = measure(shape, impl, args.repeats)
        print(f"{spec:<24}{impl:<10}{wall:>8.3f}{cpu:>8.3f}", flush=True)


if __name__ == "__main__":
  main()
