"""Pictures of segmentation results: rows of ``image | ground truth | prediction`` saved as one PNG."""

import os
from typing import Optional, Sequence

import numpy as np
from PIL import Image

from backbones.preprocess import denormalize_image
from projects.segmentation.data import ade20k_classes

IGNORE_COLOR = (0, 0, 0)
_GAP = 4


def palette(num_classes: int = ade20k_classes.NUM_CLASSES) -> np.ndarray:
  """(num_classes, 3) uint8 colours: mmseg's ADE20K palette, extended deterministically if needed."""
  colors = np.asarray(ade20k_classes.PALETTE, np.uint8)
  if num_classes > len(colors):
    extra = np.random.default_rng(0).integers(0, 256, size=(num_classes - len(colors), 3), dtype=np.uint8)
    colors = np.concatenate([colors, extra])
  return colors[:num_classes]


def colorize(label: np.ndarray, colors: Optional[np.ndarray] = None) -> np.ndarray:
  """(H, W) class indices -> (H, W, 3) uint8 RGB; negative (ignored) pixels are black."""
  label = np.asarray(label)
  colors = palette() if colors is None else np.asarray(colors, np.uint8)
  if label.size and label.max() >= len(colors):
    raise ValueError(f"label value {int(label.max())} has no colour (palette of {len(colors)} classes)")
  rgb = colors[np.clip(label, 0, len(colors) - 1)]
  rgb[label < 0] = IGNORE_COLOR
  return rgb


def comparison_panel(images: np.ndarray, labels: np.ndarray, predictions: np.ndarray,
                     image_sizes: Optional[np.ndarray] = None,
                     colors: Optional[np.ndarray] = None) -> np.ndarray:
  """Stacks one ``image | ground truth | prediction`` row per example into a uint8 (H', W', 3) panel.

  Args:
    images: (B, H, W, 3) normalised inputs.
    labels: (B, H, W) ground truth (-1 = ignore, drawn black).
    predictions: (B, H, W) predicted classes.
    image_sizes: optional (B, 2) valid (h, w) of each example; the bucket padding is cropped away.
    colors: the class palette (default: ADE20K's).
  """
  images, labels, predictions = np.asarray(images), np.asarray(labels), np.asarray(predictions)
  if not images.shape[:3] == labels.shape == predictions.shape:
    raise ValueError(f"shapes differ: images {images.shape}, labels {labels.shape}, "
                     f"predictions {predictions.shape}")
  rows = []
  for i in range(images.shape[0]):
    h, w = (images.shape[1:3] if image_sizes is None else (int(image_sizes[i][0]), int(image_sizes[i][1])))
    gap = np.full((h, _GAP, 3), 255, np.uint8)
    rows.append(np.concatenate([denormalize_image(images[i, :h, :w]), gap, colorize(labels[i, :h, :w], colors), gap,
                                colorize(predictions[i, :h, :w], colors)], axis=1))
  width = max(r.shape[1] for r in rows)
  padded = []
  for r in rows:
    padded.append(np.pad(r, ((0, _GAP), (0, width - r.shape[1]), (0, 0)), constant_values=255))
  return np.concatenate(padded, axis=0)


def save_png(path: str, panel: np.ndarray) -> str:
  """Writes ``panel`` (H, W, 3) uint8 to ``path`` (folders created); returns the path."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(panel, np.uint8)).save(path)
  return path


def overlay_with_legend(image: np.ndarray, label: np.ndarray, class_names: Sequence[str],
                        colors: Optional[np.ndarray] = None, alpha: float = 0.5,
                        max_entries: int = 20) -> np.ndarray:
  """``image`` (H, W, 3) uint8 blended with the colours of ``label`` (H, W), and below it a legend of the
  classes present (largest first; at most ``max_entries``, then "+N more")."""
  from PIL import ImageDraw  # pylint: disable=g-import-not-at-top
  image, label = np.asarray(image, np.uint8), np.asarray(label)
  if image.shape[:2] != label.shape:
    raise ValueError(f"image {image.shape[:2]} and label {label.shape} sizes differ")
  colors = palette(len(class_names)) if colors is None else np.asarray(colors, np.uint8)
  blended = np.round(image * (1.0 - alpha) + colorize(label, colors) * alpha).astype(np.uint8)
  ids, counts = np.unique(label[label >= 0], return_counts=True)
  order = [int(c) for c in ids[np.argsort(-counts, kind="stable")]]
  shown, hidden = order[:max_entries], len(order) - max_entries
  row_h, width = 14, image.shape[1]
  entries = [(f"{class_names[c]} ({100.0 * counts[list(ids).index(c)] / label.size:.1f}%)",
              tuple(int(v) for v in colors[c])) for c in shown]
  if hidden > 0:
    entries.append((f"+{hidden} more", (255, 255, 255)))
  per_row = max(1, width // 160)
  rows = -(-len(entries) // per_row)
  legend = Image.new("RGB", (width, rows * row_h + 4), (0, 0, 0))
  draw = ImageDraw.Draw(legend)
  for i, (text, colour) in enumerate(entries):
    x, y = (i % per_row) * 160 + 2, (i // per_row) * row_h + 2
    draw.rectangle([x, y + 1, x + 10, y + 11], fill=colour)
    draw.text((x + 14, y), text, fill=(255, 255, 255))
  return np.concatenate([blended, np.asarray(legend)], axis=0)
