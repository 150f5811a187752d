"""COCO instance segmentations as compact RLE strings: from annotations (builder side) and back to bitmaps.

The ``coco_tree`` builder stores each instance's mask as the ``counts`` string of its *compressed* COCO RLE at
the original image size (a few hundred bytes per instance, against ``h * w`` for a bitmap); polygons,
uncompressed RLE (COCO's ``iscrowd`` regions) and compressed RLE all end up in that one form. An annotation
without a segmentation is stored as the empty string (detection-only datasets still build; a mask job refuses
them, see ``input_pipeline``). ``decode_masks`` turns a list of those strings back into ``(h, w, N)`` uint8.

pycocotools only (no TensorFlow), so the evaluator and tools can import it cheaply.
"""

from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools import mask as mask_util


def segmentation_to_rle(annotation: Mapping[str, Any], height: int, width: int, where: str) -> str:
  """The compressed RLE ``counts`` string of ``annotation["segmentation"]`` on an ``height x width`` image.

  Args:
    annotation: a COCO annotation; ``segmentation`` is a list of polygons ``[x0, y0, x1, y1, ...]``, an
      uncompressed RLE ``{"size": [h, w], "counts": [int, ...]}`` or a compressed one (``counts`` a string).
    height: the image height.
    width: the image width.
    where: names the annotation in error messages (file and annotation id).

  Returns:
    The counts string ("" when the annotation has no segmentation).

  Raises:
    ValueError: a polygon with fewer than 3 points or an odd number of coordinates, an RLE whose ``size`` is
      not the image's, or a segmentation of another type.
  """
  segmentation = annotation.get("segmentation")
  if segmentation is None or (isinstance(segmentation, list) and not segmentation):
    return ""
  if isinstance(segmentation, list):
    for polygon in segmentation:
      if (not isinstance(polygon, (list, tuple)) or len(polygon) < 6 or len(polygon) % 2
          or not all(isinstance(v, (int, float)) and np.isfinite(v) for v in polygon)):
        raise ValueError(f"{where} has a malformed polygon (expected [x0, y0, x1, y1, ...] with at least 3 "
                         f"points): {str(polygon)[:80]}")
    rle = mask_util.merge(mask_util.frPyObjects([list(map(float, p)) for p in segmentation], height, width))
  elif isinstance(segmentation, dict) and "counts" in segmentation and "size" in segmentation:
    if [int(v) for v in segmentation["size"]] != [height, width]:
      raise ValueError(f"{where} has an RLE of size {segmentation['size']} on an image of size "
                       f"[{height}, {width}]")
    counts = segmentation["counts"]
    if isinstance(counts, list):
      if sum(counts) != height * width or any(c < 0 for c in counts):
        raise ValueError(f"{where} has an uncompressed RLE whose counts do not cover the {height}x{width} "
                         "image")
      rle = mask_util.frPyObjects(segmentation, height, width)
    elif isinstance(counts, (str, bytes)):
      rle = {"size": [height, width], "counts": counts.encode() if isinstance(counts, str) else counts}
    else:
      raise ValueError(f"{where} has RLE counts of type {type(counts).__name__} (expected a list or a string)")
  else:
    raise ValueError(f"{where} has a segmentation that is neither polygons nor RLE: {str(segmentation)[:80]}")
  counts = rle["counts"]
  return counts.decode("ascii") if isinstance(counts, bytes) else str(counts)


def decode_masks(counts: Sequence[Any], height: int, width: int) -> np.ndarray:
  """Compressed RLE counts strings (or bytes) of one image -> ``(height, width, N)`` uint8 masks in {0, 1}.

  An empty string decodes to an all-zero mask.
  """
  height, width = int(height), int(width)
  masks = np.zeros((height, width, len(counts)), np.uint8)
  for k, count in enumerate(counts):
    count = count.encode() if isinstance(count, str) else bytes(count)
    if count:
      masks[:, :, k] = mask_util.decode({"size": [height, width], "counts": count})
  return masks


def encode_masks(masks: np.ndarray) -> list:
  """``(N, h, w)`` binary masks -> COCO compressed RLE dicts with ``counts`` as ``str`` (JSON-ready)."""
  masks = np.asarray(masks, np.uint8)
  if masks.ndim != 3:
    raise ValueError(f"encode_masks expects (N, h, w) masks, got shape {masks.shape}")
  if not len(masks):
    return []
  rles = mask_util.encode(np.asfortranarray(masks.transpose(1, 2, 0)))
  return [{"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")} for rle in rles]
