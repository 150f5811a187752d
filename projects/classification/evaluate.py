"""Evaluate a classifier on a validation split with the official protocol: top-1 / top-5 accuracy.

    python -m projects.classification.evaluate --checkpoint workdirs/tiny_cls [--output_dir DIR]
    python -m projects.classification.evaluate --config configs/crossformer_s_imagenet.py \
        --checkpoint crossformer-s.pth --data_dir /data/tfds

Every validation image is resized (shorter side ``int(crop / crop_pct)`` = 256, bicubic) and centre-cropped
(224) exactly as the official code (``data.eval_transform``), normalised, and scored once; filler examples of
the last batch are excluded. ``--checkpoint``: a training workdir (``--config`` then defaults to its
``config.json``), a converted model file, or an official ImageNet ``.pth``/``.npz`` (with the config of its
variant; ``dataset_name`` says which validation split, ``--dataset_name`` overrides it). With
``--output_dir`` it writes ``eval_results.json`` and ``per_class_accuracy.tsv`` there.
"""

import argparse
import json
import math
import os
import sys
import time
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
from tqdm import tqdm

from backbones import compilation_cache
from projects.classification import train
from projects.common import evaluation
from projects.common import restore
from projects.common import sharding
from projects.common import trainer


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  restore.add_model_arguments(parser)
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: config.dataset.data_dir)")
  parser.add_argument("--manual_dir", default=None, help="image_folder: your folder (default: the config's)")
  parser.add_argument("--dataset_name", default=None, choices=("imagenet2012", "image_folder"),
                      help="the validation data (default: config.dataset_name)")
  parser.add_argument("--eval_batch_size", type=int, default=None,
                      help="examples read per step (default: config.eval_batch_size)")
  parser.add_argument("--max_batches", type=int, default=None, help="stop after this many batches")
  parser.add_argument("--output_dir", default=None, help="write eval_results.json and per_class_accuracy.tsv here")
  return parser.parse_args(argv)


def evaluate(model: Any, variables: Any, config: ml_collections.ConfigDict, max_batches: Optional[int] = None,
             progress: bool = True) -> Dict[str, Any]:
  """Top-1/top-5 (``train.ClassificationEvaluator``) and the model's metrics of ``variables`` on the
  validation split of ``config``'s dataset."""
  dataset = train.build_dataset(config)
  if dataset.meta_data["num_classes"] != model.num_classes:
    raise SystemExit(f"the model has {model.num_classes} classes but the {config.get('dataset_name')} dataset "
                     f"{dataset.meta_data['num_classes']}: evaluate it on the data it was trained for")
  evaluator = train.ClassificationEvaluator(dataset.meta_data["class_names"], num_examples=0)
  mesh = sharding.create_mesh()
  replicated, batch_spec = sharding.replicated_sharding(mesh), sharding.batch_sharding(mesh)
  eval_step = jax.jit(trainer.make_eval_step(model, trainer.data_dtype(config), evaluator),
                      in_shardings=(replicated, batch_spec))
  batch_size = int(config.get("eval_batch_size") or config.batch_size)
  total = math.ceil(dataset.meta_data["num_eval_examples"] / batch_size)
  batches = tqdm(dataset.eval_iter_fn(), desc="evaluate", unit="batch", total=total, disable=not progress,
                 dynamic_ncols=True)
  state = restore.InferenceState(tree=jax.device_put(dict(variables), replicated))
  return evaluation.run_evaluation(eval_step, state, batches, lambda b: sharding.shard_batch(b, mesh=mesh),
                                   evaluator, max_batches=max_batches)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns the results."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  model, variables, config = restore.restore_for_evaluation(args, "classification", ("data_dir", "manual_dir"))
  if args.dataset_name:
    with config.unlocked():
      config.dataset_name = args.dataset_name
  start = time.time()
  results = evaluate(model, variables, config, args.max_batches)
  print(f"top-1 {results['top1'] * 100:.2f}%  top-5 {results['top5'] * 100:.2f}%  on {results['num_examples']} "
        f"{config.get('dataset_name')} validation images (official protocol; {time.time() - start:.0f} s)")
  if args.output_dir:
    os.makedirs(args.output_dir, exist_ok=True)
    paths = train.write_results(results, args.output_dir)
    print(f"wrote {', '.join(paths.values())}")
  else:
    print(json.dumps(evaluation.scalar_results(results), indent=1, sort_keys=True))
  return results


if __name__ == "__main__":
  main()
