"""Per-example TensorFlow ops of the mmdet 2.x COCO pipeline (sizes and flips are planned in ``schedule``).

``Resize(keep_ratio)`` -> ``RandomFlip`` -> ``Normalize`` -> ``Pad`` to the example's bucket, and the
detection targets: crowd and degenerate boxes dropped, boxes in absolute pixels of the resized (and flipped)
image, padded to ``max_boxes`` with label -1. The output is one example of the batch format of
``docs/CONTRACTS.md``.
"""

from typing import Any, Dict, Mapping

import tensorflow as tf

from backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD


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


def training_boxes(objects: Mapping[str, tf.Tensor], orig_size: tf.Tensor, resized_size: tf.Tensor):
  """Targets kept for training, as ``(boxes [N, 4] xyxy in resized pixels, labels [N])``.

  Drops crowd boxes (mmdet puts them in ``gt_bboxes_ignore``, unused by RetinaNet) and degenerate boxes
  (mmdet's ``w < 1 or h < 1 or area <= 0``, measured on the clipped box in original pixels).
  """
  bbox = tf.reshape(tf.cast(objects["bbox"], tf.float32), [-1, 4])  # ymin, xmin, ymax, xmax in [0, 1]
  orig = tf.cast(orig_size, tf.float32)
  height_px = (bbox[:, 2] - bbox[:, 0]) * orig[0]
  width_px = (bbox[:, 3] - bbox[:, 1]) * orig[1]
  keep = ((~objects["is_crowd"]) & (width_px >= 1.0) & (height_px >= 1.0)
          & (tf.cast(objects["area"], tf.float32) > 0.0))
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


def transform_example(example: Mapping[str, Any], *, flip: tf.Tensor, resized_size: tf.Tensor,
                      bucket_size: tf.Tensor, valid: tf.Tensor, max_boxes: int) -> Dict[str, Any]:
  """One decoded tfds example -> one example of the detection batch format.

  Args:
    example: features of ``coco_tree`` / ``coco/2017`` (``image`` uint8, ``image/id``, ``objects``).
    flip: whether to flip horizontally.
    resized_size: int32 (h, w) after the keep-ratio resize (``schedule.rescale_sizes``).
    bucket_size: int32 (H, W) padded shape; must contain ``resized_size``.
    valid: False for filler examples (targets emptied, ``image/id`` -1, ``batch_mask`` 0).
    max_boxes: number of target slots M.
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
  return {
      "inputs": padded,
      "label": {
          "boxes": boxes,
          "labels": labels,
          "image/id": tf.where(valid, tf.cast(example["image/id"], tf.int64), tf.constant(-1, tf.int64)),
          "image_size": tf.cast(resized_size, tf.int32),
          "orig_size": tf.cast(orig_size, tf.int32),
          "scale": tf.cast(resized_size, tf.float32) / tf.cast(orig_size, tf.float32),
      },
      "batch_mask": tf.cast(valid, tf.float32),
  }
