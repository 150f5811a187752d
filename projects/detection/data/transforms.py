"""Per-example TensorFlow ops of the mmdet 2.x COCO pipeline (sizes and flips are planned in ``schedule``).

``Resize(keep_ratio)`` -> ``RandomFlip`` -> ``Normalize`` -> ``Pad`` to the example's bucket, and the
detection targets: crowd and degenerate boxes dropped, boxes in absolute pixels of the resized (and flipped)
image, padded to ``max_boxes`` with label -1. With ``with_masks`` the kept instances' masks (RLE strings of
``coco_tree`` >= 1.1.0) are decoded and go through the same resize (nearest, as mmdet's ``BitmapMasks``),
flip and pad as the image, as ``label["masks"]`` (M, H, W) uint8, in the order of the boxes, padding instances
all zero. The output is one example of the batch format of ``docs/CONTRACTS.md``.
"""

from typing import Any, Dict, Mapping

import tensorflow as tf

from backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD
from projects.detection.data import rle


def resize_image(image: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """Bilinear resize of a uint8 image to ``size`` (h, w), as mmcv's cv2 ``INTER_LINEAR``.

  Half-pixel centres and no antialiasing (as cv2), rounded back to 0..255 integers because mmcv resizes the
  uint8 image before normalising it. Returns float32.
  """
  resized = tf.image.resize(tf.cast(image, tf.float32), size, method="bilinear", antialias=False)
  return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def normalize_image(image: tf.Tensor) -> tf.Tensor:
  """``(image - mean) / std`` per RGB channel."""
  return (image - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def kept_targets(objects: Mapping[str, tf.Tensor], orig_size: tf.Tensor) -> tf.Tensor:
  """Boolean ``[N]``: the annotations kept as training targets.

  Drops crowd boxes (mmdet puts them in ``gt_bboxes_ignore``, unused by RetinaNet and Mask R-CNN) and
  degenerate boxes (mmdet's ``w < 1 or h < 1 or area <= 0``, measured on the clipped box in original pixels).
  """
  bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])  # ymin, xmin, ymax, xmax in [0, 1]
  orig = tf.cast(orig_size, tf.float32)
  height_px = (bbox[:, 2] - bbox[:, 0]) * orig[0]
  width_px = (bbox[:, 3] - bbox[:, 1]) * orig[1]
  return ((~objects["is_crowd"]) & (width_px >= 1.0) & (height_px >= 1.0)
          & (tf.cast(objects["area"], tf.float32) > 0.0))


def training_boxes(objects: Mapping[str, tf.Tensor], orig_size: tf.Tensor, resized_size: tf.Tensor):
  """Targets kept for training (``kept_targets``), as ``(boxes [N, 4] xyxy in resized pixels, labels [N])``."""
  bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])  # ymin, xmin, ymax, xmax in [0, 1]
  keep = kept_targets(objects, orig_size)
  size = tf.cast(resized_size, tf.float32)
  boxes = tf.stack([bbox[:, 1] * size[1], bbox[:, 0] * size[0], bbox[:, 3] * size[1], bbox[:, 2] * size[0]],
                   axis=-1)
  return tf.boolean_mask(boxes, keep), tf.boolean_mask(tf.cast(objects["label"], tf.int32), keep)


def flip_boxes(boxes: tf.Tensor, width: tf.Tensor) -> tf.Tensor:
  """Horizontal flip of xyxy boxes in an image of ``width`` pixels (mmdet 2.x: ``x' = w - x``)."""
  width = tf.cast(width, boxes.dtype)
  return tf.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], axis=-1)


def pad_targets(boxes: tf.Tensor, labels: tf.Tensor, max_boxes: int):
  """Keeps the first ``max_boxes`` targets and pads to exactly that many (boxes 0, labels -1)."""
  boxes, labels = boxes[:max_boxes], labels[:max_boxes]
  pad = max_boxes - tf.shape(labels)[0]
  boxes = tf.pad(boxes, [[0, pad], [0, 0]])
  labels = tf.pad(labels, [[0, pad]], constant_values=-1)
  return tf.ensure_shape(boxes, [max_boxes, 4]), tf.ensure_shape(labels, [max_boxes])


def decode_instance_masks(counts: tf.Tensor, orig_size: tf.Tensor) -> tf.Tensor:
  """RLE counts strings ``[N]`` -> ``(h, w, N + 1)`` uint8 masks at the original size (pycocotools on the host).

  The last mask is an all-zero extra: TF's image ops need at least one channel, also for an image without
  instances; ``pad_masks`` drops it.
  """
  masks = tf.numpy_function(
      lambda c, size: rle.decode_masks(list(c) + [b""], int(size[0]), int(size[1])),
      [counts, orig_size], tf.uint8, stateful=False)
  return tf.ensure_shape(masks, [None, None, None])


def resize_masks(masks: tf.Tensor, size: tf.Tensor) -> tf.Tensor:
  """Nearest-neighbour resize of ``(h, w, N)`` masks to ``size`` (h, w), as cv2's ``INTER_NEAREST``.

  cv2 (mmcv's ``imresize(..., interpolation="nearest")``) reads source pixel ``floor(dst * src / dst_size)``:
  TF's legacy nearest resize without half-pixel centres.
  """
  resized = tf.raw_ops.ResizeNearestNeighbor(images=masks[None], size=tf.cast(size, tf.int32),
                                             align_corners=False, half_pixel_centers=False)
  return resized[0]


def pad_masks(masks: tf.Tensor, num: tf.Tensor, max_boxes: int) -> tf.Tensor:
  """``(H, W, >= num)`` -> ``(max_boxes, H, W)``: the first ``min(num, max_boxes)`` masks, then all-zero ones."""
  masks = tf.transpose(masks[:, :, :tf.minimum(num, max_boxes)], [2, 0, 1])
  pad = max_boxes - tf.shape(masks)[0]
  return tf.pad(masks, [[0, pad], [0, 0], [0, 0]])


def transform_example(example: Mapping[str, Any], *, flip: tf.Tensor, resized_size: tf.Tensor,
                      bucket_size: tf.Tensor, valid: tf.Tensor, max_boxes: int,
                      with_masks: bool = False) -> Dict[str, Any]:
  """One decoded tfds example -> one example of the detection batch format.

  Args:
    example: features of ``coco_tree`` / ``coco/2017`` (``image`` uint8, ``image/id``, ``objects``).
    flip: whether to flip horizontally.
    resized_size: int32 (h, w) after the keep-ratio resize (``schedule.rescale_sizes``).
    bucket_size: int32 (H, W) padded shape; must contain ``resized_size``.
    valid: False for filler examples (targets emptied, ``image/id`` -1, ``batch_mask`` 0).
    max_boxes: number of target slots M.
    with_masks: also produce ``label["masks"]`` (M, H, W) uint8 (needs ``objects/segmentation``).
  """
  image = example["image"]
  orig_size = tf.shape(image)[:2]
  resized = resize_image(image, resized_size)
  boxes, labels = training_boxes(example["objects"], orig_size, resized_size)
  resized = tf.cond(flip, lambda: tf.reverse(resized, axis=[1]), lambda: resized)
  boxes = tf.cond(flip, lambda: flip_boxes(boxes, resized_size[1]), lambda: boxes)
  padded = tf.image.pad_to_bounding_box(normalize_image(resized), 0, 0, bucket_size[0], bucket_size[1])
  num_kept = tf.where(valid, tf.shape(labels)[0], 0)
  boxes, labels = pad_targets(boxes[:num_kept], labels[:num_kept], max_boxes)
  label = {}
  if with_masks:  # decode only the kept instances that fit in the M slots
    counts = tf.boolean_mask(example["objects"]["segmentation"], kept_targets(example["objects"], orig_size))
    num_masks = tf.minimum(num_kept, max_boxes)
    masks = resize_masks(decode_instance_masks(counts[:num_masks], orig_size), resized_size)
    masks = tf.cond(flip, lambda: tf.reverse(masks, axis=[1]), lambda: masks)
    masks = tf.image.pad_to_bounding_box(masks, 0, 0, bucket_size[0], bucket_size[1])
    label["masks"] = tf.ensure_shape(pad_masks(masks, num_masks, max_boxes), [max_boxes, None, None])
  return {
      "inputs": padded,
      "label": {
          "boxes": boxes,
          "labels": labels,
          "image/id": tf.where(valid, tf.cast(example["image/id"], tf.int64), tf.constant(-1, tf.int64)),
          "image_size": tf.cast(resized_size, tf.int32),
          "orig_size": tf.cast(orig_size, tf.int32),
          "scale": tf.cast(resized_size, tf.float32) / tf.cast(orig_size, tf.float32),
          **label,
      },
      "batch_mask": tf.cast(valid, tf.float32),
  }
