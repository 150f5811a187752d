"""PNGs of images with detections (coloured by class, with scores) and ground truth (white) drawn on them.

``draw_detections`` works on any uint8 image (instance masks, when given, are blended in the class colour
under the boxes); ``draw_batch`` takes a detection batch (normalised, padded ``inputs``) and the model's
``predict`` output (boxes in original-image pixels; Mask R-CNN's ``mask_probs`` are pasted with the boxes in the
network-input frame) and draws every real example in the network-input frame cropped to the valid region;
``save_batch_pngs`` writes those as one PNG each and
``tile_images`` puts several side by side (the detection job's ``detections.png``).
"""

import colorsys
import os
from typing import List, Mapping, Optional, Sequence, Tuple

import numpy as np
from PIL import Image, ImageDraw

from backbones.preprocess import denormalize_image
from projects.detection import mask_paste

GT_COLOUR = (255, 255, 255)
MASK_ALPHA = 0.5


def class_colour(label: int) -> tuple:
  """A saturated colour per class (golden-ratio hue steps, so neighbouring labels differ)."""
  r, g, b = colorsys.hsv_to_rgb((label * 0.618033988749895) % 1.0, 0.85, 1.0)
  return int(r * 255), int(g * 255), int(b * 255)


def denormalize(inputs: np.ndarray, image_size: Sequence[int]) -> np.ndarray:
  """A normalised ``(H, W, 3)`` network input back to uint8 RGB, cropped to its valid ``(h, w)``."""
  return denormalize_image(inputs[:int(image_size[0]), :int(image_size[1])])


def overlay_masks(image: np.ndarray, masks: np.ndarray, labels: np.ndarray,
                  alpha: float = MASK_ALPHA) -> np.ndarray:
  """``image`` (uint8 RGB) with each ``(K, h, w)`` binary mask blended in its label's colour (later on top)."""
  out = np.asarray(image, np.float32).copy()
  for mask, label in zip(masks, labels):
    on = np.asarray(mask, bool)
    out[on] = (1.0 - alpha) * out[on] + alpha * np.asarray(class_colour(int(label)), np.float32)
  return np.clip(np.round(out), 0, 255).astype(np.uint8)


def draw_detections(image: np.ndarray, boxes: np.ndarray, labels: np.ndarray,
                    scores: Optional[np.ndarray] = None, class_names: Optional[Sequence[str]] = None,
                    gt_boxes: Optional[np.ndarray] = None, score_threshold: float = 0.3,
                    masks: Optional[np.ndarray] = None) -> np.ndarray:
  """Returns a copy of ``image`` (uint8 RGB) with boxes (and instance masks) drawn.

  Args:
    image: ``(h, w, 3)`` uint8.
    boxes: ``(K, 4)`` xyxy detections in the pixels of ``image``.
    labels: ``(K,)`` contiguous labels; entries < 0 are skipped.
    scores: ``(K,)`` scores, drawn next to the names; detections below ``score_threshold`` are skipped.
    class_names: names of the contiguous labels (default: the label number).
    gt_boxes: ``(G, 4)`` ground-truth xyxy boxes, drawn in white underneath.
    score_threshold: minimum score drawn.
    masks: ``(K, h, w)`` binary masks of the detections, blended in the class colours (``overlay_masks``).
  """
  scores = np.ones(len(labels), np.float32) if scores is None else np.asarray(scores)
  order = np.argsort(scores, kind="stable")  # highest score drawn last, on top
  if masks is not None:
    shown = [k for k in order if int(labels[k]) >= 0 and float(scores[k]) >= score_threshold]
    image = overlay_masks(image, np.asarray(masks)[shown], np.asarray(labels)[shown])
  canvas = Image.fromarray(np.asarray(image, np.uint8)).convert("RGB")
  draw = ImageDraw.Draw(canvas)
  for box in ([] if gt_boxes is None else np.asarray(gt_boxes, np.float32)):
    draw.rectangle([float(v) for v in box], outline=GT_COLOUR, width=1)
  for k in order:
    label, score = int(labels[k]), float(scores[k])
    if label < 0 or score < score_threshold:
      continue
    colour = class_colour(label)
    x0, y0, x1, y1 = (float(v) for v in boxes[k])
    draw.rectangle([x0, y0, x1, y1], outline=colour, width=2)
    name = class_names[label] if class_names is not None else str(label)
    draw.text((x0 + 2, max(y0 - 11, 0)), f"{name} {score:.2f}", fill=colour)
  return np.asarray(canvas)


def save_png(path: str, image: np.ndarray) -> str:
  """Writes a uint8 RGB image as PNG (creating the folder); returns ``path``."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(np.asarray(image, np.uint8)).save(path, format="PNG")
  return path


def draw_batch(batch: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
               class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.3,
               max_images: Optional[int] = None, mask_threshold: float = 0.5) -> List[Tuple[int, np.ndarray]]:
  """Ground truth and predictions drawn on each real example of a detection batch, in the input frame.

  Args:
    batch: a numpy detection batch (``inputs``, ``label`` with ``boxes``/``labels``/``image/id``/
      ``image_size``/``scale``, ``batch_mask``).
    predictions: numpy ``predict`` output for that batch: ``boxes`` in original pixels, ``scores``,
      ``labels``, ``valid``; optionally ``mask_probs`` (B, K, S, S), pasted with the boxes and blended in.
    class_names: names of the contiguous labels.
    score_threshold: minimum score drawn.
    max_images: stop after this many examples.
    mask_threshold: binarisation threshold of the pasted mask probabilities.
  Returns:
    ``(image id, uint8 RGB image cropped to the valid region)`` per drawn example.
  """
  label = batch["label"]
  drawn = []
  for i in np.flatnonzero(np.asarray(batch["batch_mask"]) > 0)[:max_images]:
    image = denormalize(batch["inputs"][i], label["image_size"][i])
    scale_xy = np.tile(np.asarray(label["scale"][i], np.float32)[::-1], 2)  # (w, h, w, h)
    valid = np.asarray(predictions["valid"][i]).astype(bool)
    boxes = np.asarray(predictions["boxes"][i])[valid] * scale_xy
    labels = np.asarray(predictions["labels"][i])[valid]
    scores = np.asarray(predictions["scores"][i])[valid]
    gt_boxes = np.asarray(label["boxes"][i])[np.asarray(label["labels"][i]) >= 0]
    masks = None
    if "mask_probs" in predictions:
      masks = mask_paste.paste_masks_numpy(np.asarray(predictions["mask_probs"][i])[valid], boxes,
                                           image.shape[:2], mask_threshold)
    drawn.append((int(label["image/id"][i]), draw_detections(image, boxes, labels, scores, class_names,
                                                             gt_boxes=gt_boxes, score_threshold=score_threshold,
                                                             masks=masks)))
  return drawn


def tile_images(images: Sequence[np.ndarray], gap: int = 4) -> np.ndarray:
  """Places uint8 RGB images of any sizes side by side (top-aligned, black background)."""
  if not images:
    raise ValueError("tile_images needs at least one image")
  height = max(image.shape[0] for image in images)
  width = sum(image.shape[1] for image in images) + gap * (len(images) - 1)
  canvas = np.zeros((height, width, 3), np.uint8)
  x = 0
  for image in images:
    canvas[:image.shape[0], x:x + image.shape[1]] = image
    x += image.shape[1] + gap
  return canvas


def save_batch_pngs(out_dir: str, batch: Mapping[str, np.ndarray], predictions: Mapping[str, np.ndarray],
                    class_names: Optional[Sequence[str]] = None, score_threshold: float = 0.3,
                    max_images: Optional[int] = None, mask_threshold: float = 0.5) -> List[str]:
  """One PNG per real example of a detection batch (``draw_batch``), named ``<image id>.png``.

  Returns:
    The written paths.
  """
  return [save_png(os.path.join(out_dir, f"{image_id}.png"), canvas)
          for image_id, canvas in draw_batch(batch, predictions, class_names, score_threshold, max_images,
                                             mask_threshold)]
