"""Reading user images for inference: any mode PIL opens (RGB, grayscale, palette, RGBA, 16-bit), EXIF-rotated.

``to_rgb_uint8`` turns an array or PIL image into the (H, W, 3) uint8 RGB the models' normalisation expects,
the way ``mmcv.imread(path, 'color')`` reads files: alpha dropped, grayscale replicated, 16-bit reduced to
8-bit (``>> 8``); ``read_image`` also applies the EXIF orientation (``ImageOps.exif_transpose``) so the result
is the image as a viewer shows it.
"""

import os
import pathlib
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from backbones.preprocess import check_finite

ImageLike = Union[str, os.PathLike, np.ndarray, Image.Image]


class UnreadableImageError(ValueError):
  """A file that is not an image PIL can decode (or is truncated)."""


def _pil_to_array(image: Image.Image) -> np.ndarray:
  if image.mode in ("I;16", "I;16B", "I;16L", "I;16N", "I"):
    values = np.asarray(image, np.int64)
    return np.clip(values >> 8 if values.max(initial=0) > 255 else values, 0, 255).astype(np.uint8)
  if image.mode == "F":
    return np.clip(np.round(check_finite(np.asarray(image, np.float32))), 0, 255).astype(np.uint8)
  if image.mode not in ("RGB", "L"):
    image = image.convert("RGB")
  return np.asarray(image)


def to_rgb_uint8(image: Union[np.ndarray, Image.Image]) -> np.ndarray:
  """(H, W, 3) uint8 RGB from an array ((H, W), (H, W, 1|3|4); uint8, uint16 or 0-255 float) or a PIL image."""
  if isinstance(image, Image.Image):
    image = _pil_to_array(image)
  array = np.asarray(image)
  if array.ndim == 3 and array.shape[-1] == 1:
    array = array[..., 0]
  if array.ndim == 2:
    array = np.repeat(array[..., None], 3, axis=-1)
  if array.ndim != 3 or array.shape[-1] not in (3, 4):
    raise ValueError(f"expected an (H, W), (H, W, 3) or (H, W, 4) image, got shape {array.shape}")
  array = array[..., :3]
  if array.dtype == np.uint16:
    array = (array >> 8).astype(np.uint8)
  elif array.dtype != np.uint8:
    if not np.issubdtype(array.dtype, np.number):
      raise ValueError(f"image dtype {array.dtype} is not numeric")
    check_finite(array)
    array = np.clip(np.round(array.astype(np.float32)), 0, 255).astype(np.uint8)
  if min(array.shape[:2]) < 1:
    raise ValueError(f"empty image of shape {array.shape}")
  return np.ascontiguousarray(array)


def read_image(path: Union[str, os.PathLike]) -> np.ndarray:
  """The file at ``path`` as (H, W, 3) uint8 RGB in its displayed orientation.

  Raises ``FileNotFoundError`` when missing and ``UnreadableImageError`` (naming the file) when PIL cannot
  decode it.
  """
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"no image file at {path}")
  try:
    with Image.open(path) as image:
      image.load()
      image = ImageOps.exif_transpose(image)
      return to_rgb_uint8(image)
  except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
    raise UnreadableImageError(f"cannot read {path} as an image: {e}") from None


def load_image(image: ImageLike) -> np.ndarray:
  """``read_image`` for a path, ``to_rgb_uint8`` for an array or PIL image (PIL images are EXIF-rotated)."""
  if isinstance(image, (str, os.PathLike)):
    return read_image(image)
  if isinstance(image, Image.Image):
    image = ImageOps.exif_transpose(image)
  return to_rgb_uint8(image)
