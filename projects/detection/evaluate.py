"""Evaluate a detection checkpoint on the COCO validation split with COCOeval (box AP).

    python -m projects.detection.evaluate --config configs/retinanet_crossformer_s_coco.py \
        --checkpoint retinanet_s.msgpack --data_dir /data/tfds --manual_dir /data/coco [--output_dir DIR]

The validation images go through the job's eval pipeline (keep-ratio resize to ``config.dataset.image_scale``,
padding into the aspect-ratio buckets), the model's post-processing (``config.model.test_cfg``) returns boxes
divided by each image's resize factors, i.e. in ORIGINAL image pixels, and pycocotools' ``COCOeval`` scores
them against the original annotation file (``projects.detection.coco_evaluator.CocoEvaluator``).
``--checkpoint``: a training workdir (``--config`` then defaults to its ``config.json``), a converted model file
or an official ``.pth``/``.npz``. With ``--output_dir`` it writes ``eval_results.json`` and
``coco_bbox_detections.json`` there.
"""

import argparse
import json
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
from tqdm import tqdm

from backbones import compilation_cache
from projects.common import evaluation
from projects.common import restore
from projects.common import sharding
from projects.common import trainer
from projects.detection import train
from projects.detection.coco_evaluator import CocoEvaluator


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  restore.add_model_arguments(parser)
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: config.dataset.data_dir)")
  parser.add_argument("--manual_dir", default=None, help="COCO tree (default: config.dataset.manual_dir)")
  parser.add_argument("--eval_batch_size", type=int, default=None,
                      help="global eval batch (default: config.eval_batch_size; a multiple of the devices)")
  parser.add_argument("--max_batches", type=int, default=None, help="stop after this many batches")
  parser.add_argument("--output_dir", default=None,
                      help="write eval_results.json and coco_bbox_detections.json here")
  return parser.parse_args(argv)


def evaluate(model: Any, variables: Any, config: ml_collections.ConfigDict, output_dir: Optional[str] = None,
             max_batches: Optional[int] = None, progress: bool = True) -> Dict[str, Any]:
  """COCO box metrics (``CocoEvaluator.compute``) of ``variables`` on ``config``'s eval split."""
  dataset = train.build_dataset(config)
  meta = dataset.meta_data
  if int(meta["num_classes"]) != model.num_classes:
    raise ValueError(f"the checkpoint has {model.num_classes} classes but the dataset of the config has "
                     f"{meta['num_classes']}; evaluate on the dataset it was trained for")
  mesh = sharding.create_mesh()
  evaluator = CocoEvaluator.from_meta_data(meta, model.predict, output_dir)
  eval_step = jax.jit(trainer.make_eval_step(model, trainer.compute_dtype(config), evaluator),
                      in_shardings=(sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)))
  state = restore.InferenceState(tree=sharding.replicate(dict(variables), mesh))
  batches = tqdm(dataset.eval_iter_fn(), desc="evaluate", unit="batch", total=meta.get("num_eval_batches"),
                 disable=not progress, dynamic_ncols=True)
  return evaluation.run_evaluation(eval_step, state, batches, lambda b: sharding.shard_batch(b, mesh),
                                   evaluator, max_batches=max_batches)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns the results."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  model, variables, config = restore.restore_for_evaluation(args, "detection", ("data_dir", "manual_dir"))
  start = time.time()
  if args.output_dir:
    os.makedirs(args.output_dir, exist_ok=True)
  results = evaluate(model, variables, config, args.output_dir, args.max_batches)
  print(f"box AP {results['AP']:.4f}  AP50 {results['AP50']:.4f}  AP75 {results['AP75']:.4f}  "
        f"({int(results['num_detections'])} detections; {time.time() - start:.0f} s)")
  if args.output_dir:
    path = train.write_results(results, args.output_dir)
    print(f"wrote {path}")
  else:
    print(json.dumps(evaluation.scalar_results(results), indent=1, sort_keys=True))
  return results


if __name__ == "__main__":
  main()
