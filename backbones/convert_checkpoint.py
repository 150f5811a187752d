"""Converts an official CrossFormer checkpoint (.pth needs torch; .npz does not) to a Flax .msgpack.

    python -m backbones.convert_checkpoint --input crossformer-s.pth --variant crossformer_s \
        --output crossformer_s.msgpack
    # A Scenic train-state checkpoint (params={'backbone': ...}) for Scenic's restore_pretrained_checkpoint:
    python -m backbones.convert_checkpoint --input crossformer-s.pth --variant crossformer_s \
        --format scenic --output crossformer_s_scenic/

``--variant`` names the architecture (``crossformerpp_s`` ... for CrossFormer++); ``--official_kwargs``
takes the official constructor's arguments as JSON instead (as in the parity fixtures), CrossFormer++
options included (``group_type``, ``use_acl``, a per-stage ``mlp_ratio`` list, ``img_size``, ...).
Classification checkpoints keep their head unless ``--model backbone``; mmdet/mmseg checkpoints give
their backbone.

    python -m backbones.convert_checkpoint --input crossformer-pp-s.pth --variant crossformerpp_s \
        --output crossformerpp_s.msgpack
"""

import argparse
import json
import sys
from typing import Optional, Sequence

import jax
import numpy as np

from backbones.crossformer import convert
from backbones.registry import create_model, list_models
from backbones.weights import converted
from backbones.weights import scenic


def features_only(module) -> bool:
  """Whether ``module`` is a dense backbone (not a classifier composing one)."""
  return not converted.is_classifier(module)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--input", required=True, help="official .pth/.pt or .npz state_dict")
  parser.add_argument("--output", required=True,
                      help="the .msgpack file to write (--format scenic: the checkpoint directory)")
  parser.add_argument("--format", default="msgpack", choices=("msgpack", "scenic"),
                      help="msgpack: our converted file; scenic: <output>/checkpoint_0, a Scenic train state "
                           "with params={'backbone': ...} (the dense backbone)")
  arch = parser.add_mutually_exclusive_group(required=True)
  arch.add_argument("--variant", choices=list_models())
  arch.add_argument("--official_kwargs", help="JSON of the official constructor's arguments")
  parser.add_argument("--model", default="auto", choices=("auto", "backbone", "classifier"))
  parser.add_argument("--lda_mode", default=None, choices=("v1", "main"),
                      help="default: the variant's (v1 for crossformer_*, main for crossformerpp_*), or "
                      "main when --official_kwargs hold CrossFormer++ options")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Runs the conversion and returns the path written."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  state_dict = convert.unwrap_state_dict(convert.read_official_checkpoint(args.input))
  if args.official_kwargs:
    module, variables = convert.from_official(state_dict, model=args.model, lda_mode=args.lda_mode,
                                              **json.loads(args.official_kwargs))
  else:
    classifier = args.model == "classifier" or (args.model == "auto" and "head.weight" in state_dict)
    num_classes = state_dict["head.weight"].shape[0] if "head.weight" in state_dict else 1000
    options = {"lda_mode": args.lda_mode} if args.lda_mode else {}
    module = create_model(args.variant, features_only=not classifier, num_classes=num_classes, **options)
    variables = convert.convert_state_dict(state_dict, module)
  if args.format == "scenic":
    params = variables["params"]
    if not features_only(module):
      params = params["backbone"]  # the classifier's backbone; its head has no place in a dense model
    path = scenic.save_scenic_checkpoint(args.output, params, metadata={
        "source": str(args.input), "variant": str(args.variant or "official_kwargs"),
        "lda_mode": args.lda_mode})
  else:
    path = converted.save_converted(args.output, module, variables)
  n_params = sum(int(np.prod(v.shape)) for v in jax.tree.leaves(variables))
  print(f"wrote {path}: {type(module).__name__} with {n_params:,} parameters")
  return str(path)


if __name__ == "__main__":
  main()
