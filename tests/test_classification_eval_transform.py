"""The official evaluation transform (Resize 256 bicubic + CenterCrop 224 + Normalize) against its reference.

The reference crops (tests/fixtures/classification/official_eval.npz) were computed by
tests/make_classification_fixtures.py, which restates torchvision's code on PIL images. Tolerance: the uint8
crops must be identical; the normalised float32 inputs agree within 1e-5 (ours divides 0-255 pixels by
255 * std, torch divides x / 255 by std: float32 rounding only).
"""

import io
import pathlib
import sys

import numpy as np
import pytest

from projects.classification.data import eval_transform

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import make_classification_fixtures as fixtures  # noqa: E402  (the generator script beside this test)

REFERENCE = np.load(fixtures.OUT)


@pytest.mark.parametrize("case", fixtures.CASES, ids=lambda c: f"{c[1]}x{c[2]}")
def test_crop_matches_the_official_transform_pixel_for_pixel(case):
  seed, width, height = case
  image = fixtures.make_image(seed, width, height)
  expected = REFERENCE[f"crop_{seed}_{width}x{height}"]
  ours = eval_transform.eval_pil(image)
  assert ours.shape == (224, 224, 3) and ours.dtype == np.uint8
  np.testing.assert_array_equal(ours, expected)
  normalised = eval_transform.eval_input(image)
  np.testing.assert_allclose(normalised, fixtures.official_tensor(expected), atol=1e-5, rtol=0)


def test_sizes_and_offsets_follow_torchvision():
  assert eval_transform.resize_size_for_crop(224) == 256 and eval_transform.resize_size_for_crop(384) == 438
  assert eval_transform.resize_shorter_size(500, 333, 256) == (384, 256)  # int(256 * 500 / 333) = 384.38 -> 384
  assert eval_transform.resize_shorter_size(257, 640, 256) == (256, 637)
  assert eval_transform.center_crop_box(257, 257, 224) == (16, 16, 240, 240)  # round(16.5) = 16 (half to even)
  assert eval_transform.center_crop_box(259, 300, 224) == (18, 38, 242, 262)  # round(17.5) = 18


def test_the_tf_data_path_gives_the_same_input():
  tf = pytest.importorskip("tensorflow")
  from projects.classification.data import transforms  # pylint: disable=import-outside-toplevel
  seed, width, height = fixtures.CASES[2]
  buffer = io.BytesIO()
  fixtures.make_image(seed, width, height).save(buffer, format="PNG")
  ours = transforms.eval_image(tf.constant(buffer.getvalue())).numpy()
  expected = fixtures.official_tensor(REFERENCE[f"crop_{seed}_{width}x{height}"])
  np.testing.assert_allclose(ours, expected, atol=1e-5, rtol=0)
