"""Image normalisation the CrossFormer checkpoints were trained with (ImageNet RGB, 0-255 pixels)."""

import numpy as np

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


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
