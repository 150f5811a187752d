"""Builds a classification dataset: ImageNet-1k from its official tar files, or your own image folder.

    python -m projects.classification.data.prepare --dataset imagenet2012 --manual_dir DIR --data_dir TFDS_DIR
    python -m projects.classification.data.prepare --dataset image_folder --manual_dir DIR [--val_fraction 0.1]
"""

import argparse
import sys
from typing import Optional, Sequence

import tensorflow_datasets as tfds

from projects.classification.data import datasets
from projects.classification.data import folder_builder


def prepare(name: str, manual_dir: str, data_dir: Optional[str] = None, val_fraction: float = 0.0):
  """Builds dataset ``name`` from ``manual_dir`` into ``data_dir``; returns the builder."""
  if name == "image_folder":
    return folder_builder.prepare(manual_dir, data_dir, val_fraction)
  if name != "imagenet2012":
    raise ValueError(f"unknown dataset {name!r}; expected one of {datasets.DATASET_NAMES}")
  builder = tfds.builder("imagenet2012", data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, download_mode=tfds.download.GenerateMode.REUSE_DATASET_IF_EXISTS))
  return builder


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=datasets.DATASET_NAMES)
  parser.add_argument("--manual_dir", required=True, help="the folder holding the data")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
  parser.add_argument("--val_fraction", type=float, default=0.0,
                      help="image_folder without train/ and val/: the share of each class held out")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    builder = prepare(args.dataset, args.manual_dir, args.data_dir, args.val_fraction)
  except (FileNotFoundError, ValueError, AssertionError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  names = datasets.class_names(builder)
  print(f"prepared {args.dataset} in {builder.data_dir}: {splits}, {len(names)} classes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
