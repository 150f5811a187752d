"""Detect objects in one image or a folder: COCO results JSON and a picture with labelled boxes per image.

    python -m projects.detection.predict --config configs/retinanet_crossformer_s_coco.py \
        --checkpoint retinanet_s.msgpack --input photos/ --output_dir out/

``--checkpoint``: a training workdir (``--config`` then defaults to its ``config.json``), a converted model file
or an official mmdet ``.pth``/``.npz``. For each input ``photos/<path>/<stem>.<ext>`` it writes
``out/<path>/<stem>.json``::

    {"source": "/abs/photos/x.jpg", "file_name": "x.jpg", "height": H, "width": W, "image_id": ID,
     "results": [{"image_id": ID, "category_id": 18, "bbox": [x, y, w, h], "score": 0.91}, ...]}

(``results`` is in the COCO results format, ``COCO.loadRes`` reads it; ``image_id`` is the file stem when it is
a number, as COCO file names are, else 0) and ``out/<path>/<stem>.png``, the image with the boxes scoring at
least ``--score_threshold`` drawn and named. See ``projects.common.predict_io`` for naming, provenance and
overwrite rules; the exit status is 1 when any input was skipped.
"""

import argparse
import pathlib
import sys
from typing import Any, Dict, Optional, Sequence

from backbones import compilation_cache
from backbones.weights import files
from projects.common import images as images_lib
from projects.common import predict_io
from projects.common import restore
from projects.detection import predictor
from projects.detection import visualize

SUFFIXES = (".json", ".png")


def image_id_of(path: pathlib.Path) -> int:
  """COCO's image id convention: the numeric file stem (``000000000139.jpg`` -> 139), else 0."""
  return int(path.stem) if path.stem.isdigit() else 0


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  restore.add_model_arguments(parser)
  parser.add_argument("--input", required=True, help="an image file or a folder of images")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--score_threshold", type=float, default=None,
                      help="minimum score drawn (default: config.visualization_score_threshold, else 0.3); "
                      "the JSON keeps every detection of config.model.test_cfg")
  parser.add_argument("--pad_to_buckets", action="store_true",
                      help="pad into the dataset's aspect-ratio buckets (fewer compilations for mixed sizes)")
  parser.add_argument("--overwrite", action="store_true",
                      help="replace existing outputs even when another input wrote them")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns ``predict_io.run_over_inputs``'s summary (skipped inputs: exit status 1)."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  detector = predictor.Detector.from_checkpoint(args.config, args.checkpoint, pad_to_buckets=args.pad_to_buckets)
  threshold = args.score_threshold
  if threshold is None:
    threshold = float(detector.model.config.get("visualization_score_threshold", 0.3))

  def predict_and_write(path: pathlib.Path, base: pathlib.Path, source: str) -> None:
    rgb = images_lib.read_image(path)
    detections = detector(rgb)
    image_id = image_id_of(path)
    payload = {"file_name": path.name, "height": int(rgb.shape[0]), "width": int(rgb.shape[1]),
               "image_id": image_id, "results": detections.to_coco(image_id)}
    picture = visualize.draw_detections(rgb, detections.boxes, detections.labels, detections.scores,
                                        detector.class_names, score_threshold=threshold)
    files.write_atomic(pathlib.Path(str(base) + SUFFIXES[0]), predict_io.json_bytes(payload, source))
    files.write_atomic(pathlib.Path(str(base) + SUFFIXES[1]), predict_io.png_bytes(picture, source))

  summary = predict_io.run_over_inputs(args.input, args.output_dir, SUFFIXES, predict_and_write,
                                       overwrite=args.overwrite, desc="detect")
  predict_io.print_summary(summary, "detected objects in", args.output_dir)
  return summary


if __name__ == "__main__":
  sys.exit(1 if main()["skipped"] else 0)
