"""Segment one image or a folder: class-index PNGs and colour overlays at each image's own size.

    python -m projects.segmentation.predict --config configs/upernet_crossformer_s_ade20k.py \
        --checkpoint upernet_s.msgpack --input photos/ --output_dir out/ [--mode whole|slide|ms_flip]

``--checkpoint``: a training workdir (``--config`` then defaults to its ``config.json``), a converted model file
or an official mmseg ``.pth``/``.npz``. For each input ``photos/<path>/<stem>.<ext>`` it writes
``out/<path>/<stem>.png`` (class indices, uint8 for up to 256 classes, else 16-bit) and
``out/<path>/<stem>_overlay.png`` (the image blended with the class colours and a legend of the classes
present). See ``projects.common.predict_io`` for naming, provenance and overwrite rules; the exit status is 1
when any input was skipped. Whole-mode views run in the padded canvases of ``config.inference.canvases``
(``predictor``), compiled ahead of time with the persistent compilation cache on; the programs compiled and
their compile seconds are printed at the end.
"""

import argparse
import pathlib
import sys
from typing import Any, Dict, Optional, Sequence

import numpy as np

from backbones.weights import files
from backbones import compilation_cache
from projects.common import images as images_lib
from projects.common import predict_io
from projects.common import restore
from projects.segmentation import predictor
from projects.segmentation import visualize

SUFFIXES = (".png", "_overlay.png")


def label_array(label_map: np.ndarray, num_classes: int) -> np.ndarray:
  """The class map in the PNG's dtype: uint8 for up to 256 classes, else uint16."""
  return label_map.astype(np.uint8 if num_classes <= 256 else np.uint16)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  restore.add_model_arguments(parser)
  parser.add_argument("--input", required=True, help="an image file or a folder of images")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--mode", default=None, choices=predictor.TEST_MODES,
                      help="test-time mode (default: config.inference, else whole)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace existing outputs even when another input wrote them")
  parser.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the class colours")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns ``predict_io.run_over_inputs``'s summary (skipped inputs: exit status 1)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  segmenter = predictor.Segmenter.from_checkpoint(args.config, args.checkpoint, mode=args.mode)
  segmenter.compile_canvases()
  colors = visualize.palette(segmenter.num_classes)

  def predict_and_write(path: pathlib.Path, base: pathlib.Path, source: str) -> None:
    rgb = images_lib.read_image(path)
    label_map = segmenter(rgb)
    overlay = visualize.overlay_with_legend(rgb, label_map, segmenter.class_names, colors, args.alpha)
    files.write_atomic(pathlib.Path(str(base) + SUFFIXES[0]),
                            predict_io.png_bytes(label_array(label_map, segmenter.num_classes), source))
    files.write_atomic(pathlib.Path(str(base) + SUFFIXES[1]), predict_io.png_bytes(overlay, source))

  summary = predict_io.run_over_inputs(args.input, args.output_dir, SUFFIXES, predict_and_write,
                                       overwrite=args.overwrite, desc="segment")
  predict_io.print_summary(summary, "segmented", args.output_dir)
  summary["programs"] = segmenter.program_counts()
  print(f"compiled programs: {predictor.format_programs(summary['programs'])}")
  return summary


if __name__ == "__main__":
  sys.exit(1 if main()["skipped"] else 0)
