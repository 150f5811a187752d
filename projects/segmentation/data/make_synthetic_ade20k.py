"""Writes a small generated ADE20K stand-in in the official ``ADEChallengeData2016`` on-disk layout.

  python -m projects.segmentation.data.make_synthetic_ade20k --out_dir DIR [--num_train 300 --num_val 60]
      [--seed 0] [--layout folder|zip|both]

Each image is an outdoor (sky over road) or indoor (wall over floor) scene with a few buildings, trees, cars
and people drawn as simple shapes. Every class has its own colour and texture (gradient, stripes, window
grid, planks, blotches, grain), plus pixel noise and JPEG compression, so a tiny model learns it in minutes.
Annotations use the real ADE20K values of those classes (raw PNG values 1..150) and contain 0 ("other")
pixels: a thin band along object boundaries and, in some images, an unlabelled clutter object. Image sizes and
aspect ratios vary (portrait and landscape). The output is a deterministic function of the arguments; every
image has its own random stream, so the first images do not depend on how many are generated.

Build the tfds dataset from it with the real builder:
``python -m projects.segmentation.data.prepare_ade20k --manual_dir DIR --data_dir DATA_DIR``.
"""

import argparse
import io
import os
import zipfile
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

from projects.segmentation.data import ade20k_builder
from projects.segmentation.data import ade20k_classes

# Raw annotation values (1-based ADE20K class ids) of the drawn classes.
WALL, BUILDING, SKY, FLOOR, TREE, ROAD, PERSON, CAR = 1, 2, 3, 4, 5, 7, 13, 21
SYNTHETIC_CLASSES: Tuple[int, ...] = (WALL, BUILDING, SKY, FLOOR, TREE, ROAD, PERSON, CAR)
_SPLITS = (("training", "ADE_train"), ("validation", "ADE_val"))
_NOISE_STD = 8.0
_JPEG_QUALITY = 90

Texture = Callable[[np.random.Generator, np.ndarray, np.ndarray], np.ndarray]


def _smooth_noise(rng: np.random.Generator, h: int, w: int, cell: int) -> np.ndarray:
  """Low-frequency noise in [-1, 1] of shape (h, w): a coarse random grid upsampled bilinearly."""
  coarse = rng.uniform(-1.0, 1.0, size=(max(2, h // cell + 2), max(2, w // cell + 2))).astype(np.float32)
  return np.asarray(Image.fromarray(coarse).resize((w, h), Image.BILINEAR))


def _texture(base: Tuple[int, int, int], pattern: Callable[..., np.ndarray]) -> Texture:
  def texture(rng, yy, xx):
    return np.asarray(base, np.float32) + pattern(rng, yy, xx)[..., None]
  return texture


# Class -> texture(rng, yy, xx) -> (h, w, 3) float image. Colours differ in hue or brightness, patterns in
# orientation and frequency, so both colour and texture identify a class.
TEXTURES: Dict[int, Texture] = {
    SKY: _texture((110, 170, 235), lambda rng, yy, xx: 30.0 * (1.0 - yy / yy.shape[0])),
    WALL: _texture((205, 190, 160), lambda rng, yy, xx: 12.0 * np.sign(np.sin(xx * np.pi / 5.0))),
    ROAD: _texture((85, 85, 90), lambda rng, yy, xx: rng.normal(0.0, 14.0, size=yy.shape)),
    FLOOR: _texture((150, 105, 60), lambda rng, yy, xx: 25.0 * ((yy // 4) % 3 == 0)),
    BUILDING: _texture((150, 70, 60),
                       lambda rng, yy, xx: -60.0 * (((yy // 6) % 2 == 0) & ((xx // 6) % 2 == 0))),
    TREE: _texture((40, 130, 40),
                   lambda rng, yy, xx: 35.0 * _smooth_noise(rng, yy.shape[0], yy.shape[1], 6)),
    PERSON: _texture((200, 60, 170), lambda rng, yy, xx: 15.0 * np.cos(yy * np.pi / 9.0)),
    CAR: _texture((235, 185, 25), lambda rng, yy, xx: -40.0 * ((yy // 3) % 4 == 0)),
}


def _ellipse(yy, xx, cy, cx, ry, rx) -> np.ndarray:
  return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _rect(yy, xx, y0, x0, y1, x1) -> np.ndarray:
  return (yy >= y0) & (yy < y1) & (xx >= x0) & (xx < x1)


def _image_size(rng: np.random.Generator, short_side: Tuple[int, int], max_aspect: float) -> Tuple[int, int]:
  short = int(rng.integers(short_side[0], short_side[1] + 1))
  aspect = float(np.exp(rng.uniform(-np.log(max_aspect), np.log(max_aspect))))
  long_side = int(round(short * max(aspect, 1.0 / aspect)))
  return (short, long_side) if aspect >= 1.0 else (long_side, short)


def _layout(rng: np.random.Generator, h: int, w: int) -> Tuple[List[Tuple[int, np.ndarray]], str]:
  """The scene as a back-to-front list of (raw class, mask), and the scene name."""
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  horizon = rng.uniform(0.35, 0.6) * h
  outdoor = bool(rng.integers(2))
  top, bottom = (SKY, ROAD) if outdoor else (WALL, FLOOR)
  layers = [(top, yy < horizon), (bottom, yy >= horizon)]
  size = float(min(h, w))
  if outdoor:
    for _ in range(rng.integers(1, 4)):  # buildings standing on the horizon
      bw, bh = rng.uniform(0.15, 0.35) * w, rng.uniform(0.2, 0.5) * h
      x0 = rng.uniform(-0.1 * w, w - 0.5 * bw)
      layers.append((BUILDING, _rect(yy, xx, horizon - bh, x0, horizon + 0.02 * h, x0 + bw)))
    for _ in range(rng.integers(0, 3)):  # trees: a canopy on a trunk
      cx, r = rng.uniform(0, w), rng.uniform(0.08, 0.16) * size
      base = horizon + rng.uniform(0.0, 0.1) * h
      trunk = _rect(yy, xx, base - 2.2 * r, cx - 0.15 * r, base, cx + 0.15 * r)
      layers.append((TREE, trunk | _ellipse(yy, xx, base - 2.2 * r, cx, 1.1 * r, r)))
    for _ in range(rng.integers(0, 3)):  # cars on the road: body and cabin
      cw = rng.uniform(0.15, 0.3) * size
      y1, x0 = rng.uniform(horizon + 0.2 * (h - horizon), h), rng.uniform(-0.05 * w, w - 0.5 * cw)
      body = _rect(yy, xx, y1 - 0.35 * cw, x0, y1, x0 + cw)
      layers.append((CAR, body | _rect(yy, xx, y1 - 0.6 * cw, x0 + 0.2 * cw, y1 - 0.3 * cw, x0 + 0.8 * cw)))
  for _ in range(rng.integers(0, 3)):  # people: head and body
    ph = rng.uniform(0.25, 0.5) * h
    cx, feet = rng.uniform(0, w), rng.uniform(horizon, h)
    body = _ellipse(yy, xx, feet - 0.4 * ph, cx, 0.4 * ph, 0.12 * ph)
    layers.append((PERSON, body | _ellipse(yy, xx, feet - 0.88 * ph, cx, 0.1 * ph, 0.08 * ph)))
  return layers, ("synthetic_street" if outdoor else "synthetic_room")


def make_example(rng: np.random.Generator, short_side: Tuple[int, int] = (192, 384),
                 max_aspect: float = 2.0) -> Tuple[np.ndarray, np.ndarray, str]:
  """One generated example: (uint8 RGB image HxWx3, uint8 raw annotation HxW, scene name)."""
  h, w = _image_size(rng, short_side, max_aspect)
  layers, scene = _layout(rng, h, w)
  yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
  image = np.zeros((h, w, 3), np.float32)
  label = np.zeros((h, w), np.uint8)
  textures = {cls: TEXTURES[cls](rng, yy, xx) for cls in sorted({cls for cls, _ in layers})}
  for cls, mask in layers:
    image[mask] = textures[cls][mask]
    label[mask] = cls
  # 0 = "other": a 1-2 px band where the class changes, as along ADE20K's object outlines ...
  edge = np.zeros((h, w), bool)
  edge[:, 1:] |= label[:, 1:] != label[:, :-1]
  edge[1:, :] |= label[1:, :] != label[:-1, :]
  edge[:, :-1] |= edge[:, 1:] & (rng.random((h, w - 1)) < 0.5)
  label[edge] = 0
  # ... and sometimes an unlabelled clutter object of a random colour.
  if rng.random() < 0.5:
    clutter = _ellipse(yy, xx, rng.uniform(0, h), rng.uniform(0, w), *(rng.uniform(0.04, 0.1, 2) * min(h, w)))
    image[clutter] = rng.uniform(0, 255, size=3)
    label[clutter] = 0
  image += rng.normal(0.0, _NOISE_STD, size=image.shape)
  return np.clip(np.round(image), 0, 255).astype(np.uint8), label, scene


def _encode(array: np.ndarray, fmt: str) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **({"quality": _JPEG_QUALITY} if fmt == "JPEG" else {}))
  return buffer.getvalue()


def _object_info(pixels: np.ndarray, images: Dict[str, np.ndarray]) -> str:
  """``objectInfo150.txt`` in the official format, with this dataset's statistics."""
  lines = ["Idx\tRatio\tTrain\tVal\tName"]
  ratio = pixels / max(pixels.sum(), 1)
  for idx, name in enumerate(ade20k_classes.CLASS_NAMES, start=1):
    lines.append(f"{idx}\t{ratio[idx]:.4f}\t{images['training'][idx]}\t{images['validation'][idx]}\t{name}")
  return "\n".join(lines) + "\n"


def make_synthetic_ade20k(out_dir: str, num_train: int = 300, num_val: int = 60, seed: int = 0,
                          layout: str = "folder", short_side: Tuple[int, int] = (192, 384),
                          max_aspect: float = 2.0) -> str:
  """Writes the dataset under ``out_dir`` and returns ``out_dir`` (the builder's manual dir).

  Args:
    out_dir: where ``ADEChallengeData2016/`` and/or ``ADEChallengeData2016.zip`` go.
    num_train: number of training images.
    num_val: number of validation images.
    seed: the dataset is a deterministic function of the arguments.
    layout: ``"folder"`` (the extracted release), ``"zip"`` (the official zip only) or ``"both"``.
    short_side: inclusive range of the images' shorter side in pixels.
    max_aspect: aspect ratios (long/short) are drawn log-uniformly up to this, portrait or landscape.
  """
  if layout not in ("folder", "zip", "both"):
    raise ValueError(f"layout must be 'folder', 'zip' or 'both', got {layout!r}")
  if num_train < 1 or num_val < 1:
    raise ValueError(f"need at least one image per split, got num_train={num_train} num_val={num_val}")
  if not 1 <= short_side[0] <= short_side[1] or max_aspect < 1.0:
    raise ValueError(f"need 1 <= short_side[0] <= short_side[1] and max_aspect >= 1, got "
                     f"short_side={short_side} max_aspect={max_aspect}")
  os.makedirs(out_dir, exist_ok=True)
  root = ade20k_builder.ROOT
  archive = (zipfile.ZipFile(os.path.join(out_dir, ade20k_builder.ZIP_NAME), "w", zipfile.ZIP_STORED)
             if layout in ("zip", "both") else None)

  def write(relpath: str, data: bytes) -> None:
    if layout in ("folder", "both"):
      path = os.path.join(out_dir, root, relpath)
      os.makedirs(os.path.dirname(path), exist_ok=True)
      with open(path, "wb") as f:
        f.write(data)
    if archive is not None:
      archive.writestr(f"{root}/{relpath}", data)

  pixels = np.zeros(256, np.int64)
  images_with = {folder: np.zeros(256, np.int64) for folder, _ in _SPLITS}
  scenes = []
  for split_code, ((folder, prefix), count) in enumerate(zip(_SPLITS, (num_train, num_val))):
    for index in range(1, count + 1):
      rng = np.random.default_rng([seed, split_code, index])
      image, label, scene = make_example(rng, short_side, max_aspect)
      stem = f"{prefix}_{index:08d}"
      write(f"images/{folder}/{stem}.jpg", _encode(image, "JPEG"))
      write(f"annotations/{folder}/{stem}.png", _encode(label, "PNG"))
      counts = np.bincount(label.ravel(), minlength=256)
      pixels += counts
      images_with[folder] += counts > 0
      scenes.append(f"{stem} {scene}")
  write("objectInfo150.txt", _object_info(pixels, images_with).encode())
  write("sceneCategories.txt", ("\n".join(scenes) + "\n").encode())
  if archive is not None:
    archive.close()
  return out_dir


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out_dir", required=True, help="the manual dir to write to")
  parser.add_argument("--num_train", type=int, default=300)
  parser.add_argument("--num_val", type=int, default=60)
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--layout", choices=("folder", "zip", "both"), default="folder")
  args = parser.parse_args(argv)
  make_synthetic_ade20k(args.out_dir, args.num_train, args.num_val, args.seed, args.layout)
  print(f"wrote {args.num_train} train / {args.num_val} val images to {args.out_dir}; build the dataset "
        f"with\n  {ade20k_builder.prepare_command('DATA_DIR', args.out_dir)}")


if __name__ == "__main__":
  main()
