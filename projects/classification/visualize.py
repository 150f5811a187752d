"""Pictures of classification results: a grid of images captioned with the truth and the top predictions."""

from typing import Optional, Sequence

import numpy as np
from PIL import Image, ImageDraw

from backbones.preprocess import denormalize_image

_CAPTION_LINES = 2
_LINE = 12
_GAP = 4
CORRECT, WRONG = (30, 140, 40), (190, 30, 30)


def _short(name: str, width: int) -> str:
  limit = max(4, width // 6)
  return name if len(name) <= limit else name[:limit - 1] + "~"


def captioned(image: np.ndarray, lines: Sequence[str], color: Sequence[int], tile: int) -> np.ndarray:
  """One tile: ``image`` (H, W, 3 uint8) resized to ``tile`` x ``tile`` above its caption ``lines``."""
  picture = Image.fromarray(np.asarray(image, np.uint8)).resize((tile, tile), Image.BICUBIC)
  canvas = Image.new("RGB", (tile, tile + _LINE * len(lines) + 2), (255, 255, 255))
  canvas.paste(picture, (0, 0))
  draw = ImageDraw.Draw(canvas)
  for i, line in enumerate(lines):
    draw.text((2, tile + 1 + i * _LINE), _short(line, tile), fill=tuple(int(c) for c in color))
  return np.asarray(canvas)


def prediction_grid(images: np.ndarray, labels: Sequence[Optional[int]], top: np.ndarray,
                    class_names: Sequence[str], tile: int = 128, columns: int = 8,
                    normalized: bool = True) -> np.ndarray:
  """(H, W, 3) uint8 grid: each image with ``true: <name>`` (when known) and ``pred: <top-1 name>``, green
  when right, red when wrong (black without a label). ``images`` are normalised model inputs unless
  ``normalized`` is False; ``top`` holds each image's predicted class indices, best first."""
  tiles = []
  for image, label, best in zip(images, labels, top):
    pixels = denormalize_image(np.asarray(image)) if normalized else np.asarray(image, np.uint8)
    predicted = int(np.asarray(best).reshape(-1)[0])
    lines = [f"pred: {class_names[predicted]}"]
    color = (0, 0, 0)
    if label is not None and int(label) >= 0:
      lines.insert(0, f"true: {class_names[int(label)]}")
      color = CORRECT if predicted == int(label) else WRONG
    lines = (lines + [""] * _CAPTION_LINES)[:_CAPTION_LINES]
    tiles.append(captioned(pixels, lines, color, tile))
  if not tiles:
    raise ValueError("prediction_grid needs at least one image")
  columns = min(columns, len(tiles))
  rows = -(-len(tiles) // columns)
  height, width = tiles[0].shape[:2]
  grid = np.full((rows * (height + _GAP) - _GAP, columns * (width + _GAP) - _GAP, 3), 255, np.uint8)
  for i, t in enumerate(tiles):
    r, c = divmod(i, columns)
    grid[r * (height + _GAP):r * (height + _GAP) + height, c * (width + _GAP):c * (width + _GAP) + width] = t
  return grid
