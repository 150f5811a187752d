"""COCO box evaluation (pycocotools) of padded detections, and the detection PNGs."""

import json
import os

import numpy as np
from PIL import Image
import pytest

from projects.detection import coco_evaluator
from projects.detection import visualize
from projects.detection.data import make_synthetic_coco
from backbones.preprocess import IMAGENET_MEAN, IMAGENET_STD

CATEGORY_IDS = [3, 7, 12]
K = 5  # detection slots per image


@pytest.fixture(scope="module")
def val_json(tmp_path_factory):
  """(annotation file, its content) of a generated validation split (with a crowd and an empty image)."""
  root = str(tmp_path_factory.mktemp("coco"))
  path = make_synthetic_coco.make_synthetic_coco(root, num_train=2, num_val=6, seed=3)["val2017"]
  return path, json.load(open(path))


def _batches(coco, detections_of, batch_size=4):
  """Processed batches in the evaluator's format: the images in order, the last batch completed by filler
  entries whose (wrong) detections must be ignored."""
  images = coco["images"]
  for start in range(0, len(images), batch_size):
    chunk = images[start:start + batch_size]
    batch = {"boxes": np.full((batch_size, K, 4), 5.0, np.float32), "scores": np.ones((batch_size, K)),
             "labels": np.zeros((batch_size, K), np.int32), "valid": np.ones((batch_size, K), bool),
             "image/id": np.full(batch_size, -1), "batch_mask": np.zeros(batch_size, np.float32)}
    for i, info in enumerate(chunk):
      boxes, labels = detections_of(info["id"])
      n = len(boxes)
      batch["boxes"][i] = 0.0
      batch["boxes"][i, :n] = boxes
      batch["labels"][i] = -1
      batch["labels"][i, :n] = labels
      batch["valid"][i] = np.arange(K) < n
      batch["image/id"][i], batch["batch_mask"][i] = info["id"], 1.0
    yield batch


def _ground_truth(coco):
  def detections_of(image_id):
    anns = [a for a in coco["annotations"] if a["image_id"] == image_id and not a["iscrowd"]]
    boxes = [[a["bbox"][0], a["bbox"][1], a["bbox"][0] + a["bbox"][2], a["bbox"][1] + a["bbox"][3]]
             for a in anns]
    return np.asarray(boxes, np.float32).reshape(-1, 4), [CATEGORY_IDS.index(a["category_id"]) for a in anns]
  return detections_of


def _evaluate(evaluator, batches):
  evaluator.reset()
  for batch in batches:
    # the trainer calls process_fn inside the jitted eval step; here predict_fn passes detections through
    model_batch = {"label": {"image/id": batch.pop("image/id")}, "batch_mask": batch.pop("batch_mask")}
    evaluator.update(evaluator.process_fn(batch, model_batch), host_batch=model_batch)
  return evaluator.compute()


def test_perfect_detections_score_ap_one(val_json, tmp_path):
  path, coco = val_json
  evaluator = coco_evaluator.CocoEvaluator(path, CATEGORY_IDS, lambda outputs, batch: outputs, str(tmp_path))
  results = _evaluate(evaluator, _batches(coco, _ground_truth(coco)))
  for name in ("AP", "AP50", "AP75"):
    assert results[name] == pytest.approx(1.0), (name, results)
  assert set(coco_evaluator.METRIC_NAMES) <= set(results)
  written = json.load(open(os.path.join(str(tmp_path), coco_evaluator.RESULTS_FILE)))
  num_gt = sum(not a["iscrowd"] for a in coco["annotations"])
  assert len(written) == num_gt == results["num_detections"]  # filler detections were skipped
  assert {d["category_id"] for d in written} <= set(CATEGORY_IDS)
  first = next(a for a in coco["annotations"] if not a["iscrowd"])
  match = [d for d in written
           if d["image_id"] == first["image_id"] and d["category_id"] == first["category_id"]]
  assert any(np.allclose(d["bbox"], first["bbox"]) for d in match)  # xyxy -> COCO xywh


def test_wrong_category_mapping_and_no_detections_score_zero(val_json, tmp_path):
  path, coco = val_json
  evaluator = coco_evaluator.CocoEvaluator(path, CATEGORY_IDS[::-1], lambda outputs, batch: outputs,
                                       str(tmp_path))
  results = _evaluate(evaluator, _batches(coco, _ground_truth(coco)))
  assert results["AP"] < 0.5  # labels mapped to the wrong ids: red and blue swap, only green discs match
  empty = _evaluate(evaluator, _batches(coco, lambda i: (np.zeros((0, 4), np.float32), [])))
  assert empty["AP"] == 0.0 and empty["AP50"] == 0.0 and empty["num_detections"] == 0
  assert json.load(open(os.path.join(str(tmp_path), coco_evaluator.RESULTS_FILE))) == []


def test_evaluator_rejects_a_foreign_annotation_file(val_json):
  path, coco = val_json
  evaluator = coco_evaluator.CocoEvaluator(path, [3, 7, 99], lambda outputs, batch: outputs)
  with pytest.raises(ValueError, match=r"category ids \[99\]"):
    _evaluate(evaluator, _batches(coco, _ground_truth(coco)))


def test_save_batch_pngs_draws_ground_truth_and_detections(tmp_path):
  image = np.full((2, 64, 96, 3), 128, np.uint8)
  inputs = (image - np.asarray(IMAGENET_MEAN)) / np.asarray(IMAGENET_STD)
  inputs[:, 48:] = 0.0  # padding below the valid 48 x 80 region
  batch = {"inputs": inputs.astype(np.float32), "batch_mask": np.array([1.0, 0.0]),
           "label": {"boxes": np.array([[[10, 10, 30, 30]], [[0, 0, 1, 1]]], np.float32),
                     "labels": np.array([[0], [-1]], np.int32), "image/id": np.array([42, -1]),
                     "image_size": np.array([[48, 80], [48, 80]]), "scale": np.array([[0.5, 0.5]] * 2)}}
  predictions = {"boxes": np.array([[[80, 40, 120, 80]], [[0, 0, 1, 1]]], np.float32),  # original pixels
                 "scores": np.array([[0.9], [0.9]]), "labels": np.array([[1], [1]]),
                 "valid": np.array([[True], [True]])}
  paths = visualize.save_batch_pngs(str(tmp_path), batch, predictions, ["a", "b"])
  assert [os.path.basename(p) for p in paths] == ["42.png"]  # filler skipped
  drawn = np.asarray(Image.open(paths[0]))
  assert drawn.shape == (48, 80, 3)
  np.testing.assert_array_equal(drawn[20, 10], visualize.GT_COLOUR)  # ground-truth box edge, input frame
  np.testing.assert_array_equal(drawn[30, 40], visualize.class_colour(1))  # detection scaled by 0.5
  np.testing.assert_array_equal(drawn[5, 70], [128, 128, 128])  # untouched background
