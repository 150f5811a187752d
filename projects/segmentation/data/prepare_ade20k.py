"""Builds the ``ade20k_challenge`` tfds dataset from ``ADEChallengeData2016.zip`` (or its extracted folder).

  python -m projects.segmentation.data.prepare_ade20k --manual_dir DIR --data_dir DIR [--overwrite]

``--manual_dir`` holds ``ADEChallengeData2016.zip`` or ``ADEChallengeData2016/``; ``--data_dir`` is the tfds
data dir that ``config.dataset.data_dir`` then points at (default: tfds's, ``~/tensorflow_datasets``).
"""

import argparse
from typing import Optional, Sequence

from projects.segmentation.data import ade20k_builder


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Parses the command line and prepares the dataset."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--manual_dir", required=True,
                      help=f"folder holding {ade20k_builder.ZIP_NAME} or {ade20k_builder.ROOT}/")
  parser.add_argument("--data_dir", default=None, help="tfds data dir to write to (default: tfds's)")
  parser.add_argument("--overwrite", action="store_true", help="rebuild even if the dataset is prepared")
  args = parser.parse_args(argv)
  builder = ade20k_builder.prepare(args.manual_dir, args.data_dir, overwrite=args.overwrite)
  splits = ", ".join(f"{name}: {info.num_examples}" for name, info in builder.info.splits.items())
  print(f"prepared {builder.name} {builder.version} in {builder.data_dir} ({splits})")


if __name__ == "__main__":
  main()
