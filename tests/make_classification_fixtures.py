"""Writes tests/fixtures/classification/official_eval.npz: the official evaluation transform's output on a few
generated images of different sizes and aspect ratios (the reference of test_classification_eval_transform.py).

    python tests/make_classification_fixtures.py

The official CrossFormer evaluation is ``transforms.Resize(256, interpolation=BICUBIC)`` +
``transforms.CenterCrop(224)`` + ``ToTensor()`` + ``Normalize(IMAGENET_DEFAULT_MEAN, IMAGENET_DEFAULT_STD)``
on the PIL image (``data/build.py``). torchvision is not installed here, so ``official_crop`` below restates
what torchvision's functional code does on a PIL image, written from reading it
(``transforms/functional.py``: ``_compute_resized_output_size``, ``resize`` -> ``PIL.Image.resize``,
``center_crop`` with its zero padding and ``int(round(...))`` offsets), independently of the library's
``projects.classification.data.eval_transform``. Images come from ``make_image(seed, width, height)`` (flat
colour regions with edges, so that the resampling kernel matters), so only the small crops are stored.
"""

import pathlib

import numpy as np
from PIL import Image

OUT = pathlib.Path(__file__).resolve().parent / "fixtures" / "classification" / "official_eval.npz"
# (seed, width, height): landscape, portrait, odd sizes (half-pixel crop offsets), square, smaller than the
# crop (upsampling), and a width that is already the resize target.
CASES = ((0, 500, 333), (1, 333, 500), (2, 301, 257), (3, 256, 256), (4, 200, 150), (5, 257, 640))
RESIZE, CROP = 256, 224


def make_image(seed: int, width: int, height: int) -> Image.Image:
  """A deterministic RGB test image: flat colour regions (rectangles, a disc, a band of stripes), so that the
  resampling kernel shows at every edge while the stored crops stay small (they compress well)."""
  rng = np.random.default_rng(seed)
  y, x = np.mgrid[:height, :width]
  image = np.empty((height, width, 3), np.uint8)
  image[:] = rng.integers(0, 256, 3)
  for _ in range(3):
    x0, y0 = rng.integers(0, width), rng.integers(0, height)
    image[y0:y0 + int(rng.integers(10, height)), x0:x0 + int(rng.integers(10, width))] = rng.integers(0, 256, 3)
  cy, cx, r = height * rng.uniform(0.3, 0.7), width * rng.uniform(0.3, 0.7), min(width, height) * 0.25
  image[(y - cy) ** 2 + (x - cx) ** 2 < r ** 2] = rng.integers(0, 256, 3)
  band = (y > height * 0.6) & (y < height * 0.75) & ((x // 3) % 2 == 0)
  image[band] = rng.integers(0, 256, 3)
  return Image.fromarray(image)


def official_crop(image: Image.Image, size: int = RESIZE, crop: int = CROP) -> np.ndarray:
  """torchvision ``Resize(size, BICUBIC)`` + ``CenterCrop(crop)`` on a PIL image, as uint8 (crop, crop, 3)."""
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  new_short, new_long = size, int(size * long / short)
  new_w, new_h = (new_short, new_long) if w <= h else (new_long, new_short)
  image = image.resize((new_w, new_h), Image.BICUBIC)
  if crop > new_w or crop > new_h:  # torchvision pads with zeros first
    pad = [(crop - new_w) // 2 if crop > new_w else 0, (crop - new_h) // 2 if crop > new_h else 0,
           (crop - new_w + 1) // 2 if crop > new_w else 0, (crop - new_h + 1) // 2 if crop > new_h else 0]
    canvas = Image.new("RGB", (new_w + pad[0] + pad[2], new_h + pad[1] + pad[3]))
    canvas.paste(image, (pad[0], pad[1]))
    image, (new_w, new_h) = canvas, canvas.size
  top = int(round((new_h - crop) / 2.0))
  left = int(round((new_w - crop) / 2.0))
  return np.asarray(image.crop((left, top, left + crop, top + crop)), np.uint8)


def official_tensor(crop: np.ndarray) -> np.ndarray:
  """``ToTensor`` + ``Normalize`` in float32 as torch computes them (channels last here)."""
  mean = np.asarray((0.485, 0.456, 0.406), np.float32)
  std = np.asarray((0.229, 0.224, 0.225), np.float32)
  return (crop.astype(np.float32) / np.float32(255.0) - mean) / std


def main() -> None:
  OUT.parent.mkdir(parents=True, exist_ok=True)
  arrays = {f"crop_{seed}_{w}x{h}": official_crop(make_image(seed, w, h)) for seed, w, h in CASES}
  np.savez_compressed(OUT, **arrays)
  print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {sorted(arrays)}")


if __name__ == "__main__":
  main()
