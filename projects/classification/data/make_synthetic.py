"""A tiny learnable image-classification folder for the tests and ``make demo-classification``.

    python -m projects.classification.data.make_synthetic --out_dir DIR [--num_train 40 --num_val 10]

Writes ``DIR/train/<class>/*.{jpg,png}`` and ``DIR/val/<class>/*`` (the ``image_folder`` layout): four
classes, each a pattern (``horizontal_stripes``, ``vertical_stripes``, ``checkerboard``, ``dots``) drawn in
its class's hue (reddish, greenish, bluish, yellowish) for half of the images and a random one for the
others, on a noisy background, in random sizes and aspect ratios.
"""

import argparse
import pathlib
import sys
from typing import Optional, Sequence, Tuple

import numpy as np
from PIL import Image

CLASSES = ("checkerboard", "dots", "horizontal_stripes", "vertical_stripes")
_HUES = {"horizontal_stripes": (200, 60, 60), "vertical_stripes": (60, 190, 70), "checkerboard": (60, 80, 210),
         "dots": (210, 200, 50)}


def draw(name: str, height: int, width: int, rng: np.random.Generator) -> np.ndarray:
  """(height, width, 3) uint8 image of class ``name``."""
  period = int(rng.integers(6, 14))
  rows, cols = np.mgrid[:height, :width]
  if name == "horizontal_stripes":
    mask = (rows // (period // 2)) % 2 == 0
  elif name == "vertical_stripes":
    mask = (cols // (period // 2)) % 2 == 0
  elif name == "checkerboard":
    mask = ((rows // period) + (cols // period)) % 2 == 0
  else:
    mask = ((rows % period - period / 2) ** 2 + (cols % period - period / 2) ** 2) < (period / 3) ** 2
  # Half the images take their class's hue, the other half a random one: the pattern must be learnt too.
  hue = _HUES[name] if rng.random() < 0.5 else rng.uniform(40, 230, 3)
  color = np.asarray(hue, np.float64) + rng.normal(0, 20, 3)
  background = rng.uniform(20, 120, 3) + rng.normal(0, 12, (height, width, 3))
  image = np.where(mask[..., None], color, background)
  return np.clip(image, 0, 255).astype(np.uint8)


def make_image_folder(out_dir: str, num_train: int = 40, num_val: int = 10, seed: int = 0,
                      size_range: Tuple[int, int] = (40, 96), classes: Sequence[str] = CLASSES) -> pathlib.Path:
  """Writes the folder (module docstring); returns ``out_dir``. Deterministic given ``seed``."""
  root = pathlib.Path(out_dir)
  rng = np.random.default_rng(seed)
  for split, count in (("train", num_train), ("val", num_val)):
    for name in classes:
      folder = root / split / name
      folder.mkdir(parents=True, exist_ok=True)
      for i in range(count):
        height, width = (int(v) for v in rng.integers(size_range[0], size_range[1] + 1, 2))
        image = Image.fromarray(draw(name, height, width, rng))
        suffix = ".png" if i % 3 == 0 else ".jpg"
        image.save(folder / f"{name}_{i:04d}{suffix}", **({"quality": 92} if suffix == ".jpg" else {}))
  return root


def main(argv: Optional[Sequence[str]] = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out_dir", required=True)
  parser.add_argument("--num_train", type=int, default=40, help="training images per class")
  parser.add_argument("--num_val", type=int, default=10, help="validation images per class")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(sys.argv[1:] if argv is None else argv)
  root = make_image_folder(args.out_dir, args.num_train, args.num_val, args.seed)
  print(f"wrote {len(CLASSES)} classes x ({args.num_train} train + {args.num_val} val) images to {root}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
