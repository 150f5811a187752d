"""Writes a small generated COCO-format dataset as an extracted tree (for tests and quick training runs).

Layout (what the ``coco_tree`` builder's default config reads)::

  <out_dir>/train2017/*.jpg  <out_dir>/val2017/*.jpg
  <out_dir>/annotations/instances_train2017.json  <out_dir>/annotations/instances_val2017.json

Images have varied sizes and aspect ratios (landscape, portrait, square) and a textured background.
Objects are filled, non-overlapping shapes of one distinctive colour per category, at 20% to 60% of the
short side, so a tiny detector separates them quickly. Category ids are non-contiguous (3, 7, 12). In every
split, image 0 has no objects and image 1 also holds a cluster of small squares annotated as one crowd region
(``iscrowd=1``, uncompressed RLE). Segmentations come in both COCO forms: squares and triangles as polygons
(on pixel boundaries, like the boxes), discs as compressed RLE of exactly the drawn pixels.
Everything is a deterministic function of ``seed``.

Usage: ``python -m projects.detection.data.make_synthetic_coco --out_dir /tmp/synthetic_coco``
"""

import argparse
import json
import os
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw
from pycocotools import mask as mask_util

# COCO id -> (name, RGB colour); ids deliberately non-contiguous.
CATEGORIES: Dict[int, Tuple[str, Tuple[int, int, int]]] = {
    3: ("red_square", (220, 30, 30)),
    7: ("green_disc", (30, 200, 40)),
    12: ("blue_triangle", (30, 60, 230)),
}
IMAGE_SIZES: Tuple[Tuple[int, int], ...] = (  # (height, width)
    (120, 160), (160, 120), (128, 128), (96, 192), (192, 96), (112, 144), (144, 112), (160, 160))
SPLITS: Tuple[Tuple[str, str], ...] = (("train2017", "instances_train2017.json"),
                                       ("val2017", "instances_val2017.json"))


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
  """A grey-ish gradient with mild noise (no saturated colours, so the shapes stay distinctive)."""
  base = rng.uniform(80, 170)
  gy, gx = rng.uniform(-30, 30, size=2)
  yy, xx = np.meshgrid(np.linspace(-0.5, 0.5, height), np.linspace(-0.5, 0.5, width), indexing="ij")
  grey = base + gy * yy + gx * xx
  pixels = grey[..., None] + rng.normal(0, 6, size=(height, width, 3))
  return np.clip(pixels, 0, 255).astype(np.uint8)


def _draw_shape(draw: ImageDraw.ImageDraw, category_id: int, x0: int, y0: int, size: int,
                colour: Tuple[int, int, int], image_size: Tuple[int, int]) -> Tuple[Any, float]:
  """Draws one object with its top-left corner at (x0, y0); returns its COCO segmentation and area.

  Squares and triangles get polygons whose coordinates are pixel boundaries (the square's is its box);
  discs get the compressed RLE of the drawn pixels (``image_size`` = (h, w)).
  """
  x1, y1 = x0 + size - 1, y0 + size - 1
  if category_id == 3:
    draw.rectangle([x0, y0, x1, y1], fill=colour)
    polygon = [x0, y0, x0 + size, y0, x0 + size, y0 + size, x0, y0 + size]
    return [[float(v) for v in polygon]], float(size * size)
  if category_id == 7:
    draw.ellipse([x0, y0, x1, y1], fill=colour)
    disc = Image.new("L", image_size[::-1], 0)
    ImageDraw.Draw(disc).ellipse([x0, y0, x1, y1], fill=1)
    rle = mask_util.encode(np.asfortranarray(np.asarray(disc, np.uint8)))
    radius = size / 2
    return ({"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")},
            float(np.pi * radius * radius))
  draw.polygon([x0 + size / 2, y0, x1, y1, x0, y1], fill=colour)
  return [[float(x0 + size / 2), float(y0), float(x0 + size), float(y0 + size), float(x0), float(y0 + size)]], \
      float(size * size / 2)


def _place(rng: np.random.Generator, height: int, width: int, size: int,
           taken: Sequence[Tuple[int, int, int, int]]) -> Optional[Tuple[int, int]]:
  """A top-left corner for a ``size`` square overlapping none of the ``taken`` boxes (None after 50 tries)."""
  for _ in range(50):
    x0 = int(rng.integers(0, width - size + 1))
    y0 = int(rng.integers(0, height - size + 1))
    if all(x0 + size <= a or a + c <= x0 or y0 + size <= b or b + d <= y0 for a, b, c, d in taken):
      return x0, y0
  return None


def _rle(mask: np.ndarray) -> Dict[str, Any]:
  """Uncompressed COCO RLE of a boolean mask (column-major runs, starting with background)."""
  flat = mask.flatten(order="F").astype(np.uint8)
  changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
  counts = np.diff(np.concatenate([[0], changes])).tolist()
  return {"size": list(mask.shape), "counts": [int(c) for c in counts]}


def _make_image(rng: np.random.Generator, index: int, image_id: int, next_ann_id: int
                ) -> Tuple[np.ndarray, List[Dict[str, Any]]]:
  """One image and its annotations: image 0 is empty, image 1 has a crowd region."""
  height, width = IMAGE_SIZES[int(rng.integers(len(IMAGE_SIZES)))]
  image = Image.fromarray(_background(rng, height, width))
  draw = ImageDraw.Draw(image)
  annotations: List[Dict[str, Any]] = []
  taken: List[Tuple[int, int, int, int]] = []

  def add(category_id, bbox, area, segmentation, iscrowd):
    annotations.append({"id": next_ann_id + len(annotations), "image_id": image_id,
                        "category_id": category_id, "bbox": [float(v) for v in bbox], "area": area,
                        "segmentation": segmentation, "iscrowd": iscrowd})

  if index == 1:  # a crowd: several small squares in one region, annotated once with iscrowd=1
    region = min(height, width) // 2
    rx, ry = _place(rng, height, width, region, taken)  # the first shape always finds room
    mask = np.zeros((height, width), bool)
    cell = max(region // 3, 4)
    for cy in range(ry, ry + region - cell + 1, cell):
      for cx in range(rx, rx + region - cell + 1, cell):
        side = cell - 2
        draw.rectangle([cx, cy, cx + side - 1, cy + side - 1], fill=CATEGORIES[3][1])
        mask[cy:cy + side, cx:cx + side] = True
    ys, xs = np.nonzero(mask)
    bbox = [xs.min(), ys.min(), xs.max() - xs.min() + 1, ys.max() - ys.min() + 1]
    add(3, bbox, float(mask.sum()), _rle(mask), 1)
    taken.append((rx, ry, region, region))

  num_objects = 0 if index == 0 else int(rng.integers(1, 4))
  for _ in range(num_objects):
    category_id = int(rng.choice(list(CATEGORIES)))
    size = int(rng.uniform(0.2, 0.6) * min(height, width))
    corner = _place(rng, height, width, size, taken)
    if corner is None:  # no room left without overlapping: fewer objects in this image
      continue
    x0, y0 = corner
    segmentation, area = _draw_shape(draw, category_id, x0, y0, size, CATEGORIES[category_id][1],
                                     (height, width))
    add(category_id, [x0, y0, size, size], area, segmentation, 0)
    taken.append((x0, y0, size, size))
  return np.asarray(image), annotations


def make_synthetic_coco(out_dir: str, num_train: int = 64, num_val: int = 16,
                        seed: int = 0) -> Dict[str, str]:
  """Writes the dataset under ``out_dir``; returns ``{split folder: annotation file path}``.

  Args:
    out_dir: the tree's root (created if needed; existing files of the same names are overwritten).
    num_train: number of training images (at least 2: the empty image and the crowd image).
    num_val: number of validation images (at least 2).
    seed: the only source of randomness.
  """
  if num_train < 2 or num_val < 2:
    raise ValueError(f"need at least 2 images per split (got num_train={num_train}, num_val={num_val})")
  rng = np.random.default_rng(seed)
  categories = [{"id": cat_id, "name": name, "supercategory": "shape"}
                for cat_id, (name, _) in sorted(CATEGORIES.items())]
  os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
  written = {}
  next_image_id, next_ann_id = 1000, 1
  for (folder, ann_name), count in zip(SPLITS, (num_train, num_val)):
    os.makedirs(os.path.join(out_dir, folder), exist_ok=True)
    images, annotations = [], []
    for index in range(count):
      image_id = next_image_id
      next_image_id += 7  # non-consecutive ids, as in COCO
      pixels, anns = _make_image(rng, index, image_id, next_ann_id)
      next_ann_id += len(anns)
      file_name = f"{image_id:012d}.jpg"
      Image.fromarray(pixels).save(os.path.join(out_dir, folder, file_name), quality=95)
      images.append({"id": image_id, "file_name": file_name, "height": pixels.shape[0],
                     "width": pixels.shape[1]})
      annotations.extend(anns)
    path = os.path.join(out_dir, "annotations", ann_name)
    with open(path, "w") as f:
      json.dump({"info": {"description": f"synthetic shapes, seed {seed}"}, "licenses": [],
                 "images": images, "annotations": annotations, "categories": categories}, f)
    written[folder] = path
  return written


def main(argv: Sequence[str] = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--out_dir", required=True, help="root of the tree to write")
  parser.add_argument("--num_train", type=int, default=64)
  parser.add_argument("--num_val", type=int, default=16)
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  for folder, path in make_synthetic_coco(args.out_dir, args.num_train, args.num_val, args.seed).items():
    print(f"{folder}: {path}")


if __name__ == "__main__":
  main()
