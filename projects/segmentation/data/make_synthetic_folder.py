"""Writes a small generated segmentation dataset as your own folder or as a Cityscapes tree.

  python -m projects.segmentation.data.make_synthetic_folder --out_dir DIR [--layout folder|cityscapes]
      [--num_train 40 --num_val 8 --seed 0 --ignore 255]

The scenes are those of ``make_synthetic_ade20k`` (streets and rooms with 8 textured classes, unlabelled
outlines and clutter), written in the layouts ``folder_builders`` reads:

* ``folder``: ``classes.txt`` (wall, building, sky, floor, tree, road, person, car; plus ``ignore: N`` when
  ``--ignore`` is not 255), ``images/{train,val}/NAME.{jpg,png}`` (JPEG and PNG alternate) and
  ``masks/{train,val}/NAME.png`` with class indices 0..7 and the ignore value on unlabelled pixels;
* ``cityscapes``: frames of Cityscapes' 1 : 2 shape (``short_side`` high), as
  ``leftImg8bit/{train,val}/CITY/CITY_XXXXXX_000019_leftImg8bit.png`` and
  ``gtFine/.../CITY_XXXXXX_000019_gtFine_labelTrainIds.png`` with the classes drawn as their Cityscapes
  train ids (road 0, sidewalk 1 for floors, building 2, wall 3, vegetation 8, sky 10, person 11, car 13) and
  255 on unlabelled pixels.

Then build it: ``python -m projects.segmentation.data.prepare_folder --dataset segmentation_folder
--manual_dir DIR`` (or ``--dataset cityscapes_train_ids``). The output is a deterministic function of the
arguments.
"""

import argparse
import io
import os
import pathlib
from typing import Dict, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from projects.segmentation.data import ade20k_classes
from projects.segmentation.data import folder_builders
from projects.segmentation.data import make_synthetic_ade20k as ade_synthetic

LAYOUTS = ("folder", "cityscapes")
# The drawn classes (ADE20K raw values) -> class index in the folder layout.
FOLDER_CLASSES: Dict[int, int] = {raw: i for i, raw in enumerate(ade_synthetic.SYNTHETIC_CLASSES)}
FOLDER_CLASS_NAMES: Tuple[str, ...] = tuple(ade20k_classes.CLASS_NAMES[raw - 1]
                                            for raw in ade_synthetic.SYNTHETIC_CLASSES)
# The drawn classes (ADE20K raw values) -> Cityscapes train id.
CITYSCAPES_IDS: Dict[int, int] = {
    ade_synthetic.ROAD: 0, ade_synthetic.FLOOR: 1, ade_synthetic.BUILDING: 2, ade_synthetic.WALL: 3,
    ade_synthetic.TREE: 8, ade_synthetic.SKY: 10, ade_synthetic.PERSON: 11, ade_synthetic.CAR: 13}
_CITIES = {"train": "aachen", "val": "frankfurt"}


def _remap(raw: np.ndarray, table: Dict[int, int], ignore: int) -> np.ndarray:
  lookup = np.full(256, ignore, np.uint8)
  for source, target in table.items():
    lookup[source] = target
  return lookup[raw]


def _cityscapes_frame(image: np.ndarray, raw: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
  """The scene stretched to a 1 : 2 (h : w) frame, its short side high: bilinear image, nearest labels."""
  height = min(raw.shape)
  size = (2 * height, height)  # PIL: (w, h)
  return (np.asarray(Image.fromarray(image).resize(size, Image.BILINEAR)),
          np.asarray(Image.fromarray(raw).resize(size, Image.NEAREST)))


def _save(path: pathlib.Path, array: np.ndarray) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  buffer = io.BytesIO()
  fmt = "JPEG" if path.suffix == ".jpg" else "PNG"
  Image.fromarray(array).save(buffer, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_bytes(buffer.getvalue())
  os.replace(tmp, path)


def make_synthetic_folder(out_dir: str, layout: str = "folder", num_train: int = 40, num_val: int = 8,
                          seed: int = 0, short_side: Tuple[int, int] = (96, 160), max_aspect: float = 2.0,
                          ignore: int = folder_builders.DEFAULT_IGNORE) -> str:
  """Writes the dataset under ``out_dir`` (the builder's manual dir) and returns ``out_dir``.

  Args:
    out_dir: the folder to write.
    layout: ``"folder"`` (``segmentation_folder``) or ``"cityscapes"`` (``cityscapes_train_ids``).
    num_train: number of training images.
    num_val: number of validation images.
    seed: the dataset is a deterministic function of the arguments.
    short_side: inclusive range of the images' shorter side in pixels.
    max_aspect: aspect ratios (long/short) are drawn log-uniformly up to this, portrait or landscape.
    ignore: the mask value of unlabelled pixels (``folder`` layout; Cityscapes uses 255), in [8, 255].
  """
  if layout not in LAYOUTS:
    raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
  if num_train < 1 or num_val < 1:
    raise ValueError(f"need at least one image per split, got num_train={num_train} num_val={num_val}")
  if layout == "cityscapes":
    ignore = folder_builders.DEFAULT_IGNORE
  elif not len(FOLDER_CLASSES) <= ignore <= 255:
    raise ValueError(f"ignore must be in [{len(FOLDER_CLASSES)}, 255], got {ignore}")
  root = pathlib.Path(out_dir)
  root.mkdir(parents=True, exist_ok=True)
  if layout == "folder":
    extra = [f"ignore: {ignore}"] if ignore != folder_builders.DEFAULT_IGNORE else []
    lines = list(FOLDER_CLASS_NAMES) + extra
    (root / "classes.txt").write_text("\n".join(lines) + "\n")
  for split_code, (split, count) in enumerate((("train", num_train), ("val", num_val))):
    for index in range(count):
      rng = np.random.default_rng([seed, split_code, index])
      image, raw, _ = ade_synthetic.make_example(rng, tuple(short_side), max_aspect)
      if layout == "folder":
        stem = f"{split}_{index:04d}"
        _save(root / "images" / split / f"{stem}{'.jpg' if index % 2 == 0 else '.png'}", image)
        _save(root / "masks" / split / f"{stem}.png", _remap(raw, FOLDER_CLASSES, ignore))
      else:
        image, raw = _cityscapes_frame(image, raw)
        city = _CITIES[split]
        stem = f"{city}_{index:06d}_000019"
        _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
        _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelTrainIds.png",
              _remap(raw, CITYSCAPES_IDS, ignore))
  return out_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out_dir", required=True, help="the manual dir to write to")
  parser.add_argument("--layout", default="folder", choices=LAYOUTS)
  parser.add_argument("--num_train", type=int, default=40)
  parser.add_argument("--num_val", type=int, default=8)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--ignore", type=int, default=folder_builders.DEFAULT_IGNORE,
                      help="mask value of unlabelled pixels (folder layout)")
  args = parser.parse_args(argv)
  make_synthetic_folder(args.out_dir, args.layout, args.num_train, args.num_val, args.seed,
                        ignore=args.ignore)
  print(f"wrote a {args.layout} dataset to {args.out_dir}")


if __name__ == "__main__":
  main()
