"""The official evaluation transform, exactly: torchvision's ``Resize(int(S / 0.875), BICUBIC) + CenterCrop(S)``
on a PIL image, then ``ToTensor`` + ``Normalize(ImageNet mean, std)`` (numpy and PIL only, no TensorFlow).

torchvision computes on PIL images: the shorter side becomes ``size`` and the longer ``int(size * long /
short)`` (truncated), PIL's ``Image.resize(..., BICUBIC)`` resamples (antialiased, uint8 rounding between its
two passes), and the centre crop starts at ``int(round((side - S) / 2))`` (Python's halves to even). These
functions restate those formulas, so the input matches the official code's pixel for pixel (uint8; the
normalised float32 values agree within 1e-5, ``255 * 0.229`` vs ``58.395`` rounding):
``tests/test_classification_eval_transform.py`` checks it against fixtures made by
``tests/make_classification_fixtures.py``.
"""

import io
import math
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image

from backbones import preprocess

DEFAULT_CROP_PCT = 0.875


def resize_shorter_size(width: int, height: int, size: int) -> Tuple[int, int]:
  """torchvision ``Resize(size)`` output ``(width, height)``: the shorter side becomes ``size``, the longer
  ``int(size * long / short)`` (truncated)."""
  if width <= height:
    return size, int(size * height / width)
  return int(size * width / height), size


def center_crop_box(width: int, height: int, crop: int) -> Tuple[int, int, int, int]:
  """torchvision ``CenterCrop(crop)`` box ``(left, top, right, bottom)``: offsets ``int(round(d / 2))``
  (Python rounds halves to even). A box outside the image reads PIL's zero padding, as torchvision pads."""
  top = int(round((height - crop) / 2.0))
  left = int(round((width - crop) / 2.0))
  return left, top, left + crop, top + crop


def resize_size_for_crop(crop_size: int, crop_pct: float = DEFAULT_CROP_PCT) -> int:
  """The official ``int((256 / 224) * 224)`` = 256 generalised: ``int(crop_size / crop_pct)``."""
  return int(math.floor(crop_size / crop_pct + 1e-9))


def eval_pil(image: Image.Image, crop_size: int = 224, resize_size: Optional[int] = None) -> np.ndarray:
  """(crop, crop, 3) uint8 of the official evaluation transform on a PIL image (converted to RGB)."""
  resize_size = resize_size or resize_size_for_crop(crop_size)
  image = image.convert("RGB")
  width, height = resize_shorter_size(image.width, image.height, resize_size)
  if (width, height) != image.size:
    image = image.resize((width, height), Image.BICUBIC)
  return np.asarray(image.crop(center_crop_box(width, height, crop_size)), np.uint8)


def eval_bytes(data: bytes, crop_size: int, resize_size: int) -> np.ndarray:
  """``eval_pil`` of encoded image bytes (the official loader: ``Image.open(f).convert("RGB")``)."""
  with Image.open(io.BytesIO(data)) as image:
    return eval_pil(image, crop_size, resize_size)


def eval_input(image: Union[Image.Image, np.ndarray], crop_size: int = 224, resize_size: Optional[int] = None
               ) -> np.ndarray:
  """The normalised (crop, crop, 3) float32 model input of a PIL image or uint8 RGB array."""
  if isinstance(image, np.ndarray):
    image = Image.fromarray(np.asarray(image, np.uint8))
  return preprocess.normalize_image(eval_pil(image, crop_size, resize_size))
