"""mmseg's ADE20K transforms as TensorFlow ops on one example, with stateless (seeded) randomness.

Each op follows the mmseg 0.x / mmcv transform of the same name (the official CrossFormer recipe,
``_base_/datasets/ade20k.py``): sizes are computed as ``mmcv.rescale_size`` does, the image stays on the
uint8 grid between steps (values are rounded or truncated where OpenCV/numpy would), images are resized
bilinearly (half-pixel centres, no antialiasing, like ``cv2.INTER_LINEAR``) and label maps with
``cv2.INTER_NEAREST``'s ``floor(dst * src / dst_size)`` rule. Random draws come from
``tf.random.stateless_*`` ops keyed by a ``seed`` tensor of shape (2,), so an example's augmentation is a
function of its seed only.

Images are float32 HxWx3 RGB in [0, 255] until ``normalize``; label maps are int32 HxW holding label codes
(ADE20K's raw values: 0 = ignore, k = class k - 1; ``datasets.label_codes`` maps other datasets' masks to
them) until ``reduce_zero_label`` turns them into classes 0..K-1 with -1 = ignore.
"""

from typing import Sequence, Tuple

import tensorflow as tf

from backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD

IGNORE_LABEL = -1
RAW_IGNORE = 0  # The ignore label code (ADE20K's "other" in its annotation PNGs).


def _fold(seed: tf.Tensor, index: int) -> tf.Tensor:
  return tf.random.experimental.stateless_fold_in(seed, index)


def rescale_size(height: tf.Tensor, width: tf.Tensor,
                 scale: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
  """``mmcv.rescale_size`` for a ``(long, short)`` limit: the largest keep-ratio size fitting inside it.

  The factor is ``min(max(scale) / max(h, w), min(scale) / min(h, w))`` and each side becomes
  ``int(side * factor + 0.5)``. Returns int32 ``(new_height, new_width)``.
  """
  h, w = tf.cast(height, tf.float64), tf.cast(width, tf.float64)
  a, b = (tf.cast(s, tf.float64) for s in scale)
  factor = tf.minimum(tf.maximum(a, b) / tf.maximum(h, w), tf.minimum(a, b) / tf.minimum(h, w))
  return (tf.cast(tf.floor(h * factor + 0.5), tf.int32), tf.cast(tf.floor(w * factor + 0.5), tf.int32))


def align_resize_size(height: tf.Tensor, width: tf.Tensor, scale: Sequence[int],
                      size_divisor: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """The output size of CrossFormer's ``AlignResize``: ``rescale_size`` rounded up to ``size_divisor``."""
  new_h, new_w = rescale_size(height, width, scale)
  return (-(-new_h // size_divisor) * size_divisor, -(-new_w // size_divisor) * size_divisor)


def resize_image(image: tf.Tensor, size: Sequence[tf.Tensor]) -> tf.Tensor:
  """Bilinear resize of a [0, 255] image to ``size`` (h, w), rounded to the uint8 grid like ``cv2.resize``."""
  resized = tf.image.resize(image, tf.stack(size), method="bilinear", antialias=False)
  return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


def resize_label(label: tf.Tensor, size: Sequence[tf.Tensor]) -> tf.Tensor:
  """Nearest-neighbour resize of an HxW label map with OpenCV's ``INTER_NEAREST`` sampling."""
  resized = tf.raw_ops.ResizeNearestNeighbor(images=label[None, :, :, None], size=tf.stack(size),
                                             align_corners=False, half_pixel_centers=False)
  return resized[0, :, :, 0]


def random_resize(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, scale: Sequence[int],
                  ratio_range: Sequence[float]) -> Tuple[tf.Tensor, tf.Tensor]:
  """mmseg ``Resize(img_scale=scale, ratio_range=ratio_range, keep_ratio=True)``.

  Draws ``ratio ~ U(ratio_range)``, sets the limit to ``(int(scale[0] * ratio), int(scale[1] * ratio))`` and
  rescales image and label to the largest keep-ratio size inside it.
  """
  low, high = ratio_range
  ratio = low + tf.random.stateless_uniform([], seed, dtype=tf.float64) * (high - low)
  limit = (tf.floor(scale[0] * ratio), tf.floor(scale[1] * ratio))
  shape = tf.shape(label)
  size = rescale_size(shape[0], shape[1], limit)
  return resize_image(image, size), resize_label(label, size)


def _crop_is_balanced(label: tf.Tensor, cat_max_ratio: float) -> tf.Tensor:
  """mmseg's test: more than one non-ignored class, and none above ``cat_max_ratio`` of them."""
  counts = tf.math.bincount(tf.reshape(label, [-1]), minlength=256, maxlength=256, dtype=tf.int32)
  counts = tf.tensor_scatter_nd_update(counts, [[RAW_IGNORE]], [0])
  total = tf.cast(tf.reduce_sum(counts), tf.float64)
  largest = tf.cast(tf.reduce_max(counts), tf.float64)
  return (tf.math.count_nonzero(counts) > 1) & (largest < cat_max_ratio * total)


def random_crop(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor, crop_size: Sequence[int],
                cat_max_ratio: float = 1.0, max_tries: int = 10) -> Tuple[tf.Tensor, tf.Tensor]:
  """mmseg ``RandomCrop(crop_size, cat_max_ratio)`` on a raw (0 = ignore) label map.

  Offsets are uniform over the valid range (0 where the image is smaller than the crop, which then keeps the
  full extent). With ``cat_max_ratio < 1`` up to ``max_tries`` crops are tested in turn and the first balanced
  one (see ``_crop_is_balanced``) is kept; if none is, the next random crop is used, as mmseg does.
  """
  crop_h, crop_w = crop_size
  shape = tf.shape(label)
  offsets_h = tf.random.stateless_uniform([max_tries + 1], _fold(seed, 0), minval=0,
                                          maxval=tf.maximum(shape[0] - crop_h, 0) + 1, dtype=tf.int32)
  offsets_w = tf.random.stateless_uniform([max_tries + 1], _fold(seed, 1), minval=0,
                                          maxval=tf.maximum(shape[1] - crop_w, 0) + 1, dtype=tf.int32)

  def crop(x, i):
    return x[offsets_h[i]:offsets_h[i] + crop_h, offsets_w[i]:offsets_w[i] + crop_w]

  choice = tf.constant(0)
  if cat_max_ratio < 1.0:
    choice, = tf.while_loop(lambda i: (i < max_tries) & ~_crop_is_balanced(crop(label, i), cat_max_ratio),
                            lambda i: (i + 1,), (choice,))
  return crop(image, choice), crop(label, choice)


def random_flip(image: tf.Tensor, label: tf.Tensor, seed: tf.Tensor,
                prob: float = 0.5) -> Tuple[tf.Tensor, tf.Tensor]:
  """mmseg ``RandomFlip(prob)``: horizontal flip of image and label with probability ``prob``."""
  flip = tf.random.stateless_uniform([], seed) < prob
  return (tf.cond(flip, lambda: tf.reverse(image, [1]), lambda: image),
          tf.cond(flip, lambda: tf.reverse(label, [1]), lambda: label))


def _convert(x: tf.Tensor, alpha=1.0, beta=0.0) -> tf.Tensor:
  """mmseg's ``convert``: ``uint8(clip(x * alpha + beta, 0, 255))`` (the cast truncates)."""
  return tf.floor(tf.clip_by_value(x * tf.cast(alpha, tf.float32) + tf.cast(beta, tf.float32), 0.0, 255.0))


def _to_hsv8(image: tf.Tensor) -> Tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
  """OpenCV's 8-bit HSV (``cv2.COLOR_RGB2HSV`` on uint8): H in [0, 180), S and V in [0, 255]."""
  hsv = tf.image.rgb_to_hsv(image / 255.0)
  return (tf.math.floormod(tf.round(hsv[..., 0] * 180.0), 180.0), tf.round(hsv[..., 1] * 255.0),
          tf.round(hsv[..., 2] * 255.0))


def _from_hsv8(h: tf.Tensor, s: tf.Tensor, v: tf.Tensor) -> tf.Tensor:
  rgb = tf.image.hsv_to_rgb(tf.stack([h / 180.0, s / 255.0, v / 255.0], axis=-1))
  return tf.clip_by_value(tf.round(rgb * 255.0), 0.0, 255.0)


def photometric_distortion(image: tf.Tensor, seed: tf.Tensor, brightness_delta: float = 32.0,
                           contrast_range: Sequence[float] = (0.5, 1.5),
                           saturation_range: Sequence[float] = (0.5, 1.5), hue_delta: int = 18) -> tf.Tensor:
  """mmseg ``PhotoMetricDistortion`` with its defaults, order and probabilities.

  Brightness (p 0.5, ``+U(-delta, delta)``); then, in a random one of two orders, contrast (p 0.5,
  ``*U(contrast_range)``) first or last around saturation (p 0.5, S ``*U(saturation_range)`` in 8-bit HSV)
  and hue (p 0.5, H ``+randint(-hue_delta, hue_delta)`` mod 180 in 8-bit HSV). Every step truncates to uint8
  as mmseg's does. HSV uses OpenCV's 8-bit quantisation computed in float, so it can differ from
  ``cv2.cvtColor`` by a grey level.
  """
  u = tf.random.stateless_uniform([9], seed, dtype=tf.float32)

  def uniform(v, bounds):
    return bounds[0] + v * (bounds[1] - bounds[0])

  def contrast(x):
    return tf.cond(u[3] < 0.5, lambda: _convert(x, alpha=uniform(u[4], contrast_range)), lambda: x)

  def saturation(x):
    h, s, v = _to_hsv8(x)
    return _from_hsv8(h, _convert(s, alpha=uniform(u[6], saturation_range)), v)

  def hue(x):
    h, s, v = _to_hsv8(x)
    shift = tf.floor(uniform(u[8], (-hue_delta, hue_delta)))  # randint(-d, d): upper bound excluded
    return _from_hsv8(tf.math.floormod(h + shift, 180.0), s, v)

  brightness = uniform(u[1], (-brightness_delta, brightness_delta))
  image = tf.cond(u[0] < 0.5, lambda: _convert(image, beta=brightness), lambda: image)
  contrast_first = u[2] < 0.5
  image = tf.cond(contrast_first, lambda: contrast(image), lambda: image)
  image = tf.cond(u[5] < 0.5, lambda: saturation(image), lambda: image)
  image = tf.cond(u[7] < 0.5, lambda: hue(image), lambda: image)
  return tf.cond(contrast_first, lambda: image, lambda: contrast(image))


def normalize(image: tf.Tensor) -> tf.Tensor:
  """mmseg ``Normalize`` with the ImageNet RGB mean and std on 0-255 pixels."""
  return (image - tf.constant(IMAGENET_MEAN, tf.float32)) / tf.constant(IMAGENET_STD, tf.float32)


def reduce_zero_label(label: tf.Tensor) -> tf.Tensor:
  """Raw ADE20K values to training labels: 0 ("other") -> -1 (ignore), k -> k - 1."""
  label = tf.cast(label, tf.int32)
  return tf.where(label == RAW_IGNORE, IGNORE_LABEL, label - 1)


def pad_to(inputs: tf.Tensor, label: tf.Tensor, size: Sequence[tf.Tensor]) -> Tuple[tf.Tensor, tf.Tensor]:
  """mmseg ``Pad(size)`` at the bottom and right: inputs with 0, the label with ``IGNORE_LABEL``."""
  shape = tf.shape(label)
  pad = [[0, size[0] - shape[0]], [0, size[1] - shape[1]]]
  return (tf.pad(inputs, pad + [[0, 0]], constant_values=0.0),
          tf.pad(label, pad, constant_values=IGNORE_LABEL))


def train_transform(image: tf.Tensor, raw_label: tf.Tensor, seed: tf.Tensor, *, scale: Sequence[int],
                    ratio_range: Sequence[float], crop_size: Sequence[int], cat_max_ratio: float,
                    flip_prob: float, photometric: bool) -> Tuple[tf.Tensor, tf.Tensor]:
  """The official training pipeline on a decoded example.

  Resize -> RandomCrop -> RandomFlip -> PhotoMetricDistortion -> Normalize -> Pad, on a uint8 HxWx3 image and
  an HxW(x1) raw label map. Returns ``(inputs float32 crop_h x crop_w x 3, label int32 crop_h x crop_w)``.
  """
  image = tf.cast(image, tf.float32)
  label = tf.cast(tf.reshape(raw_label, tf.shape(raw_label)[:2]), tf.int32)
  image, label = random_resize(image, label, _fold(seed, 0), scale, ratio_range)
  image, label = random_crop(image, label, _fold(seed, 1), crop_size, cat_max_ratio)
  image, label = random_flip(image, label, _fold(seed, 2), flip_prob)
  if photometric:
    image = photometric_distortion(image, _fold(seed, 3))
  inputs, label = pad_to(normalize(image), reduce_zero_label(label), crop_size)
  return tf.ensure_shape(inputs, (*crop_size, 3)), tf.ensure_shape(label, tuple(crop_size))


def eval_transform(image: tf.Tensor, raw_label: tf.Tensor, *, scale: Sequence[int],
                   size_divisor: int) -> Tuple[tf.Tensor, tf.Tensor]:
  """CrossFormer's test-time ``AlignResize`` + Normalize on a decoded example.

  The image is rescaled to fit ``scale`` keeping its ratio, then resized again to the next multiple of
  ``size_divisor`` (two bilinear steps, as ``AlignResize`` does). The label map is resized once, by nearest
  neighbour, to the same final size. Returns ``(inputs float32, label int32)`` of the aligned size.
  """
  image = tf.cast(image, tf.float32)
  label = tf.cast(tf.reshape(raw_label, tf.shape(raw_label)[:2]), tf.int32)
  shape = tf.shape(label)
  image = resize_image(image, rescale_size(shape[0], shape[1], scale))
  aligned = align_resize_size(shape[0], shape[1], scale, size_divisor)
  return normalize(resize_image(image, aligned)), reduce_zero_label(resize_label(label, aligned))
