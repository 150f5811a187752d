"""Builds a segmentation dataset from your own folder or from Cityscapes (``folder_builders``).

    python -m projects.segmentation.data.prepare_folder --dataset segmentation_folder --manual_dir DIR \
        --data_dir TFDS_DIR
    python -m projects.segmentation.data.prepare_folder --dataset cityscapes_train_ids --manual_dir DIR
"""

import argparse
import sys
from typing import Optional, Sequence

from projects.segmentation.data import folder_builders


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--dataset", required=True, choices=sorted(folder_builders.BUILDERS))
  parser.add_argument("--manual_dir", required=True, help="the folder holding the data (see the builder)")
  parser.add_argument("--data_dir", default=None, help="tfds data dir (default: tfds's)")
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  try:
    builder = folder_builders.prepare(args.dataset, args.manual_dir, args.data_dir)
  except (FileNotFoundError, ValueError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  splits = {name: split.num_examples for name, split in builder.info.splits.items()}
  print(f"prepared {args.dataset} in {builder.data_dir}: {splits}, "
        f"{len(builder.info.metadata['class_names'])} classes")
  return 0


if __name__ == "__main__":
  sys.exit(main())
