"""Prepares a COCO dataset for the detection pipeline (array_record files + the image-size index).

Extracted tree (COCO 2017, a subset, or any COCO-format set)::

  python -m projects.detection.data.prepare_coco --builder coco_tree --manual_dir /data/coco \\
      --data_dir ~/tensorflow_datasets --config 2017

Custom layout (each ``--split`` is ``NAME:IMAGE_DIR:ANNOTATION_JSON``, relative to the manual dir)::

  python -m projects.detection.data.prepare_coco --builder coco_tree --manual_dir /data/shapes \\
      --data_dir ~/tensorflow_datasets --config shapes \\
      --split train:images/train:ann/train.json --split validation:images/val:ann/val.json

Stock tfds builder (the five official zips in the manual dir)::

  python -m projects.detection.data.prepare_coco --builder coco/2017 --manual_dir /data/coco_zips \\
      --data_dir ~/tensorflow_datasets
"""

import argparse
from typing import Any, Dict, Optional, Sequence

from absl import logging
import tensorflow_datasets as tfds

from projects.detection.data import coco_source


def prepare(dataset_config: Dict[str, Any]) -> tfds.core.DatasetBuilder:
  """Builds the dataset ``dataset_config`` describes in array_record format and indexes its splits.

  ``coco_tree`` is built in its newest version (with instance masks), beside any older build in ``data_dir``.
  """
  builder = coco_source.make_builder(dataset_config, latest=True)
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(manual_dir=dataset_config["manual_dir"]),
      file_format=tfds.core.file_adapters.FileFormat.ARRAY_RECORD)
  coco_source.check_prepared(builder, dataset_config)
  for split, info in builder.info.splits.items():
    coco_source.split_index(builder, split, info.num_examples)
    logging.info("indexed %s: %d examples", split, info.num_examples)
  return builder


def main(argv: Optional[Sequence[str]] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--builder", default=coco_source.TREE_BUILDER, choices=coco_source.SUPPORTED_BUILDERS)
  parser.add_argument("--manual_dir", required=True, help="the extracted tree (coco_tree) or the zips")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default ~/tensorflow_datasets)")
  parser.add_argument("--config", default="2017", help="coco_tree config name (a new name with --split)")
  parser.add_argument("--split", action="append", default=[], metavar="NAME:IMAGE_DIR:ANNOTATION_JSON",
                      help="a split of a custom coco_tree dataset (repeat for each split)")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  builder_config: Any = args.config
  if args.split:
    if args.builder != coco_source.TREE_BUILDER:
      parser.error("--split only applies to --builder coco_tree")
    splits = [spec.split(":") for spec in args.split]
    bad = [spec for spec, parts in zip(args.split, splits) if len(parts) != 3]
    if bad:
      parser.error(f"--split must be NAME:IMAGE_DIR:ANNOTATION_JSON, got {bad}")
    builder_config = {"name": args.config, "splits": splits}
  builder = prepare({"builder": args.builder, "builder_config": builder_config,
                     "manual_dir": args.manual_dir, "data_dir": args.data_dir})
  print(f"prepared {builder.name}/{builder.builder_config.name} in {builder.data_dir}")


if __name__ == "__main__":
  main()
