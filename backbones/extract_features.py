"""Feature-pyramid extraction: a Python function and a command over a folder of images.

    python -m backbones.extract_features --model crossformer_s --checkpoint s.msgpack \
        --input images/ --output_dir features/

Each image runs at its own size: it is padded at the bottom/right to a multiple of 32 (the backbone's
size rule), and every level is cropped back to the part that covers the image
(``ceil(side / stride)``). One ``.npz`` per image holds ``stage_1`` .. ``stage_4`` as ``(h, w, C)``, at the
input's relative path with ``.npz`` for its suffix (``photo.jpg`` -> ``photo.npz``), and the input's path as
``source``. Names and overwriting follow ``backbones.outputs`` (as the predict commands): inputs that would
share a file keep their extension (``photo_jpg.npz``, ``photo_png.npz``), the output folder is never read as
input, and a file that another input or something else wrote is not replaced without ``--overwrite``.

Images are read as RGB 0-255 (8-bit as is, 16-bit scaled by 255/65535, palettes, grey and alpha converted).
Before an image is compiled for, the memory it needs is estimated (``estimate_memory_bytes``); an image that
would not fit in ``--max_memory_gb`` (default: the accelerator's memory, or the machine's RAM) is skipped with
the ``--max_side`` that fits. Unreadable, non-finite or too large images are skipped and named; the command
processes every other image and exits with status 1 at the end if any was skipped.
"""

import argparse
import io
import logging
import os
import pathlib
import sys
from typing import Any, Callable, Dict, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from backbones import compilation_cache
from backbones import outputs
from backbones.crossformer import grouping
from backbones.crossformer.model import per_stage
from backbones.crossformer.sizes import pad_to_valid_size, padded_size
from backbones.preprocess import check_finite, normalize_image
from backbones.registry import create_model, list_models
from backbones.weights.converted import is_classifier, is_converted, load_converted
from backbones.weights.files import write_atomic

_SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def canvas_for(module, canvases: Sequence[Sequence[int]], size: Sequence[int]) -> Optional[tuple]:
  """The smallest of ``canvases`` that holds a padded ``size`` exactly (``CrossFormerBackbone.canvas_fits``),
  or None."""
  fitting = [tuple(c) for c in canvases if module.canvas_fits(tuple(c), tuple(size))]
  return min(fitting, key=lambda c: (c[0] * c[1], c)) if fitting else None


def feature_fn(module, variables, canvases: Sequence[Sequence[int]] = ()
               ) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
  """Returns ``f(rgb_image) -> {level: (h, w, C) array}`` for one HxWx3 image of any size.

  The image is uint8 RGB or float RGB in 0-255 (not yet normalised: ``f`` applies the ImageNet
  normalisation); a non-finite pixel raises ``ValueError``. The jitted network compiles once per padded size,
  or, with ``canvases`` ((h, w) multiples of 32), once per canvas: an image a canvas holds exactly runs inside
  it (``CrossFormerBackbone`` with ``image_size``), with the same features to float rounding.
  """
  apply = jax.jit(module.apply)
  canvas_apply = jax.jit(lambda v, x, s: module.apply(v, x, image_size=s))
  reductions = dict(zip(module.feature_info.module_name(), module.feature_info.reduction()))

  def extract(image: np.ndarray) -> Dict[str, np.ndarray]:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
      raise ValueError(f"expected an (H, W, 3) RGB image, got shape {image.shape}")
    check_finite(image)
    h, w = image.shape[:2]
    padded, _ = pad_to_valid_size(normalize_image(image)[None])
    canvas = canvas_for(module, canvases, padded.shape[1:3]) if canvases else None
    if canvas is None:
      out = apply(variables, jnp.asarray(padded))
    else:
      placed = np.zeros((1, *canvas, 3), np.float32)
      placed[0, :padded.shape[1], :padded.shape[2]] = padded[0]
      out = canvas_apply(variables, placed, np.asarray([padded.shape[1:3]], np.int32))
    return {name: np.asarray(out[name][0, :-(-h // r), :-(-w // r)].astype(jnp.float32))
            for name, r in reductions.items()}

  return extract


def build_extractor(model: Optional[str], checkpoint: Optional[str], **options: Any):
  """``(backbone module, variables)`` from a converted ``.msgpack`` (its own architecture), or a named
  variant with an official ``.pth``/``.npz`` checkpoint, or a named variant with random weights."""
  if checkpoint and is_converted(checkpoint):
    stored, variables = load_converted(checkpoint)
    if is_classifier(stored):  # its backbone, returning every level (the class's default out_indices)
      stored = stored.backbone.clone(parent=None, out_indices=type(stored.backbone).out_indices)
      variables = {"params": variables["params"]["backbone"]}
    return stored.clone(**options), variables
  if model is None:
    raise ValueError("name a --model (or give a converted .msgpack --checkpoint)")
  if checkpoint:
    return create_model(model, checkpoint=checkpoint, **options)
  logging.warning("no --checkpoint: random weights, the features only show shapes")
  module = create_model(model, **options)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def load_rgb(path: pathlib.Path, max_side: Optional[int] = None) -> np.ndarray:
  """Reads an image as RGB 0-255, shrunk (keeping its ratio) so its long side is at most ``max_side``.

  8-bit images come back as uint8; 16-bit ones (scaled by 255/65535, not clipped) and float ones as
  float32. Raises ``OSError`` (unreadable) or ``ValueError`` (non-finite values), naming ``path``.
  """
  with Image.open(path) as image:
    image.load()
    if image.mode in _SIXTEEN_BIT_MODES or image.mode == "F":
      values = np.asarray(image, np.float32)
      if image.mode != "F":
        values = values * (255.0 / 65535.0)
      check_finite(values, str(path))
      channel = Image.fromarray(values, mode="F")
      channel = _shrink(channel, max_side, Image.BILINEAR)
      return np.repeat(np.asarray(channel, np.float32)[..., None], 3, axis=-1)
    image = _shrink(image.convert("RGB"), max_side, Image.BILINEAR)
    return np.asarray(image)


def _shrink(image: Image.Image, max_side: Optional[int], resample) -> Image.Image:
  if max_side and max(image.size) > max_side:
    scale = max_side / max(image.size)
    image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))), resample)
  return image


# Peak bytes of the jitted forward per float of the largest stage's live tensors, as measured with
# ``jax.jit(...).lower(...).compile().memory_analysis()`` on CPU (the estimate is 1.4-1.6x XLA's figure from
# 128x128 to 512x512, SDA and v1 LDA, widths 16 and 96; the test
# ``tests/test_extract_features_robust.py`` checks the estimate against it) with a margin.
_BYTES_PER_FLOAT = 4 * 2.0


def estimate_memory_bytes(module, height: int, width: int) -> int:
  """Estimated peak memory (bytes) of one ``height x width`` image through ``module``, without compiling.

  For every stage: its tokens times their width (channels x (mlp_ratio + 2)) plus twice the attention scores
  of its SDA and LDA groups (``grouping.plan_groups``: groups x group_tokens**2 x heads; v1 LDA groups grow with
  the image, so this term is quadratic in the image side at fixed intervals). The largest stage, times
  ``_BYTES_PER_FLOAT``, plus the parameters and the input.
  """
  ph, pw = padded_size(height, width)
  num_stages = len(module.dims)
  group_sizes = per_stage(module.group_sizes, num_stages, "group_sizes")
  intervals = per_stage(module.intervals, num_stages, "intervals")
  peak, num_params = 0, 0
  for s, (dim, depth, heads) in enumerate(zip(module.dims, module.depths, module.stage_heads)):
    h, w = -(-ph // (4 * 2 ** s)), -(-pw // (4 * 2 ** s))
    attention = 0
    for long_distance in ((False, True) if depth > 1 else (False,)):
      plan = grouping.plan_groups(h, w, group_sizes[s], intervals[s], long_distance, module.lda_mode)
      attention = max(attention, plan.num_groups * plan.group_tokens ** 2 * heads)
    peak = max(peak, h * w * dim * (module.mlp_ratio + 2) + 2 * attention)  # scores and their bias
    num_params += depth * dim * dim * (4 * module.mlp_ratio + 4)
  return int(_BYTES_PER_FLOAT * peak + 4 * num_params + 4 * ph * pw * 3)


def available_memory_bytes() -> int:
  """The first device's memory limit when it reports one (GPU/TPU), else the machine's physical memory."""
  stats = None
  try:
    stats = jax.local_devices()[0].memory_stats()
  except Exception:  # pylint: disable=broad-except  (CPU devices report nothing)
    stats = None
  if stats and stats.get("bytes_limit"):
    return int(stats["bytes_limit"])
  return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def check_memory(module, height: int, width: int, limit_bytes: int) -> None:
  """Raises ``MemoryError`` with the ``--max_side`` to use when an image would need more than ``limit_bytes``."""
  need = estimate_memory_bytes(module, height, width)
  if need <= limit_bytes:
    return
  side = max(height, width)

  def fits(max_side: int) -> bool:
    scale = max_side / side
    return estimate_memory_bytes(module, max(1, round(height * scale)), max(1, round(width * scale))) <= limit_bytes

  low, high = 1, side // 32  # the largest multiple of 32 that fits (memory grows with the side)
  while low < high:
    mid = (low + high + 1) // 2
    low, high = (mid, high) if fits(32 * mid) else (low, mid - 1)
  max_side = 32 * low
  raise MemoryError(f"{height}x{width} needs about {need / 2**30:.1f} GiB, more than the "
                    f"{limit_bytes / 2**30:.1f} GiB available; rerun with --max_side {max_side}")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None, choices=list_models(),
                      help="variant (not needed with a converted .msgpack checkpoint)")
  parser.add_argument("--checkpoint", default=None,
                      help="converted .msgpack or official .pth/.npz; random weights if omitted")
  parser.add_argument("--input", required=True, help="an image file or a folder of images")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--overwrite", action="store_true",
                      help="replace existing .npz files even when another input or something else wrote them")
  parser.add_argument("--out_indices", default="0,1,2,3")
  parser.add_argument("--max_side", type=int, default=None, help="shrink larger images to this side")
  parser.add_argument("--max_memory_gb", type=float, default=None,
                      help="skip images estimated to need more (default: device memory, else physical RAM)")
  parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
  parser.add_argument("--lda_mode", default=None, choices=("v1", "main"),
                      help="LDA semantics (default: the checkpoint's, or the variant's)")
  parser.add_argument("--canvases", default="",
                      help="padded canvases HxW,HxW (multiples of 32): one compiled program each instead of one "
                           "per image size, same features")
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns ``{image path: {level: shape}}``.

  Every readable image is processed; the others are named as they are skipped, and at the end
  ``SystemExit`` reports them (exit status 1).
  """
  args = parse_args(sys.argv[1:] if argv is None else argv)
  compilation_cache.enable()
  output_dir = pathlib.Path(args.output_dir)
  images, root = outputs.list_inputs(pathlib.Path(args.input), output_dir)
  out_indices = tuple(int(i) for i in args.out_indices.split(","))
  options = dict(out_indices=out_indices, dtype=_DTYPES[args.dtype])
  if args.lda_mode is not None:  # else the converted checkpoint's (a ++ model is "main") or the variant's
    options["lda_mode"] = args.lda_mode
  module, variables = build_extractor(args.model, args.checkpoint, **options)
  canvases = [tuple(int(v) for v in c.lower().split("x")) for c in args.canvases.split(",") if c]
  extract = feature_fn(module, variables, canvases)
  limit = int(args.max_memory_gb * 2**30) if args.max_memory_gb else available_memory_bytes()
  targets = {p: pathlib.Path(f"{base}.npz") for p, base in outputs.output_bases(images, root, output_dir,
                                                                               (".npz",)).items()}
  shapes, skipped = {}, []
  for path in tqdm(images, desc="features", unit="img"):
    source = str(path.resolve())
    refused = outputs.refuse_reason([targets[path]], source, args.overwrite)
    if refused:
      skipped.append((path, refused))
      tqdm.write(f"skipped {path}: {refused}")
      continue
    try:
      image = load_rgb(path, args.max_side)
      check_memory(module, image.shape[0], image.shape[1], limit)
      features = extract(image)
    except Exception as e:  # pylint: disable=broad-except  (one bad file must not stop the others)
      reason = str(e).replace(str(path), "").strip(" :") or type(e).__name__
      skipped.append((path, reason))
      tqdm.write(f"skipped {path}: {reason}")
      continue
    buffer = io.BytesIO()
    np.savez(buffer, image_size=np.asarray(image.shape[:2]), **{outputs.SOURCE_KEY: np.asarray(source)}, **features)
    write_atomic(targets[path], buffer.getvalue())
    shapes[str(path)] = {k: v.shape for k, v in features.items()}
    tqdm.write(f"{path.name} {image.shape[0]}x{image.shape[1]}: "
               + ", ".join(f"{k} {v.shape}" for k, v in features.items()))
  if skipped:
    lines = "\n".join(f"  {p}: {why}" for p, why in skipped)
    raise SystemExit(f"{len(skipped)} of {len(images)} images skipped (the others are in {output_dir}):\n{lines}")
  return shapes


if __name__ == "__main__":
  main()
