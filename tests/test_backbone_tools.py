"""The conversion and feature-extraction commands, run on the official fixture weights."""

import json

import jax.numpy as jnp
import numpy as np
from PIL import Image

from backbones import extract_features, load_converted
from projects import convert_checkpoint
from backbones.preprocess import normalize_image


def test_convert_then_extract_at_each_images_own_size(official_fixtures_dir, tmp_path):
  meta = json.loads((official_fixtures_dir / "public_backbone_v1.json").read_text())
  converted = tmp_path / "fixture.msgpack"
  assert convert_checkpoint.main(["--input", str(official_fixtures_dir / "public_backbone_v1.npz"),
                                  "--official_kwargs", json.dumps(meta["constructor_kwargs"]),
                                  "--output", str(converted)]) == 0
  module, variables = load_converted(converted)

  images = tmp_path / "images"
  (images / "sub").mkdir(parents=True)
  rng = np.random.default_rng(0)
  valid = rng.integers(0, 255, (96, 160, 3), dtype=np.uint8)
  odd = rng.integers(0, 255, (75, 130, 3), dtype=np.uint8)
  Image.fromarray(valid).save(images / "valid.png")
  Image.fromarray(odd).save(images / "sub" / "odd.png")
  out_dir = tmp_path / "features"
  shapes = extract_features.main(["--checkpoint", str(converted), "--input", str(images),
                                  "--output_dir", str(out_dir)])
  assert len(shapes) == 2

  odd_features = np.load(out_dir / "sub" / "odd.npz")
  assert list(odd_features["image_size"]) == [75, 130]
  for i, c in enumerate((32, 64, 128, 256)):
    stride = 4 * 2 ** i
    assert odd_features[f"stage_{i + 1}"].shape == (-(-75 // stride), -(-130 // stride), c)

  # An image that is already a valid size gives exactly the network's output.
  valid_features = np.load(out_dir / "valid.npz")
  direct = module.apply(variables, jnp.asarray(normalize_image(valid)[None]))
  for name in direct:
    np.testing.assert_allclose(valid_features[name], np.asarray(direct[name][0]), atol=1e-5)
