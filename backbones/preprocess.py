"""Image normalisation the CrossFormer checkpoints were trained with (ImageNet RGB, 0-255 pixels)."""

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def check_finite(image: np.ndarray, what: str = "the image") -> np.ndarray:
  """``image`` unchanged, or ``ValueError`` when it holds NaN/Inf values: the one input check of every command
  (a float image with NaN pixels would otherwise become an arbitrary class map or feature)."""
  image = np.asarray(image)
  if not np.issubdtype(image.dtype, np.integer) and np.issubdtype(image.dtype, np.number):
    bad = int(np.size(image) - np.count_nonzero(np.isfinite(image)))
    if bad:
      raise ValueError(f"{what} has {bad} non-finite (NaN/Inf) pixel values")
  return image


def normalize_image(image: np.ndarray) -> np.ndarray:
  """uint8/float RGB ``(..., H, W, 3)`` in 0-255 -> float32 normalised with the ImageNet statistics."""
  image = np.asarray(image, np.float32)
  if image.shape[-1] != 3:
    raise ValueError(f"expected an RGB image with 3 channels last, got shape {image.shape}")
  return (image - np.asarray(IMAGENET_MEAN, np.float32)) / np.asarray(IMAGENET_STD, np.float32)


def denormalize_image(image: np.ndarray) -> np.ndarray:
  """Inverse of :func:`normalize_image`, for display: float ``(..., 3)`` -> uint8 RGB."""
  pixels = np.asarray(image, np.float32) * np.asarray(IMAGENET_STD, np.float32)
  return np.clip(np.round(pixels + np.asarray(IMAGENET_MEAN, np.float32)), 0, 255).astype(np.uint8)
