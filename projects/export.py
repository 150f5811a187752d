"""Export a backbone, segmenter or detector for fixed input shapes (StableHLO and/or TF SavedModel).

    # a backbone (its feature pyramid), from a converted checkpoint, a Hub id or a named variant
    python -m projects.export --checkpoint crossformer_s.msgpack --shape 1x512x512 --output s.jaxexport
    # a task model from its checkpoint (a training workdir or a converted model file carry their config; an
    # official file needs --config)
    python -m projects.export --config configs/upernet_crossformer_s_ade20k.py --checkpoint K \
        --shape 1x512x512 --shape 1x512x704 --output upernet.jaxexport --saved_model upernet_savedmodel

Inputs are normalised float32 NHWC images (``backbones.preprocess.normalize_image``). Outputs: the backbone's
``stage_*`` maps; a segmenter's ``logits`` at the input size; a detector's fixed-size ``boxes`` (xyxy, input
pixels), ``scores``, ``labels`` (-1 = padding) and ``valid``. Each shape is a separate program: CrossFormer's
attention groups depend on the input size.
"""

import argparse
import sys
from typing import Any, Callable, List, Optional, Sequence, Tuple

from backbones import compilation_cache
from backbones import export as export_lib
from backbones import outputs

ApplyFn = Callable[[Any, Any], Any]


def parse_shape(text: str) -> Tuple[int, int, int, int]:
  """``"1x512x512"`` (or ``"512x512"``, batch 1) -> ``(1, 512, 512, 3)``."""
  try:
    dims = [int(d) for d in text.lower().split("x")]
  except ValueError:
    dims = []
  if len(dims) == 2:
    dims = [1] + dims
  if len(dims) != 3 or min(dims) < 1:
    raise ValueError(f"--shape {text!r}: expected BATCHxHEIGHTxWIDTH (e.g. 1x512x512) or HEIGHTxWIDTH")
  return (dims[0], dims[1], dims[2], 3)


def build(args: argparse.Namespace) -> Tuple[ApplyFn, Any]:
  """``(apply_fn, variables)`` of what the arguments name."""
  from projects.common import restore  # pylint: disable=g-import-not-at-top
  if args.config or (args.checkpoint and restore.is_task_checkpoint(args.checkpoint)):
    if not args.checkpoint:
      raise ValueError("--config needs a --checkpoint (training workdir, converted model file or official file)")
    model, variables = restore.restore_model(args.config, args.checkpoint)
    return model.export_fn(), variables
  from backbones.extract_features import build_extractor  # pylint: disable=g-import-not-at-top
  module, variables = build_extractor(args.model, args.checkpoint)
  return module.apply, variables


def main(argv: Optional[Sequence[str]] = None) -> List[str]:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--config", help="a job config (segmenter/detector); omit for a backbone")
  parser.add_argument("--model", help="backbone variant (e.g. crossformer_s) when --checkpoint is official")
  parser.add_argument("--checkpoint", help="weights: converted file, Hub id hf-hub:ORG/NAME, workdir, official")
  parser.add_argument("--shape", action="append", required=True, type=parse_shape,
                      help="BATCHxHEIGHTxWIDTH to export (repeat for several shape buckets)")
  parser.add_argument("--output", help="StableHLO file to write (jax.export)")
  parser.add_argument("--saved_model", help="TensorFlow SavedModel directory to write (jax2tf)")
  parser.add_argument("--platforms", default="cpu", help="comma-separated: cpu,cuda,tpu")
  parser.add_argument("--overwrite", action="store_true", help="replace an existing --output / --saved_model")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  if not args.output and not args.saved_model:
    parser.error("give --output and/or --saved_model")
  try:
    if not args.overwrite:  # checked before the (slow) build: nothing of the user's is replaced
      for flag, path in (("--output", args.output), ("--saved_model", args.saved_model)):
        if path:
          outputs.refuse_existing(path, flag)
    apply_fn, variables = build(args)
  except (FileNotFoundError, ValueError) as e:
    parser.exit(2, f"error: {e}\n")
  written = []
  if args.output:
    exported = export_lib.export_stablehlo(apply_fn, variables, args.shape,
                                           platforms=tuple(args.platforms.split(",")))
    written.append(str(export_lib.save_stablehlo(args.output, exported)))
  if args.saved_model:
    written.append(str(export_lib.save_saved_model(args.saved_model, apply_fn, variables, args.shape)))
  for path in written:
    print(f"wrote {path} for shapes {[s[:3] for s in args.shape]}")
  return written


if __name__ == "__main__":
  main()
