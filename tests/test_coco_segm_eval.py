"""COCO segm evaluation: host-side mask pasting, RLE results, COCOeval on the original image sizes."""

import json
import os

import numpy as np
from pycocotools import mask as mask_util
import pytest

from projects.detection import coco_evaluator
from projects.detection import mask_paste

CATEGORY_IDS = [3, 7]
SIDE = 16  # every instance's box is SIDE x SIDE at integer corners, so SIDE x SIDE probabilities paste exactly
K = 4  # detection slots per image


def _disc(side):
  yy, xx = np.mgrid[:side, :side] + 0.5
  return ((yy - side / 2) ** 2 + (xx - side / 2) ** 2 <= (side / 2 - 0.5) ** 2).astype(np.uint8)


@pytest.fixture(scope="module")
def annotations(tmp_path_factory):
  """A hand-made instances file: three images of different sizes, polygons, compressed RLE and a crowd."""
  images = [{"id": 11, "file_name": "a.jpg", "height": 40, "width": 60},
            {"id": 12, "file_name": "b.jpg", "height": 70, "width": 50},
            {"id": 13, "file_name": "c.jpg", "height": 48, "width": 48}]
  anns = []

  def add(image, category_id, x0, y0, segm, iscrowd=0):
    anns.append({"id": len(anns) + 1, "image_id": image["id"], "category_id": category_id, "iscrowd": iscrowd,
                 "bbox": [x0, y0, SIDE, SIDE], "area": float(SIDE * SIDE), "segmentation": segm})

  def disc_rle(image, x0, y0):
    full = np.zeros((image["height"], image["width"]), np.uint8)
    full[y0:y0 + SIDE, x0:x0 + SIDE] = _disc(SIDE)
    rle = mask_util.encode(np.asfortranarray(full))
    return {"size": rle["size"], "counts": rle["counts"].decode()}

  add(images[0], 3, 4, 6, [[4 + SIDE / 2, 6, 4 + SIDE, 6 + SIDE, 4, 6 + SIDE]])  # triangle polygon
  add(images[0], 7, 30, 10, disc_rle(images[0], 30, 10))
  add(images[1], 7, 10, 40, disc_rle(images[1], 10, 40))
  add(images[1], 3, 20, 5, disc_rle(images[1], 20, 5), iscrowd=1)  # a crowd region: no detection needed
  add(images[2], 3, 8, 8, [[8, 8, 8 + SIDE, 8, 8 + SIDE, 8 + SIDE, 8, 8 + SIDE]])  # square polygon
  path = str(tmp_path_factory.mktemp("segm") / "instances_val.json")
  with open(path, "w") as f:
    json.dump({"images": images, "annotations": anns,
               "categories": [{"id": 3, "name": "a"}, {"id": 7, "name": "b"}]}, f)
  return path, images, anns


def _gt_mask(ann, image):
  segm = ann["segmentation"]
  if isinstance(segm, list):
    rle = mask_util.merge(mask_util.frPyObjects(segm, image["height"], image["width"]))
  else:
    rle = {"size": segm["size"], "counts": segm["counts"].encode()}
  return mask_util.decode(rle)


def _processed(images, anns, perfect=True):
  """One processed batch as the evaluator's ``update`` receives it (plus a filler row to be ignored)."""
  batch = len(images) + 1
  out = {"boxes": np.zeros((batch, K, 4), np.float32), "scores": np.zeros((batch, K), np.float32),
         "labels": np.full((batch, K), -1, np.int32), "valid": np.zeros((batch, K), bool),
         "mask_probs": np.zeros((batch, K, SIDE, SIDE), np.float32), "image/id": np.full(batch, -1),
         "batch_mask": np.zeros(batch, np.float32), "orig_size": np.ones((batch, 2), np.int32)}
  out["valid"][-1] = True  # the filler row's garbage must not count
  for i, image in enumerate(images):
    out["image/id"][i], out["batch_mask"][i] = image["id"], 1.0
    out["orig_size"][i] = image["height"], image["width"]
    mine = [a for a in anns if a["image_id"] == image["id"] and not a["iscrowd"]] if perfect else []
    for k, ann in enumerate(mine):
      x0, y0, w, h = ann["bbox"]
      out["boxes"][i, k] = x0, y0, x0 + w, y0 + h
      out["scores"][i, k] = 0.9 - 0.1 * k
      out["labels"][i, k] = CATEGORY_IDS.index(ann["category_id"])
      out["valid"][i, k] = True
      out["mask_probs"][i, k] = _gt_mask(ann, image)[y0:y0 + h, x0:x0 + w]
  return out


def _evaluate(evaluator, processed):
  evaluator.reset()
  evaluator.update(processed, host_batch={})
  return evaluator.compute()


def test_perfect_masks_score_ap_one_and_write_rle(annotations, tmp_path):
  path, images, anns = annotations
  evaluator = coco_evaluator.CocoEvaluator(path, CATEGORY_IDS, lambda outputs, batch: outputs, str(tmp_path),
                                       iou_types=("bbox", "segm"))
  results = _evaluate(evaluator, _processed(images, anns))
  for name in ("AP", "AP50", "AP75", "mask_AP", "mask_AP50", "mask_AP75"):
    assert results[name] == pytest.approx(1.0), (name, results)
  assert set(coco_evaluator.MASK_METRIC_NAMES) <= set(results)
  written = json.load(open(os.path.join(str(tmp_path), coco_evaluator.SEGM_RESULTS_FILE)))
  assert len(written) == results["num_masks"] == 4  # the crowd and the filler row give none
  by_image = {image["id"]: image for image in images}
  for entry in written:  # RLE at the original size of its image, equal to the ground truth
    image = by_image[entry["image_id"]]
    assert entry["segmentation"]["size"] == [image["height"], image["width"]]
    assert isinstance(entry["segmentation"]["counts"], str)
    decoded = mask_util.decode({**entry["segmentation"], "counts": entry["segmentation"]["counts"].encode()})
    gt = [a for a in anns if a["image_id"] == image["id"] and not a["iscrowd"]
          and a["category_id"] == entry["category_id"]]
    np.testing.assert_array_equal(decoded, _gt_mask(gt[0], image))


def test_empty_or_shifted_masks_score_low(annotations, tmp_path):
  path, images, anns = annotations
  evaluator = coco_evaluator.CocoEvaluator(path, CATEGORY_IDS, lambda outputs, batch: outputs, str(tmp_path),
                                       iou_types=("bbox", "segm"))
  empty = _evaluate(evaluator, _processed(images, anns, perfect=False))
  assert empty["mask_AP"] == 0.0 and empty["AP"] == 0.0 and empty["num_masks"] == 0
  assert json.load(open(os.path.join(str(tmp_path), coco_evaluator.SEGM_RESULTS_FILE))) == []
  shifted = _processed(images, anns)
  shifted["mask_probs"] = np.roll(shifted["mask_probs"], SIDE // 2, axis=-1)  # right boxes, wrong masks
  results = _evaluate(evaluator, shifted)
  assert results["AP"] == pytest.approx(1.0) and results["mask_AP"] < 0.2


def test_segm_needs_mask_probs(annotations):
  evaluator = coco_evaluator.CocoEvaluator(annotations[0], CATEGORY_IDS, lambda outputs, batch: outputs,
                                       iou_types=("bbox", "segm"))
  with pytest.raises(ValueError, match="mask_probs"):
    evaluator.process_fn({"boxes": 0, "scores": 0, "labels": 0, "valid": 0},
                         {"label": {"image/id": 0, "orig_size": 0}, "batch_mask": 0})
  with pytest.raises(ValueError, match="iou_types"):
    coco_evaluator.CocoEvaluator(annotations[0], CATEGORY_IDS, None, iou_types=("segm",))


def _grid_sample_paste(probs, box, shape, threshold=0.5):
  """Per-pixel reference of mmdet's _do_paste_mask (torch grid_sample, align_corners=False, zero padding)."""
  size = probs.shape[0]
  out = np.zeros(shape, np.uint8)
  x0, y0, x1, y1 = box
  for i in range(shape[0]):
    for j in range(shape[1]):
      gx = (j + 0.5 - x0) / (x1 - x0) * 2 - 1
      gy = (i + 0.5 - y0) / (y1 - y0) * 2 - 1
      ix, iy = ((gx + 1) * size - 1) / 2, ((gy + 1) * size - 1) / 2
      value = 0.0
      for yy, wy in ((np.floor(iy), 1 - (iy - np.floor(iy))), (np.floor(iy) + 1, iy - np.floor(iy))):
        for xx, wx in ((np.floor(ix), 1 - (ix - np.floor(ix))), (np.floor(ix) + 1, ix - np.floor(ix))):
          if 0 <= yy < size and 0 <= xx < size:
            value += wy * wx * probs[int(yy), int(xx)]
      out[i, j] = value >= threshold
  return out


def test_paste_matches_grid_sample_reference():
  rng = np.random.default_rng(0)
  probs = rng.uniform(size=(3, 7, 7))
  probs[2] = 1.0  # a full mask: its paste covers the box and nothing beyond it
  boxes = np.array([[3.3, 2.7, 17.9, 11.2], [-4.0, 5.5, 9.0, 30.0], [10.5, 0.2, 23.0, 8.0]])
  pasted = mask_paste.paste_masks_numpy(probs, boxes, (24, 20))
  assert pasted.shape == (3, 24, 20) and pasted.dtype == np.uint8
  for k in range(3):
    np.testing.assert_array_equal(pasted[k], _grid_sample_paste(probs[k], boxes[k], (24, 20)))
  assert pasted[2, 1:8, 11:20].all() and not pasted[2, 9:].any() and not pasted[2, :, :10].any()


def test_host_paste_equals_the_models_jax_paste():
  """The evaluator's numpy paste and the model's jitted ``heads.detection.mask_ops.paste_masks`` agree."""
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from heads.detection.mask_ops import paste_masks  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(1)
  probs = rng.uniform(size=(12, 28, 28)).astype(np.float32)
  corners = rng.uniform(-5, 60, size=(12, 2))
  boxes = np.concatenate([corners, corners + rng.uniform(1, 50, size=(12, 2))], 1).astype(np.float32)
  expected = np.asarray(paste_masks(jnp.asarray(probs), jnp.asarray(boxes), (70, 90)))
  pasted = mask_paste.paste_masks_numpy(probs, boxes, (70, 90))
  assert expected.sum() > 1000
  np.testing.assert_array_equal(pasted, expected)
