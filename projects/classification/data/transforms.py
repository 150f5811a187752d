"""The official CrossFormer (timm / DeiT) image transforms for classification, in TensorFlow and PIL.

Training (``TrainAugment``, per example, deterministic given its ``key``) as timm's
``transforms_imagenet_train`` with the official arguments:

* ``RandomResizedCrop(224, scale=(0.08, 1), ratio=(3/4, 4/3), bicubic)``: TensorFlow's
  ``stateless_sample_distorted_bounding_box`` (its own sampling law, 10 attempts; when all fail it falls back
  to the whole image; timm samples the aspect ratio log-uniformly and falls back to a centre crop of the
  clamped ratio) + ``tf.image.resize(bicubic, antialias)`` in float (PIL resamples in uint8);
* horizontal flip 0.5;
* RandAugment ``rand-m9-mstd0.5-inc1``: Keras 3's ``keras.layers.RandAugment`` (``num_ops=2``,
  ``factor=magnitude/10``). Keras's op set and magnitude law differ from timm's: no Invert/SolarizeAdd, the
  strength is drawn uniformly in ``[0, factor]`` per op instead of ``N(m, 0.5)``, every chosen op is applied
  (timm: each with probability 0.5). Keras layers draw from their own seed generator, so these draws are
  not replayed exactly when a run resumes;
* colour jitter 0.4 (``keras.layers.RandomColorJitter``) only without RandAugment, as timm (which disables
  its ``color_jitter`` argument when an auto-augment policy is given: the official recipe never jitters);
* normalisation with the ImageNet mean/std, then random erasing ``p=0.25, mode="pixel"`` (timm's
  ``RandomErasing``: area 2%-1/3, log-uniform aspect 0.3-3.3, up to 10 attempts, per-pixel N(0, 1) noise in
  the normalised image), written here with stateless ops (Keras's ``RandomErasing`` has another law).

Batches: ``mix_batch`` = timm's ``Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, switch_prob=0.5, mode="batch")``:
one ``lam`` per batch, mixed with the batch reversed; CutMix's ``lam`` is corrected to the box's area. Labels
become soft ``(B, K)`` targets (the loss applies ``label_smoothing``, which equals timm's smoothed mixing).

Evaluation (``eval_image``): ``eval_transform.eval_bytes`` (the official ``Resize(256) + CenterCrop(224)``
computed by PIL exactly as torchvision does) inside ``tf.numpy_function``, then ``ToTensor`` + ``Normalize``.
"""

import math
from typing import Optional, Sequence, Tuple

import tensorflow as tf

from backbones import preprocess
from projects.classification.data import eval_transform

MEAN = tf.constant(preprocess.IMAGENET_MEAN, tf.float32)
STD = tf.constant(preprocess.IMAGENET_STD, tf.float32)
DEFAULT_CROP_PCT = eval_transform.DEFAULT_CROP_PCT


# -------------------------------------------------------------------------------------------- evaluation

def normalize(image: tf.Tensor) -> tf.Tensor:
  """uint8/float 0-255 RGB -> float32 ``(x - mean) / std`` (``ToTensor`` + ``Normalize`` of the 0-1 image)."""
  return (tf.cast(image, tf.float32) - MEAN) / STD


def _as_bytes(value) -> bytes:
  """``tf.numpy_function``'s view of a scalar string (bytes inside tf.data, a 0-d array eagerly) as bytes."""
  return bytes(value) if isinstance(value, bytes) else value.item()


def eval_image(data: tf.Tensor, crop_size: int = 224, resize_size: Optional[int] = None) -> tf.Tensor:
  """The normalised (crop, crop, 3) float32 official evaluation input of encoded image bytes."""
  resize_size = resize_size or eval_transform.resize_size_for_crop(crop_size)
  pixels = tf.numpy_function(lambda d: eval_transform.eval_bytes(_as_bytes(d), crop_size, resize_size), [data],
                             tf.uint8, stateful=False)
  return normalize(tf.ensure_shape(pixels, (crop_size, crop_size, 3)))


# ----------------------------------------------------------------------------------------- training

def decode(data: tf.Tensor) -> tf.Tensor:
  """uint8 (H, W, 3) RGB of JPEG/PNG/BMP/GIF bytes (grayscale replicated)."""
  return tf.ensure_shape(tf.io.decode_image(data, channels=3, expand_animations=False), (None, None, 3))


def _keys(key: tf.Tensor, count: int) -> Sequence[tf.Tensor]:
  return tf.unstack(tf.random.experimental.stateless_split(key, count))


def random_resized_crop(image: tf.Tensor, key: tf.Tensor, size: int, scale: Tuple[float, float] = (0.08, 1.0),
                        ratio: Tuple[float, float] = (3 / 4, 4 / 3)) -> tf.Tensor:
  """A random crop of ``scale`` of the area and aspect ``ratio``, resized bicubic to ``size`` x ``size``
  (float32 0-255)."""
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.shape(image), bounding_boxes=tf.zeros([1, 0, 4]), seed=key, min_object_covered=0.0,
      aspect_ratio_range=ratio, area_range=scale, max_attempts=10, use_image_if_no_bounding_boxes=True)
  crop = tf.slice(image, begin, crop_size)
  resized = tf.image.resize(tf.cast(crop, tf.float32), (size, size), method="bicubic", antialias=True)
  return tf.ensure_shape(tf.clip_by_value(resized, 0.0, 255.0), (size, size, 3))


def random_erasing(image: tf.Tensor, key: tf.Tensor, probability: float = 0.25,
                   area: Tuple[float, float] = (0.02, 1 / 3), log_ratio: Tuple[float, float] = (math.log(0.3),
                                                                                         math.log(1 / 0.3)),
                   attempts: int = 10) -> tf.Tensor:
  """timm's ``RandomErasing(mode="pixel", max_count=1)`` on a normalised image: with ``probability``, the
  first of ``attempts`` random boxes that fits is filled with N(0, 1) noise."""
  height, width = tf.shape(image)[0], tf.shape(image)[1]
  k_apply, k_area, k_ratio, k_top, k_left, k_noise = _keys(key, 6)
  total = tf.cast(height * width, tf.float32)
  target = tf.random.stateless_uniform([attempts], k_area, area[0], area[1]) * total
  aspect = tf.exp(tf.random.stateless_uniform([attempts], k_ratio, log_ratio[0], log_ratio[1]))
  h = tf.cast(tf.round(tf.sqrt(target * aspect)), tf.int32)
  w = tf.cast(tf.round(tf.sqrt(target / aspect)), tf.int32)
  fits = (h < height) & (w < width) & (h > 0) & (w > 0)
  first = tf.argmax(tf.cast(fits, tf.int32), output_type=tf.int32)
  h, w = h[first], w[first]
  top = tf.random.stateless_uniform([], k_top, 0, tf.maximum(height - h, 0) + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], k_left, 0, tf.maximum(width - w, 0) + 1, dtype=tf.int32)
  rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
  inside = (rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)
  erase = inside & tf.reduce_any(fits) & (tf.random.stateless_uniform([], k_apply) < probability)
  noise = tf.random.stateless_normal(tf.shape(image), k_noise)
  return tf.where(erase[:, :, None], noise, image)


class TrainAugment:
  """The per-example training transform (module docstring); Keras layers are built once, on first use."""

  def __init__(self, crop_size: int = 224, flip_prob: float = 0.5, rand_augment: Optional[str] = None,
               color_jitter: Optional[float] = None, erase_prob: float = 0.0, seed: int = 0) -> None:
    self.crop_size, self.flip_prob, self.erase_prob = int(crop_size), float(flip_prob), float(erase_prob)
    self.rand_augment = parse_rand_augment(rand_augment) if rand_augment else None
    self.color_jitter = float(color_jitter or 0.0) if self.rand_augment is None else 0.0
    self._layers = None
    self._seed = int(seed)

  def build(self) -> list:
    """Creates the Keras layers (call eagerly, before tracing a tf.data function); returns them."""
    if self._layers is None:
      import keras  # pylint: disable=import-outside-toplevel  (only for RandAugment / colour jitter)
      layers = []
      if self.rand_augment is not None:
        layers.append(keras.layers.RandAugment(value_range=(0, 255), num_ops=self.rand_augment["num_ops"],
                                               factor=self.rand_augment["factor"], interpolation="bilinear",
                                               seed=self._seed))
      if self.color_jitter:
        c = self.color_jitter
        layers.append(keras.layers.RandomColorJitter(value_range=(0, 255), brightness_factor=c,
                                                     contrast_factor=c, saturation_factor=(0.5 - c / 2, 0.5 + c / 2),
                                                     seed=self._seed))
      self._layers = layers
    return self._layers

  def __call__(self, image: tf.Tensor, key: tf.Tensor) -> tf.Tensor:
    k_crop, k_flip, k_erase = _keys(key, 3)
    x = random_resized_crop(image, k_crop, self.crop_size)
    x = tf.cond(tf.random.stateless_uniform([], k_flip) < self.flip_prob, lambda: x[:, ::-1], lambda: x)
    for layer in self.build():
      x = tf.clip_by_value(tf.cast(layer(x, training=True), tf.float32), 0.0, 255.0)
    x = normalize(x)
    if self.erase_prob > 0:
      x = random_erasing(x, k_erase, self.erase_prob)
    return tf.ensure_shape(x, (self.crop_size, self.crop_size, 3))


def parse_rand_augment(spec: str) -> dict:
  """timm's ``rand-m9-mstd0.5-inc1`` -> ``{"num_ops": 2, "factor": 0.9, "magnitude_std": 0.5}`` (the Keras
  layer's arguments; ``mstd`` and ``inc`` are recorded but Keras has no equivalent)."""
  parts = str(spec).split("-")
  if parts[0] != "rand":
    raise ValueError(f"rand_augment {spec!r} must be timm's 'rand-m<M>[-n<N>][-mstd<S>][-inc<0|1>]'")
  out = {"num_ops": 2, "factor": 0.9, "magnitude_std": 0.0}
  for part in parts[1:]:
    try:
      if part.startswith("mstd"):
        out["magnitude_std"] = float(part[4:])
      elif part.startswith("inc"):
        out["increasing"] = bool(int(part[3:]))
      elif part.startswith("m"):
        out["factor"] = min(float(part[1:]) / 10.0, 1.0)
      elif part.startswith("n"):
        out["num_ops"] = int(part[1:])
      else:
        raise ValueError(part)
    except ValueError:
      raise ValueError(f"rand_augment {spec!r}: cannot read {part!r} (expected m<M>, n<N>, mstd<S>, inc<0|1>)"
                       ) from None
  return out


# ------------------------------------------------------------------------------------ Mixup / CutMix

def mix_batch(inputs: tf.Tensor, labels: tf.Tensor, key: tf.Tensor, num_classes: int, mixup_alpha: float = 0.8,
              cutmix_alpha: float = 1.0, switch_prob: float = 0.5, prob: float = 1.0
              ) -> Tuple[tf.Tensor, tf.Tensor]:
  """timm's ``Mixup(mode="batch")`` on a batch: ``(mixed inputs (B, H, W, 3), soft targets (B, K))``."""
  k_apply, k_switch, k_mix, k_cut, k_y, k_x = _keys(key, 6)
  targets = tf.one_hot(labels, num_classes, dtype=tf.float32)
  use_cutmix = tf.random.stateless_uniform([], k_switch) < switch_prob if mixup_alpha > 0 else tf.constant(True)
  if cutmix_alpha <= 0:
    use_cutmix = tf.constant(False)

  def beta(k, alpha):
    if alpha <= 0:
      return tf.constant(1.0)
    k1, k2 = _keys(k, 2)
    a = tf.random.stateless_gamma([], k1, alpha)
    return a / (a + tf.random.stateless_gamma([], k2, alpha))

  apply = tf.random.stateless_uniform([], k_apply) < prob
  height, width = tf.shape(inputs)[1], tf.shape(inputs)[2]
  lam_cut = beta(k_cut, cutmix_alpha)
  ratio = tf.sqrt(1.0 - lam_cut)
  cut_h = tf.cast(tf.cast(height, tf.float32) * ratio, tf.int32)
  cut_w = tf.cast(tf.cast(width, tf.float32) * ratio, tf.int32)
  cy = tf.random.stateless_uniform([], k_y, 0, height, dtype=tf.int32)
  cx = tf.random.stateless_uniform([], k_x, 0, width, dtype=tf.int32)
  y0, y1 = tf.clip_by_value(cy - cut_h // 2, 0, height), tf.clip_by_value(cy + cut_h // 2, 0, height)
  x0, x1 = tf.clip_by_value(cx - cut_w // 2, 0, width), tf.clip_by_value(cx + cut_w // 2, 0, width)
  rows, cols = tf.range(height)[:, None], tf.range(width)[None, :]
  box = (rows >= y0) & (rows < y1) & (cols >= x0) & (cols < x1)
  lam_box = 1.0 - tf.cast((y1 - y0) * (x1 - x0), tf.float32) / tf.cast(height * width, tf.float32)
  lam = tf.where(use_cutmix, lam_box, beta(k_mix, mixup_alpha))
  lam = tf.where(apply, lam, 1.0)
  flipped = inputs[::-1]
  mixed = tf.where(use_cutmix & apply, tf.where(box[None, :, :, None], flipped, inputs),
                   lam * inputs + (1.0 - lam) * flipped)
  return mixed, lam * targets + (1.0 - lam) * targets[::-1]
