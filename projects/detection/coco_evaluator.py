"""COCO box and mask evaluation (pycocotools ``COCOeval``, ``bbox`` and ``segm``) as a trainer ``Evaluator``.

``process_fn`` runs the model's ``predict`` on the devices (padded detections in original-image coordinates)
and carries ``image/id`` and ``batch_mask`` along; ``update`` fetches the global result to the host
(``sharding.to_host``, so every process sees every image) and keeps the valid detections of real examples;
``compute`` maps contiguous labels to COCO category ids, writes the detections as a COCO results JSON, and
evaluates them against the original annotation file over the images seen in the pass.

Metrics: ``AP`` (IoU .50:.95), ``AP50``, ``AP75``, ``APs``, ``APm``, ``APl`` -- COCOeval's first six stats
(``maxDets=100``), in [0, 1]; an area range without ground truth gives -1, as COCOeval. A pass without any
detection gives AP 0 (no crash).

Instance segmentation (``iou_types=("bbox", "segm")``, Mask R-CNN): ``predict`` also returns ``mask_probs``
(B, K, S, S), each detection's mask probabilities over its box. ``update`` pastes them with the boxes at the
*original* image size (``mask_paste.paste_masks_numpy``, threshold ``mask_threshold``), RLE-encodes them
(``counts`` as str) and keeps them as COCO ``segm`` results with the box scores; ``compute`` writes
``coco_segm_detections.json`` and adds the same six stats of ``COCOeval(iouType="segm")`` as ``mask_AP``,
``mask_AP50``, ... (and ``num_masks``).
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
from projects.detection import mask_paste
from projects.detection.data import rle

METRIC_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl")
MASK_METRIC_NAMES = tuple(f"mask_{name}" for name in METRIC_NAMES)
RESULTS_FILE = "coco_bbox_detections.json"
SEGM_RESULTS_FILE = "coco_segm_detections.json"
IOU_TYPES = ("bbox", "segm")
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


def masks_to_coco(masks: np.ndarray, scores: np.ndarray, labels: np.ndarray, image_id: int,
                  category_ids: Sequence[int]) -> List[Dict[str, Any]]:
  """COCO ``segm`` result entries of one image's ``(K, H, W)`` binary masks (RLE, ``counts`` as str)."""
  return [{"image_id": int(image_id), "category_id": int(category_ids[int(label)]), "segmentation": counts,
           "score": float(score)}
          for counts, score, label in zip(rle.encode_masks(masks), scores, labels)]


def _empty_results(coco_gt: COCO) -> COCO:
  """A results ``COCO`` without detections (``loadRes`` rejects an empty list); it scores AP 0."""
  coco_dt = COCO()
  coco_dt.dataset = {"images": coco_gt.dataset["images"], "categories": coco_gt.dataset["categories"],
                     "annotations": []}
  _quiet(coco_dt.createIndex)
  return coco_dt


def coco_stats(coco_gt: COCO, results: List[Dict[str, Any]], iou_type: str, image_ids: Sequence[int]
               ) -> Dict[str, float]:
  """COCOeval's six main stats (``AP`` ... ``APl``) of ``results`` over ``image_ids``, and its summary text."""
  coco_dt = _quiet(coco_gt.loadRes, results)[0] if results else _empty_results(coco_gt)
  coco_eval = COCOeval(coco_gt, coco_dt, iouType=iou_type)
  coco_eval.params.imgIds = sorted(image_ids)
  _, summary = _quiet(lambda: (coco_eval.evaluate(), coco_eval.accumulate(), coco_eval.summarize()))
  logging.info("COCO %s evaluation of %d images, %d results:\n%s", iou_type, len(image_ids), len(results),
               summary)
  return {name: float(value) for name, value in zip(METRIC_NAMES, coco_eval.stats[:6])}


class CocoEvaluator(evaluation.Evaluator):
  """COCO bbox (and segm) AP over one pass of the validation split (see the module docstring)."""

  def __init__(self, annotation_file: str, category_ids: Sequence[int], predict_fn: PredictFn,
               output_dir: Optional[str] = None, iou_types: Sequence[str] = ("bbox",),
               mask_threshold: float = 0.5):
    """Creates the evaluator.

    Args:
      annotation_file: the COCO instances JSON of the evaluated split (``meta_data["annotation_file"]``).
      category_ids: contiguous label -> COCO category id (``meta_data["category_ids"]``).
      predict_fn: jittable ``predict(outputs, batch)`` of the detection model (padded detections; with
        ``"segm"`` also ``mask_probs``).
      output_dir: where ``compute`` writes ``coco_bbox_detections.json`` (and ``coco_segm_detections.json``)
        on process 0; None to skip.
      iou_types: ``("bbox",)`` or ``("bbox", "segm")``.
      mask_threshold: binarisation threshold of the pasted mask probabilities (mmdet ``mask_thr_binary``).
    """
    if not os.path.isfile(annotation_file):
      raise FileNotFoundError(f"COCO annotation file not found: {annotation_file}")
    iou_types = tuple(iou_types)
    if "bbox" not in iou_types or not set(iou_types) <= set(IOU_TYPES):
      raise ValueError(f"iou_types must be ('bbox',) or ('bbox', 'segm'), got {iou_types}")
    self.iou_types = iou_types
    self.with_masks = "segm" in iou_types
    self.mask_threshold = float(mask_threshold)
    self.annotation_file = annotation_file
    self.category_ids = [int(c) for c in category_ids]
    self.predict_fn = predict_fn
    self.output_dir = output_dir
    self._coco_gt: Optional[COCO] = None
    self.reset()

  @classmethod
  def from_meta_data(cls, meta_data: Mapping[str, Any], predict_fn: PredictFn,
                     output_dir: Optional[str] = None, **kwargs: Any) -> "CocoEvaluator":
    """The evaluator of the dataset described by ``get_dataset(...).meta_data``."""
    return cls(meta_data["annotation_file"], meta_data["category_ids"], predict_fn, output_dir, **kwargs)

  def reset(self) -> None:
    self._results: List[Dict[str, Any]] = []
    self._segm_results: List[Dict[str, Any]] = []
    self._image_ids: set = set()

  def process_fn(self, outputs: Any, batch: Mapping[str, Any]) -> Dict[str, Any]:
    detections = self.predict_fn(outputs, batch)
    processed = {"boxes": detections["boxes"], "scores": detections["scores"], "labels": detections["labels"],
                 "valid": detections["valid"], "image/id": batch["label"]["image/id"],
                 "batch_mask": batch["batch_mask"]}
    if self.with_masks:
      if "mask_probs" not in detections:
        raise ValueError("segm evaluation needs the model's predict() to return 'mask_probs' (B, K, S, S)")
      processed.update(mask_probs=detections["mask_probs"], orig_size=batch["label"]["orig_size"])
    return processed

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
      if self.with_masks:
        masks = mask_paste.paste_masks_numpy(processed["mask_probs"][i][keep], processed["boxes"][i][keep],
                                             tuple(processed["orig_size"][i]), self.mask_threshold)
        self._segm_results.extend(masks_to_coco(masks, processed["scores"][i][keep],
                                                processed["labels"][i][keep], image_id, self.category_ids))

  def _ground_truth(self) -> COCO:
    if self._coco_gt is None:
      self._coco_gt, _ = _quiet(COCO, self.annotation_file)
      unknown = sorted(set(self.category_ids) - set(self._coco_gt.getCatIds()))
      if unknown:
        raise ValueError(f"category ids {unknown} of the dataset are not in {self.annotation_file}")
    return self._coco_gt

  def _write_results(self, results: List[Dict[str, Any]], name: str) -> None:
    if self.output_dir is None or jax.process_index() != 0:
      return
    os.makedirs(self.output_dir, exist_ok=True)
    path = os.path.join(self.output_dir, name)
    with open(path + ".tmp", "w") as f:
      json.dump(results, f)
    os.replace(path + ".tmp", path)
    logging.info("wrote %d COCO results to %s", len(results), path)

  def compute(self) -> Dict[str, Any]:
    """COCO bbox (and segm) metrics of the pass (and the results JSONs in ``output_dir``)."""
    if not self._image_ids:
      raise ValueError("CocoEvaluator.compute: no evaluated image (every example had batch_mask 0)")
    coco_gt = self._ground_truth()
    missing = sorted(self._image_ids - set(coco_gt.getImgIds()))
    if missing:
      raise ValueError(f"image ids {missing[:5]} (of {len(missing)}) are not in {self.annotation_file}; "
                       "is it the annotation file of the evaluated split?")
    self._write_results(self._results, RESULTS_FILE)
    results: Dict[str, Any] = coco_stats(coco_gt, self._results, "bbox", self._image_ids)
    results["num_detections"] = float(len(self._results))
    if self.with_masks:
      self._write_results(self._segm_results, SEGM_RESULTS_FILE)
      stats = coco_stats(coco_gt, self._segm_results, "segm", self._image_ids)
      results.update({f"mask_{name}": value for name, value in stats.items()})
      results["num_masks"] = float(len(self._segm_results))
    return results
