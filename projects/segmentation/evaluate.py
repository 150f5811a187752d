"""Evaluate a segmentation checkpoint on the ADE20K validation split with mmseg's protocol.

    python -m projects.segmentation.evaluate --config configs/upernet_crossformer_s_ade20k.py \
        --checkpoint upernet_s.msgpack --data_dir /data/tfds [--mode whole|slide|ms_flip] [--output_dir DIR]

Every validation image is AlignResized to ``config.dataset.eval_scale``, inferred on its own (whole or sliding
window as ``config.inference`` says, or ``--mode``; ``ms_flip`` = ratios 0.5-1.75 with flip, the UperNet
48.4 protocol), its logits resized bilinearly to the annotation's original size and scored there (mIoU,
mAcc, aAcc over the summed confusion matrix, as mmseg). ``--checkpoint``: a training workdir (``--config``
then defaults to its ``config.json``), a converted model file or an official ``.pth``/``.npz``. With
``--output_dir`` it writes ``eval_results.json`` and ``per_class_iou.tsv`` there. Whole-mode views run in the
padded canvases of ``config.inference.canvases`` (``predictor``), compiled ahead of time; the persistent
compilation cache is on, and the programs compiled and their compile seconds are printed.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import ml_collections
from tqdm import tqdm


from backbones import compilation_cache
from projects.common import evaluation
from projects.common import restore
from projects.segmentation import predictor
from projects.segmentation import train


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  restore.add_model_arguments(parser)
  parser.add_argument("--mode", default=None, choices=predictor.TEST_MODES,
                      help="test-time mode (default: config.inference, else whole)")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: config.dataset.data_dir)")
  parser.add_argument("--eval_batch_size", type=int, default=None,
                      help="examples read per step (default: config.eval_batch_size)")
  parser.add_argument("--max_batches", type=int, default=None, help="stop after this many batches")
  parser.add_argument("--output_dir", default=None, help="write eval_results.json and per_class_iou.tsv here")
  return parser.parse_args(argv)


def evaluate(model: Any, variables: Any, config: ml_collections.ConfigDict, mode: Optional[str] = None,
             max_batches: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
  """mmseg-protocol results (``SegmentationEvaluator.compute``) of ``variables`` on ``config``'s eval split."""
  dataset = train.build_dataset(config)
  evaluator = train.SegmentationEvaluator(model, num_examples=0,
                                          test_time=predictor.test_time_from_config(config, mode))
  batch_size = int(config.get("eval_batch_size") or config.batch_size)
  total = math.ceil(dataset.meta_data["num_eval_examples"] / batch_size) + len(dataset.meta_data["eval_buckets"])
  batches = tqdm(dataset.eval_iter_fn(), desc="evaluate", unit="batch", total=total, disable=not progress,
                 dynamic_ncols=True)
  # The evaluator infers every example itself: the pass needs no bucket forward (no eval step).
  results = evaluation.run_evaluation(lambda state, batch: ({}, None), restore.InferenceState(tree=dict(variables)),
                                      batches, lambda batch: batch, evaluator, max_batches=max_batches)
  results["test_time"] = evaluator.test_time
  results["programs"] = evaluator.program_counts()
  return results


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns the results."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  model, variables, config = restore.restore_for_evaluation(args, "segmentation")
  start = time.time()
  results = evaluate(model, variables, config, args.mode, args.max_batches)
  scalars = evaluation.scalar_results(results)
  print(f"mIoU {results['mIoU']:.4f}  mAcc {results['mAcc']:.4f}  aAcc {results['aAcc']:.4f}  "
        f"({results['protocol']}, {results['test_time'].mode}, ratios {results['test_time'].ratios}, "
        f"flip {results['test_time'].flip}; {time.time() - start:.0f} s)")
  print(f"compiled programs: {predictor.format_programs(results['programs'])}")
  if args.output_dir:
    os.makedirs(args.output_dir, exist_ok=True)
    paths = train.write_results(results, args.output_dir)
    print(f"wrote {', '.join(paths.values())}")
  else:
    print(json.dumps(scalars, indent=1, sort_keys=True))
  return results


if __name__ == "__main__":
  main()
