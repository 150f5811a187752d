"""Classify one image or a folder: the top-5 classes with their names as JSON, and a captioned picture.

    python -m projects.classification.predict --checkpoint workdirs/tiny_cls --input photos/ --output_dir out/
    python -m projects.classification.predict --config configs/crossformer_s_imagenet.py \
        --checkpoint crossformer-s.pth --input photo.jpg --output_dir out/ [--top_k 5]

``--checkpoint``: a training workdir (``--config`` then defaults to its ``config.json``), a converted model file
or an official ImageNet ``.pth``/``.npz`` (with the config of its variant). For each input
``photos/<path>/<stem>.<ext>`` it writes ``out/<path>/<stem>.json`` (``{"source", "top_k": [{"index",
"class", "probability"}, ...]}``, best first) and ``out/<path>/<stem>_top5.png`` (the image as the model sees
it, the official centre crop, captioned with the classes and probabilities). See
``projects.common.predict_io`` for naming, provenance and overwrite rules; the exit status is 1 when any
input was skipped.
"""

import argparse
import pathlib
import sys
from typing import Any, Dict, Optional, Sequence

from backbones import compilation_cache
from backbones.preprocess import denormalize_image
from backbones.weights import files
from projects.classification import visualize
from projects.classification.predictor import Classifier
from projects.common import predict_io
from projects.common import restore

SUFFIXES = (".json", "_top5.png")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  restore.add_model_arguments(parser)
  parser.add_argument("--input", required=True, help="an image file or a folder of images")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--top_k", type=int, default=5, help="how many classes to report")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace existing outputs even when another input wrote them")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns ``predict_io.run_over_inputs``'s summary (skipped inputs: exit status 1)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  model, variables = restore.restore_model(args.config, args.checkpoint)
  restore.check_task(model, "classification", args.checkpoint, "predict")
  classifier = Classifier(model, variables)

  def predict_and_write(path: pathlib.Path, base: pathlib.Path, source: str) -> None:
    inputs = classifier.inputs(path)
    top = classifier.ranked(classifier.probabilities(inputs), args.top_k)
    payload = {"top_k": [{"index": i, "class": name, "probability": p} for i, name, p in top]}
    lines = [f"{p * 100:5.1f}% {name}" for _, name, p in top]
    picture = visualize.captioned(denormalize_image(inputs), lines, (0, 0, 0), max(160, classifier.crop_size))
    files.write_atomic(pathlib.Path(str(base) + SUFFIXES[0]), predict_io.json_bytes(payload, source))
    files.write_atomic(pathlib.Path(str(base) + SUFFIXES[1]), predict_io.png_bytes(picture, source))

  summary = predict_io.run_over_inputs(args.input, args.output_dir, SUFFIXES, predict_and_write,
                                       overwrite=args.overwrite, desc="classify")
  predict_io.print_summary(summary, "classified", args.output_dir)
  return summary


if __name__ == "__main__":
  sys.exit(1 if main()["skipped"] else 0)
