"""Feature-pyramid extraction: a Python function and a command over a folder of images.

    python -m backbones.extract_features --model crossformer_s --checkpoint s.msgpack \
        --input images/ --output_dir features/

Each image runs at its own size: it is padded at the bottom/right to a multiple of 32 (the backbone's
size rule), and every level is cropped back to the part that covers the image
(``ceil(side / stride)``). One ``.npz`` per image holds ``stage_1`` .. ``stage_4`` as ``(h, w, C)``.
"""

import argparse
import logging
import pathlib
import sys
from typing import Any, Callable, Dict, List, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
from tqdm import tqdm

from backbones.checkpoint_io import is_converted, load_converted
from backbones.crossformer.model import CrossFormer, CrossFormerBackbone
from backbones.crossformer.sizes import pad_to_valid_size
from backbones.factory import create_model, list_models
from backbones.preprocess import normalize_image

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def feature_fn(module, variables) -> Callable[[np.ndarray], Dict[str, np.ndarray]]:
  """Returns ``f(rgb_image) -> {level: (h, w, C) array}`` for one HxWx3 0-255 image of any size.

  The jitted network compiles once per padded size.
  """
  apply = jax.jit(module.apply)
  reductions = dict(zip(module.feature_info.module_name(), module.feature_info.reduction()))

  def extract(image: np.ndarray) -> Dict[str, np.ndarray]:
    h, w = image.shape[:2]
    padded, _ = pad_to_valid_size(normalize_image(image)[None])
    out = apply(variables, jnp.asarray(padded))
    return {name: np.asarray(out[name][0, :-(-h // r), :-(-w // r)].astype(jnp.float32))
            for name, r in reductions.items()}

  return extract


def build_extractor(model: Optional[str], checkpoint: Optional[str], **options: Any):
  """``(backbone module, variables)`` from a converted ``.msgpack`` (its own architecture), or a named
  variant with an official ``.pth``/``.npz`` checkpoint, or a named variant with random weights."""
  if checkpoint and is_converted(checkpoint):
    stored, variables = load_converted(checkpoint)
    if isinstance(stored, CrossFormer):
      stored = CrossFormerBackbone(**stored.backbone_kwargs())
      variables = {"params": variables["params"]["backbone"]}
    return stored.clone(**options), variables
  if model is None:
    raise ValueError("name a --model (or give a converted .msgpack --checkpoint)")
  if checkpoint:
    return create_model(model, checkpoint=checkpoint, **options)
  logging.warning("no --checkpoint: random weights, the features only show shapes")
  module = create_model(model, **options)
  return module, jax.jit(module.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))


def list_images(path: pathlib.Path) -> List[pathlib.Path]:
  """The image files at ``path`` (a file, or a folder searched recursively), sorted."""
  if path.is_file():
    return [path]
  if not path.is_dir():
    raise FileNotFoundError(f"no image file or folder at {path}")
  images = sorted(p for p in path.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
  if not images:
    raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) under {path}")
  return images


def load_rgb(path: pathlib.Path, max_side: Optional[int] = None) -> np.ndarray:
  """Reads an image as uint8 RGB, shrunk (keeping its ratio) so its long side is at most ``max_side``."""
  with Image.open(path) as image:
    image = image.convert("RGB")
    if max_side and max(image.size) > max_side:
      scale = max_side / max(image.size)
      image = image.resize((max(1, round(image.width * scale)), max(1, round(image.height * scale))),
                           Image.BILINEAR)
    return np.asarray(image)


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--model", default=None, choices=list_models(),
                      help="variant (not needed with a converted .msgpack checkpoint)")
  parser.add_argument("--checkpoint", default=None,
                      help="converted .msgpack or official .pth/.npz; random weights if omitted")
  parser.add_argument("--input", required=True, help="an image file or a folder of images")
  parser.add_argument("--output_dir", required=True)
  parser.add_argument("--out_indices", default="0,1,2,3")
  parser.add_argument("--max_side", type=int, default=None, help="shrink larger images to this side")
  parser.add_argument("--dtype", default="float32", choices=sorted(_DTYPES))
  parser.add_argument("--lda_mode", default="v1", choices=("v1", "main"))
  return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Any]:
  """Runs the command; returns ``{image path: {level: shape}}``."""
  args = parse_args(sys.argv[1:] if argv is None else argv)
  images = list_images(pathlib.Path(args.input))
  out_indices = tuple(int(i) for i in args.out_indices.split(","))
  module, variables = build_extractor(args.model, args.checkpoint, out_indices=out_indices,
                                      dtype=_DTYPES[args.dtype], lda_mode=args.lda_mode)
  extract = feature_fn(module, variables)
  output_dir = pathlib.Path(args.output_dir)
  output_dir.mkdir(parents=True, exist_ok=True)
  shapes = {}
  root = pathlib.Path(args.input) if pathlib.Path(args.input).is_dir() else None
  for path in tqdm(images, desc="features", unit="img"):
    image = load_rgb(path, args.max_side)
    features = extract(image)
    name = path.relative_to(root) if root else pathlib.Path(path.name)
    target = (output_dir / name).with_suffix(".npz")
    target.parent.mkdir(parents=True, exist_ok=True)
    np.savez(target, image_size=np.asarray(image.shape[:2]), **features)
    shapes[str(path)] = {k: v.shape for k, v in features.items()}
    tqdm.write(f"{path.name} {image.shape[0]}x{image.shape[1]}: "
               + ", ".join(f"{k} {v.shape}" for k, v in features.items()))
  return shapes


if __name__ == "__main__":
  main()
