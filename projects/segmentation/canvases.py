"""Choose the padded canvases that segmentation inference runs in, from a dataset's view sizes.

    python -m projects.segmentation.canvases --config configs/tiny_ade20k.py [--data_dir DIR] \
        [--mode whole|ms_flip] [--max_canvases 6]

Reads the evaluation split once (the eval pipeline's AlignResized sizes, and the original sizes for the
other ratios), prints the distinct view sizes (rounded up to ``size_divisor``, as whole inference pads them)
with their counts, then the chosen canvases: each view runs in the smallest canvas that holds it exactly
(``CrossFormerBackbone.canvas_fits``: the same small-map fallback decisions), and the set is grown greedily,
each step adding the candidate that leaves the fewest sizes without a canvas (each costs a program of its
own), then the least padded area. Put the printed list into ``config.inference.canvases``.
"""

import argparse
import collections
import sys
from typing import Callable, Dict, Mapping, Optional, Sequence, Tuple

import numpy as np

from projects import registry
from projects.common import restore
from projects.segmentation import predictor
from projects.segmentation import train

Size = Tuple[int, int]
MAX_CANDIDATE_SIDES = 32


def view_sizes(dataset, test_time: predictor.TestTime, max_batches: Optional[int] = None) -> Dict[Size, int]:
  """Counts of the padded view sizes of ``dataset``'s eval split (one per ratio per image; flips share the
  size)."""
  counts: Dict[Size, int] = collections.Counter()
  divisor = test_time.size_divisor
  up = lambda s: -(-int(s) // divisor) * divisor
  for b, batch in enumerate(dataset.eval_iter_fn()):
    if max_batches is not None and b >= max_batches:
      break
    mask = np.asarray(batch.get("batch_mask", np.ones(len(batch["inputs"]))))
    for i in np.flatnonzero(mask > 0):
      original = tuple(int(v) for v in batch["orig_size"][i]) if "orig_size" in batch else None
      for ratio in test_time.ratios:
        if original is None or ratio == 1.0:
          h, w = (int(v) for v in batch["image_size"][i])
        else:
          h, w = predictor.align_size(*original, predictor.view_scale(test_time.eval_scale, ratio), divisor)
        counts[(up(h), up(w))] += 1
  return dict(counts)


def _sides(values: Sequence[int]) -> Tuple[int, ...]:
  values = sorted(set(values))
  if len(values) <= MAX_CANDIDATE_SIDES:
    return tuple(values)
  picks = np.quantile(values, np.linspace(0, 1, MAX_CANDIDATE_SIDES), method="higher")
  return tuple(sorted({int(v) for v in picks}))


def choose_canvases(counts: Mapping[Size, int], fits: Callable[[Size, Size], bool],
                    max_canvases: int = 6, min_gain: float = 0.1) -> Tuple[Size, ...]:
  """Greedy canvas set for the view ``counts``; ``fits(canvas, size)`` says whether a view may use a canvas.

  Candidates are the (height, width) pairs of the sizes' distinct heights and widths; a step adds the one
  minimising (sizes no canvas holds, pixels computed over all views); the set stops growing at
  ``max_canvases`` or when a step covers no new size and saves less than ``min_gain`` of the pixels (a
  program costs a compilation). Canvases that end up holding no view (smaller ones took them) are dropped."""
  sizes = sorted(counts)
  weights = np.asarray([counts[s] for s in sizes], np.float64)
  candidates = [(h, w) for h in _sides([s[0] for s in sizes]) for w in _sides([s[1] for s in sizes])]
  own = np.asarray([s[0] * s[1] for s in sizes], np.float64)
  fit = np.asarray([[fits(c, s) for s in sizes] for c in candidates])
  area = np.asarray([c[0] * c[1] for c in candidates], np.float64)[:, None]
  cand_cost = np.where(fit, area, np.inf)

  def score(best):
    uncovered = np.isinf(best)
    return int(uncovered.sum()), float(np.sum(weights * np.where(uncovered, own, best)))

  chosen, best = [], np.full(len(sizes), np.inf)
  current = score(best)
  while len(chosen) < max_canvases:
    trials = [score(np.minimum(best, cand_cost[j])) for j in range(len(candidates))]
    j = min(range(len(candidates)), key=lambda k: trials[k])
    if trials[j] >= current or (trials[j][0] == current[0] and trials[j][1] > (1 - min_gain) * current[1]):
      break
    chosen.append(candidates[j])
    best, current = np.minimum(best, cand_cost[j]), trials[j]
  rows = [candidates.index(c) for c in chosen]
  members: Dict[Size, list] = collections.defaultdict(list)
  for i in range(len(sizes)):  # the canvas each view takes: smallest area, then smallest (h, w)
    options = [(cand_cost[j, i], candidates[j]) for j in rows if np.isfinite(cand_cost[j, i])]
    if options:
      members[min(options)[1]].append(sizes[i])
  final = set()
  for canvas, taken in members.items():  # shrink each canvas to what its views need, where they all fit
    tight = (max(s[0] for s in taken), max(s[1] for s in taken))
    final.add(tight if all(fits(tight, s) for s in taken) else canvas)
  return tuple(sorted(final))


def describe(counts: Mapping[Size, int], canvases: Sequence[Size], fits: Callable[[Size, Size], bool]) -> str:
  """The report: sizes with their counts and canvases, and per canvas the views and padding it takes."""
  lines = [f"{sum(counts.values())} views of {len(counts)} sizes (h x w, padded to the size divisor):"]
  per_canvas: Dict[Size, list] = collections.defaultdict(list)
  for size in sorted(counts):
    fitting = [c for c in canvases if fits(tuple(c), size)]
    canvas = min(fitting, key=lambda c: (c[0] * c[1], c)) if fitting else size
    per_canvas[tuple(canvas)].append(size)
    lines.append(f"  {size[0]}x{size[1]}: {counts[size]} -> {'canvas' if fitting else 'own program'} "
                 f"{canvas[0]}x{canvas[1]}")
  lines.append(f"{len(per_canvas)} programs ({len(canvases)} canvases):")
  for canvas, members in sorted(per_canvas.items()):
    views = sum(counts[s] for s in members)
    real = sum(counts[s] * s[0] * s[1] for s in members)
    lines.append(f"  {canvas[0]}x{canvas[1]}: {views} views of {len(members)} sizes, padding "
                 f"{100 * (1 - real / (views * canvas[0] * canvas[1])):.0f}% of the pixels")
  lines.append("config.inference.canvases = " + repr(tuple(tuple(c) for c in canvases)))
  return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> Tuple[Size, ...]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", required=True, help="the job config (.py or a workdir's config.json)")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: config.dataset.data_dir)")
  parser.add_argument("--mode", default=None, choices=predictor.TEST_MODES)
  parser.add_argument("--max_canvases", type=int, default=6)
  parser.add_argument("--min_gain", type=float, default=0.1,
                      help="add a canvas only if it covers a new size or saves this fraction of the pixels")
  parser.add_argument("--max_batches", type=int, default=None, help="read only this many eval batches")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  config = restore.load_job_config(args.config)
  if args.data_dir:
    with config.unlocked():
      config.dataset.data_dir = args.data_dir
  test_time = predictor.test_time_from_config(config, args.mode)
  dataset = train.build_dataset(config)
  model = registry.get_model_cls(config.get("model_name") or "crossformer_segmentation")(config, dataset.meta_data)
  fits_fn = getattr(model.flax_model.backbone, "canvas_fits", None)
  if fits_fn is None:
    raise SystemExit(f"{type(model.flax_model.backbone).__name__} has no canvas inference (canvas_fits)")
  cache: Dict[Tuple[Size, Size], bool] = {}

  def fits(canvas: Size, size: Size) -> bool:
    if (canvas, size) not in cache:
      cache[(canvas, size)] = bool(fits_fn(canvas, size))
    return cache[(canvas, size)]

  counts = view_sizes(dataset, test_time, args.max_batches)
  canvases = choose_canvases(counts, fits, args.max_canvases, args.min_gain)
  print(describe(counts, canvases, fits))
  return canvases


if __name__ == "__main__":
  main()
