"""Latency of Mask R-CNN's hot spots at COCO scale: RoIAlign and NMS with 1000 proposals per image.

    python benchmarks/mask_rcnn_ops.py                       # 800x1344 pyramid, 256 channels, batch 1
    python benchmarks/mask_rcnn_ops.py --rois 512 --steps 3

Rows (each jitted; compile seconds and median milliseconds of ``--steps`` calls):
  - roi_align 7x7 / 14x14 over P2-P5 (``heads.detection.roi_align``) for ``--rois`` RoIs of realistic sizes
    (log-uniform 16..600 px, aspect ratios 0.5..2), at ``max_samples`` 2, 4 and 8;
  - RPN proposals (``image_proposals``: top-1000 per level of 5 levels, decode, per-level NMS at 0.7, 1000 kept);
  - box-head detections (``rcnn_detections``: 1000 RoIs x 80 classes, score filter, class-aware NMS, 100 kept);
  - mask paste of 100 detections at 800x1344 (``paste_masks``).
"""

import argparse
import os
import statistics
import sys
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from heads.detection.anchors import AnchorGenerator  # noqa: E402  pylint: disable=g-import-not-at-top
from heads.detection.box_coder import DeltaXYWHBBoxCoder  # noqa: E402  pylint: disable=g-import-not-at-top
from heads.detection.mask_ops import paste_masks  # noqa: E402  pylint: disable=g-import-not-at-top
from heads.detection.proposals import ProposalConfig, image_proposals  # noqa: E402  pylint: disable=g-import-not-at-top
from heads.detection.rcnn_postprocess import RCNNTestConfig, rcnn_detections  # noqa: E402  pylint: disable=g-import-not-at-top
from heads.detection.versions import VERSIONS  # noqa: E402  pylint: disable=g-import-not-at-top
from heads.detection.roi_align import roi_align, roi_levels  # noqa: E402  pylint: disable=g-import-not-at-top


def timed(fn: Callable[[], Any], steps: int):
  """(compile seconds, median milliseconds) of a jitted zero-argument call."""
  start = time.perf_counter()
  jax.block_until_ready(fn())
  compile_s = time.perf_counter() - start
  times = []
  for _ in range(steps):
    start = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - start)
  return compile_s, 1000 * statistics.median(times)


def random_rois(rng: np.random.Generator, num: int, height: int, width: int) -> np.ndarray:
  """``(num, 4)`` xyxy boxes of log-uniform scale 16..600 px and aspect ratio 0.5..2 inside the image."""
  scale = np.exp(rng.uniform(np.log(16), np.log(600), num))
  ratio = np.exp(rng.uniform(np.log(0.5), np.log(2), num))
  w, h = scale / np.sqrt(ratio), scale * np.sqrt(ratio)
  x0 = rng.uniform(0, np.maximum(width - w, 1))
  y0 = rng.uniform(0, np.maximum(height - h, 1))
  return np.stack([x0, y0, np.minimum(x0 + w, width), np.minimum(y0 + h, height)], -1).astype(np.float32)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--height", type=int, default=800)
  parser.add_argument("--width", type=int, default=1344)
  parser.add_argument("--channels", type=int, default=256)
  parser.add_argument("--rois", type=int, default=1000)
  parser.add_argument("--classes", type=int, default=80)
  parser.add_argument("--steps", type=int, default=5)
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  h, w, c = args.height, args.width, args.channels
  strides = (4, 8, 16, 32)
  pyramid = [jnp.asarray(rng.standard_normal((1, -(-h // s), -(-w // s), c), np.float32)) for s in strides]
  rois = jnp.asarray(random_rois(rng, args.rois, h, w))
  levels = roi_levels(rois)
  batch_index = jnp.zeros((args.rois,), jnp.int32)
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), image {h}x{w}, C={c}, "
        f"{args.rois} RoIs, {args.classes} classes")
  print(f"{'operation':<40} {'compile s':>10} {'median ms':>10}")

  def row(name, fn):
    compile_s, ms = timed(fn, args.steps)
    print(f"{name:<40} {compile_s:>10.2f} {ms:>10.1f}", flush=True)

  for out in (7, 14):
    for samples in (2, 4, 8):
      fn = jax.jit(lambda p, r, l, b, out=out, samples=samples: roi_align(p, r, b, l, strides, out,
                                                                         max_samples=samples))
      row(f"roi_align {out}x{out} max_samples={samples}", lambda fn=fn: fn(pyramid, rois, levels, batch_index))

  generator = AnchorGenerator(strides=(4, 8, 16, 32, 64), octave_base_scale=8.0, scales_per_octave=1)
  sizes = [(-(-h // s), -(-w // s)) for s in (4, 8, 16, 32, 64)]
  anchors = generator.grid_anchors(sizes)
  logits = [jnp.asarray(rng.standard_normal(a.shape[0], np.float32)) for a in anchors]
  deltas = [jnp.asarray(0.1 * rng.standard_normal((a.shape[0], 4)).astype(np.float32)) for a in anchors]
  for version in VERSIONS:
    cfg = ProposalConfig(nms_pre=1000, max_per_img=args.rois, version=version)
    fn = jax.jit(lambda l, d, cfg=cfg: image_proposals(l, d, anchors, jnp.asarray([h, w]),
                                                       DeltaXYWHBBoxCoder(), cfg))
    row(f"rpn proposals ({version}, NMS 0.7)", lambda fn=fn: fn(logits, deltas))

  cls = jnp.asarray(rng.standard_normal((args.rois, args.classes + 1), np.float32))
  reg = jnp.asarray(0.1 * rng.standard_normal((args.rois, 4 * args.classes)).astype(np.float32))
  coder = DeltaXYWHBBoxCoder(target_stds=(0.1, 0.1, 0.2, 0.2))
  fn = jax.jit(lambda c_, r_, b_: rcnn_detections(c_, r_, b_, jnp.ones(b_.shape[0], bool), jnp.asarray([h, w]),
                                                  coder, RCNNTestConfig()))
  row(f"rcnn detections ({args.classes} classes, NMS 0.5)", lambda: fn(cls, reg, rois))

  probs = jnp.asarray(rng.uniform(size=(100, 28, 28)).astype(np.float32))
  fn = jax.jit(lambda p, b: paste_masks(p, b, (h, w)))
  row(f"paste 100 masks at {h}x{w}", lambda: fn(probs, rois[:100]))


if __name__ == "__main__":
  main()
