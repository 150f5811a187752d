"""Converts an official checkpoint into our files: the one convert command, for backbones and whole models.

    # a CrossFormer / CrossFormer++ classifier or backbone (.pth needs torch; .npz does not)
    python -m projects.convert_checkpoint --input crossformer-s.pth --variant crossformer_s \
        --output crossformer_s.msgpack
    # the same as a Scenic train-state checkpoint (params={'backbone': ...}) for Scenic's pretrained loading
    python -m projects.convert_checkpoint --input crossformer-s.pth --variant crossformer_s \
        --format scenic --output crossformer_s_scenic/
    # a whole mmseg/mmdet model (its config names the model): one model file with config and class names
    python -m projects.convert_checkpoint --input upernet_crossformer_s_ade20k.pth \
        --config configs/upernet_crossformer_s_ade20k.py --output upernet_s.msgpack

Backbones: ``--variant`` names the architecture (``crossformerpp_s`` ... for CrossFormer++), or
``--official_kwargs`` gives the official constructor's arguments as JSON (CrossFormer++ options included:
``group_type``, ``use_acl``, a per-stage ``mlp_ratio`` list, ``img_size``, ...). Classification checkpoints keep
their head unless ``--model backbone``; mmdet/mmseg checkpoints give their backbone. Whole models: every official
key is used or explicitly dropped (``num_batches_tracked``); a checkpoint of another model or size fails naming
the keys that do not fit. The model file (``projects.common.model_io.load_model_file``) carries the config and
the dataset's class names (the checkpoint's ``meta['CLASSES']`` when present, else the config's dataset's).
"""

import argparse
import json
import sys
from typing import Any, Dict, Optional, Sequence

import jax
import ml_collections
import numpy as np

from backbones import list_models
from backbones.crossformer import convert
from backbones.weights import converted
from backbones.weights import scenic
from projects.common import config_utils, model_io


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(prog="python -m projects.convert_checkpoint",
                                   description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="official checkpoint: .pth/.pt (needs torch) or .npz")
  parser.add_argument("--output", required=True,
                      help="the file to write (.msgpack or .safetensors; --format scenic: a directory)")
  arch = parser.add_mutually_exclusive_group(required=True)
  arch.add_argument("--config", help="a whole model: our job config, e.g. configs/upernet_crossformer_s_ade20k.py")
  arch.add_argument("--variant", choices=list_models(), help="a backbone or classifier variant")
  arch.add_argument("--official_kwargs", help="a backbone: JSON of the official constructor's arguments")
  parser.add_argument("--format", default="msgpack", choices=("msgpack", "scenic"),
                      help="backbones: msgpack (our converted file) or scenic (<output>/checkpoint_0, a Scenic "
                           "train state with params={'backbone': ...})")
  parser.add_argument("--model", default="auto", choices=("auto", "backbone", "classifier"),
                      help="backbones: keep the classifier head (auto: when the file has one)")
  parser.add_argument("--lda_mode", default=None, choices=("v1", "main"),
                      help="backbones: default the variant's (v1 for crossformer_*, main for crossformerpp_*)")
  args = parser.parse_args(argv)
  if args.config and (args.format != "msgpack" or args.model != "auto" or args.lda_mode):
    parser.error("--format, --model and --lda_mode apply to backbones (--variant / --official_kwargs), "
                 "not to a whole model (--config)")
  return args


def dataset_meta(config: ml_collections.ConfigDict, checkpoint_meta: Dict[str, Any]) -> Dict[str, Any]:
  """The config dataset's facts, with the checkpoint's class names when it records them."""
  meta = model_io.dataset_facts(config)
  classes = checkpoint_meta.get("CLASSES")
  if classes is not None:
    classes = [str(c).strip() for c in classes]
    if len(classes) != meta["num_classes"]:
      raise ValueError(f"the checkpoint's meta lists {len(classes)} classes, the config's dataset has "
                       f"{meta['num_classes']}")
    meta["class_names"] = classes
  return meta


def convert_model(args: argparse.Namespace) -> Dict[str, int]:
  """A whole mmseg/mmdet model -> one model file; returns the parameter counts per part."""
  config = config_utils.load_config(args.config)
  state_dict, checkpoint_meta = model_io.read_official_file(args.input)
  meta = dataset_meta(config, checkpoint_meta)
  with config.unlocked():
    config.dataset_meta = ml_collections.ConfigDict(meta)
  variables = model_io.convert_official_checkpoint(state_dict, config)
  print(f"wrote {model_io.save_model_file(args.output, config, variables)}")
  return model_io.parameter_counts(variables)


def convert_backbone(args: argparse.Namespace) -> Dict[str, int]:
  """An official CrossFormer classifier/backbone -> a converted file or a Scenic checkpoint."""
  kwargs = json.loads(args.official_kwargs) if args.official_kwargs else None
  if kwargs is not None and not isinstance(kwargs, dict):
    raise ValueError(f"--official_kwargs must be a JSON object, got {type(kwargs).__name__}")
  module, variables = convert.convert_official_file(args.input, variant=args.variant, official_kwargs=kwargs,
                                                    model=args.model, lda_mode=args.lda_mode)
  if args.format == "scenic":
    params = variables["params"]
    if converted.is_classifier(module):
      params = params["backbone"]  # the classifier's backbone; its head has no place in a dense model
    path = scenic.save_scenic_checkpoint(args.output, params, metadata={
        "source": str(args.input), "variant": str(args.variant or "official_kwargs"), "lda_mode": args.lda_mode})
  else:
    path = converted.save_converted(args.output, module, variables)
  print(f"wrote {path}: {type(module).__name__}")
  return {"total": sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))}


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Runs the conversion; returns the exit status."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  try:
    counts = convert_model(args) if args.config else convert_backbone(args)
  except (FileNotFoundError, ValueError, ImportError, json.JSONDecodeError) as e:
    print(f"error: {args.input}: {e}", file=sys.stderr)
    return 1
  for name, count in counts.items():
    print(f"  {name:16s} {count:>12,d} parameters")
  return 0


if __name__ == "__main__":
  sys.exit(main())
