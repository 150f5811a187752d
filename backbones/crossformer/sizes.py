"""The input-size contract of the CrossFormer dense backbone, and padding to it.

The stage-1 embedding has stride 4 and each of the three patch-merging layers halves a map whose sides
must be even (official ``PatchMerging`` asserts it), so ``H // 4`` must be divisible by 8: ``H mod 32``
is 0, 1, 2 or 3 and ``H >= 32``; the same for ``W``.
"""

from typing import Tuple

import jax.numpy as jnp
import numpy as np

SIZE_DIVISOR = 32
_EMBED_STRIDE = 4
_NUM_MERGES = 3


def is_valid_side(n: int) -> bool:
  """Whether one image side of length ``n`` passes the official size rule."""
  return n >= SIZE_DIVISOR and (n // _EMBED_STRIDE) % (2 ** _NUM_MERGES) == 0


def nearest_valid_sides(n: int) -> Tuple[int, ...]:
  """The valid side lengths closest to ``n`` from below and above (one value when ``n < 32``)."""
  above = -(-n // SIZE_DIVISOR) * SIZE_DIVISOR
  below = (n // SIZE_DIVISOR) * SIZE_DIVISOR
  return (above,) if below < SIZE_DIVISOR else (below, above)


def check_input(shape: Tuple[int, ...], in_chans: int) -> None:
  """Raises ``ValueError`` naming the problem when an NHWC batch cannot go through the backbone."""
  if len(shape) != 4:
    raise ValueError(f"CrossFormer expects an NHWC batch of rank 4, got shape {tuple(shape)}.")
  _, h, w, c = shape
  if c != in_chans:
    raise ValueError(f"CrossFormer expects {in_chans} input channels (NHWC, channels last), got {c} "
                     f"in shape {tuple(shape)}; an NCHW batch must be transposed first.")
  bad = [(name, n) for name, n in (("height", h), ("width", w)) if not is_valid_side(n)]
  if bad:
    details = "; ".join(f"{name} {n}: nearest valid {' or '.join(map(str, nearest_valid_sides(n)))}"
                        for name, n in bad)
    raise ValueError(
        f"input size {h}x{w} cannot go through CrossFormer: H//4 and W//4 must stay even through "
        f"three 2x merges (sides = 0..3 mod 32, at least 32). {details}. Pad with "
        "backbones.pad_to_valid_size (or resize) first.")


def stage_sizes(height: int, width: int) -> Tuple[Tuple[int, int], ...]:
  """Feature-map sizes of the four stages (strides 4, 8, 16, 32) for a valid input size."""
  h, w = height // _EMBED_STRIDE, width // _EMBED_STRIDE
  return tuple((h >> i, w >> i) for i in range(_NUM_MERGES + 1))


def padded_size(height: int, width: int, divisor: int = SIZE_DIVISOR) -> Tuple[int, int]:
  """The smallest size >= (height, width) whose sides are multiples of ``divisor`` (a multiple of 32)."""
  if divisor % SIZE_DIVISOR:
    raise ValueError(f"divisor must be a multiple of {SIZE_DIVISOR}, got {divisor}")
  return tuple(max(divisor, -(-n // divisor) * divisor) for n in (height, width))


def pad_to_valid_size(images: jnp.ndarray, divisor: int = SIZE_DIVISOR,
                      value: float = 0.0) -> Tuple[jnp.ndarray, jnp.ndarray]:
  """Pads an NHWC batch at the bottom/right to sides that are multiples of ``divisor``.

  Returns the padded batch and a boolean ``(N, H', W')`` mask that is True on the original pixels.
  """
  if images.ndim != 4:
    raise ValueError(f"expected an NHWC batch of rank 4, got shape {images.shape}")
  n, h, w, _ = images.shape
  ph, pw = padded_size(h, w, divisor)
  xp = np if isinstance(images, np.ndarray) else jnp
  padded = xp.pad(images, ((0, 0), (0, ph - h), (0, pw - w), (0, 0)), constant_values=value)
  valid = (np.arange(ph)[:, None] < h) & (np.arange(pw)[None, :] < w)
  mask = xp.asarray(np.broadcast_to(valid, (n, ph, pw)))
  return padded, mask
