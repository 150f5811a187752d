"""COCO box evaluation (pycocotools ``COCOeval``, ``iouType="bbox"``) as a trainer ``Evaluator``.

``process_fn`` runs the model's ``predict`` on the devices (padded detections in original-image coordinates)
and carries ``image/id`` and ``batch_mask`` along; ``update`` fetches the global result to the host
(``sharding.to_host``, so every process sees every image) and keeps the valid detections of real examples;
``compute`` maps contiguous labels to COCO category ids, writes the detections as a COCO results JSON, and
evaluates them against the original annotation file over the images seen in the pass.

Metrics: ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` -- COCOeval's first six stats
(``maxDets=100``), in [0, 1]; an area range without ground truth gives -1, as COCOeval. A pass without any
detection gives AP 0 (no crash).
"""

import contextlib
import io
import json
import os
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence

from absl import logging
import jax
import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from projects.common import evaluation
from projects.common import sharding

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
RESULTS_FILE = "coco_bbox_detections.json"
# predict(outputs, batch) -> {"boxes" (B, K, 4) xyxy in original pixels, "scores", "labels" (contiguous),
# "valid"}
PredictFn = Callable[[Any, Mapping[str, Any]], Mapping[str, Any]]


def _quiet(fn, *args):
  """Calls ``fn(*args)`` with pycocotools' prints captured; returns ``(result, printed text)``."""
  buffer = io.StringIO()
  with contextlib.redirect_stdout(buffer):
    result = fn(*args)
  return result, buffer.getvalue()


def detections_to_coco(boxes: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: int,
                       category_ids: Sequence[int]) -> List[Dict[str, Any]]:
  """COCO result entries (``bbox`` = ``[x, y, w, h]``) of one image's xyxy detections (contiguous labels)."""
  return [{"image_id": int(image_id), "category_id": int(category_ids[int(label)]),
           "bbox": [float(x0), float(y0), float(x1 - x0), float(y1 - y0)], "score": float(score)}
          for (x0, y0, x1, y1), score, label in zip(boxes, scores, labels)]


class CocoEvaluator(evaluation.Evaluator):
  """COCO bbox AP over one pass of the validation split (see the module docstring)."""

  def __init__(self, annotation_file: str, category_ids: Sequence[int], predict_fn: PredictFn,
               output_dir: Optional[str] = None):
    """Creates the evaluator.

    Args:
      annotation_file: the COCO instances JSON of the evaluated split (``meta_data["annotation_file"]``).
      category_ids: contiguous label -> COCO category id (``meta_data["category_ids"]``).
      predict_fn: jittable ``predict(outputs, batch)`` of the detection model (padded detections).
      output_dir: where ``compute`` writes ``coco_bbox_detections.json`` (process 0 only); None to skip.
    """
    if not os.path.isfile(annotation_file):
      raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
    self.annotation_file = annotation_file
    self.category_ids = [int(c) for c in category_ids]
    self.predict_fn = predict_fn
    self.output_dir = output_dir
    self._coco_gt: Optional[COCO] = None
    self.reset()

  @classmethod
  def from_meta_data(cls, meta_data: Mapping[str, Any], predict_fn: PredictFn,
                     output_dir: Optional[str] = None) -> "CocoEvaluator":
    """The evaluator of the dataset described by ``get_dataset(...).meta_data``."""
    return cls(meta_data["annotation_file"], meta_data["category_ids"], predict_fn, output_dir)

  def reset(self) -> None:
    self._results: List[Dict[str, Any]] = []
    self._image_ids: set = set()

  def process_fn(self, outputs: Any, batch: Mapping[str, Any]) -> Dict[str, Any]:
    detections = self.predict_fn(outputs, batch)
    return {"boxes": detections["boxes"], "scores": detections["scores"], "labels": detections["labels"],
            "valid": detections["valid"], "image/id": batch["label"]["image/id"],
            "batch_mask": batch["batch_mask"]}

  def update(self, processed: Mapping[str, Any], host_batch: Mapping[str, Any]) -> None:
    """Keeps the valid detections of the real examples of a (global) processed batch."""
    del host_batch  # ``processed`` already holds the global batch's ids and mask
    processed = jax.tree.map(np.asarray, sharding.to_host(dict(processed)))
    for i in np.flatnonzero(processed["batch_mask"] > 0):
      image_id = int(processed["image/id"][i])
      keep = processed["valid"][i].astype(bool) & (processed["labels"][i] >= 0)
      self._image_ids.add(image_id)
      self._results.extend(detections_to_coco(processed["boxes"][i][keep], processed["scores"][i][keep],
                                              processed["labels"][i][keep], image_id, self.category_ids))

  def _ground_truth(self) -> COCO:
    if self._coco_gt is None:
      self._coco_gt, _ = _quiet(COCO, self.annotation_file)
      unknown = sorted(set(self.category_ids) - set(self._coco_gt.getCatIds()))
      if unknown:
        raise ValueError(f"category ids {unknown} of the dataset are not in {self.annotation_file}")
    return self._coco_gt

  def _write_results(self) -> None:
    if self.output_dir is None or jax.process_index() != 0:
      return
    os.makedirs(self.output_dir, exist_ok=True)
    path = os.path.join(self.output_dir, RESULTS_FILE)
    with open(path, "w") as f:
      json.dump(self._results, f)
    logging.info("wrote %d COCO detections to %s", len(self._results), path)

  def compute(self) -> Dict[str, Any]:
    """COCO bbox metrics of the pass (and the results JSON in ``output_dir``)."""
    if not self._image_ids:
      raise ValueError("CocoEvaluator.compute: no evaluated image (every example had batch_mask 0)")
    coco_gt = self._ground_truth()
    missing = sorted(self._image_ids - set(coco_gt.getImgIds()))
    if missing:
      raise ValueError(f"image ids {missing[:5]} (of {len(missing)}) are not in {self.annotation_file}; "
                       "is it the annotation file of the evaluated split?")
    self._write_results()
    if self._results:
      coco_dt, _ = _quiet(coco_gt.loadRes, self._results)
    else:  # loadRes rejects an empty list; an empty result set scores AP 0 wherever there is ground truth
      coco_dt = COCO()
      coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                         "annotations": []}
      _quiet(coco_dt.createIndex)
    coco_eval = COCOeval(coco_gt, coco_dt, iouType="bbox")
    coco_eval.params.imgIds = sorted(self._image_ids)
    _, summary = _quiet(lambda: (coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()))
    logging.info("COCO bbox evaluation of %d images, %d detections:\n%s", len(self._image_ids),
                 len(self._results), summary)
    results: Dict[str, Any] = {name: float(value) for name, value in zip(METRIC_NAMES, coco_eval.stats[:6])}
    results["num_detections"] = float(len(self._results))
    return results
