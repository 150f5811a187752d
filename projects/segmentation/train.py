"""The ADE20K semantic-segmentation job: model, data, mIoU evaluator and outputs around the shared trainer.

``run(config, workdir)`` builds ``SegmentationModel`` and the ADE20K dataset (``get_dataset``), prepares the
synthetic stand-in first when ``config.synthetic_data`` is set, trains with
``projects.common.trainer.train_and_evaluate`` (mIoU every ``log_eval_steps`` and at the end, with mmseg's
protocol: each image inferred whole or by sliding window as ``config.inference`` says and scored at its
original size, ``SegmentationEvaluator``) and writes into
``workdir``: ``eval_results.json`` (mIoU, mAcc, aAcc), ``per_class_iou.tsv`` and ``predictions.png``
(image | ground truth | prediction for the first validation images).
"""

import os
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from projects.common import config_utils
from projects.common import model_io
from projects.common import evaluation
from projects.common import sharding
from projects import registry
from projects.common import trainer
from projects.segmentation import predictor
from projects.segmentation import visualize
from projects.segmentation.models.encoder_decoder import SegmentationModel


def original_label(raw: np.ndarray) -> np.ndarray:
  """Label codes (``orig_label``; ADE20K's raw values) to training labels: 0 (ignore, padding) -> -1,
  k -> k - 1."""
  return np.asarray(raw, np.int32) - 1


def confusion_counts(label: np.ndarray, prediction: np.ndarray, num_classes: int) -> np.ndarray:
  """(K, K) int64 counts (rows ground truth, columns prediction) over the labelled pixels (label >= 0)."""
  valid = label >= 0
  index = label[valid].astype(np.int64) * num_classes + prediction[valid]
  return np.bincount(index, minlength=num_classes ** 2).reshape(num_classes, num_classes)


class SegmentationEvaluator(evaluation.Evaluator):
  """mIoU with mmseg's protocol: every example predicted on its own and scored at its ORIGINAL size.

  With ``test_time`` (``predictor.TestTime``: whole or slide, optional multi-scale + flip) and batches that
  carry ``orig_label`` / ``orig_size`` (the ADE20K eval pipeline's), each real example's valid region
  (``image_size``, the AlignResized image; the bucket padding is never seen by the network) is inferred by a
  ``predictor.Segmenter`` holding the pass's variables (``begin_pass``), its logits are resized bilinearly to
  the annotation's original size and the argmax is compared with the original annotation: the padding of
  neither frame enters the score. Without them (other batches, or no ``test_time``) the trainer's bucket
  logits are scored in the resized frame, as before.

  ``compute()`` returns ``mIoU``, ``mAcc`` and ``aAcc`` (fractions) as scalars, plus ``per_class``
  (``{class name: {"IoU": .., "Acc": ..}}``), ``confusion_matrix`` (K, K) numpy, ``protocol``
  ("original_size" or "resized_frame") and ``examples``: the first ``num_examples`` real examples of the
  pass as ``{"inputs", "label", "prediction", "image_size"}`` numpy arrays (the resized frame, this process's
  share of the first batch), for pictures.
  """

  def __init__(self, model: SegmentationModel, num_examples: int = 4, test_time: Any = None) -> None:
    self.model = model
    self.num_examples = num_examples
    self.test_time = test_time
    self._segmenter = None
    self.reset()

  def reset(self) -> None:
    self._confusion = None
    self._official = None
    self._examples = None

  def begin_pass(self, state: Any) -> None:
    if self.test_time is None:
      return
    # Host copies: each process infers its own examples on its local devices (no cross-process program).
    variables = jax.tree.map(np.asarray, sharding.to_host(state.variables()))
    if self._segmenter is None:
      self._segmenter = predictor.Segmenter(self.model, variables, self.test_time)
      self._segmenter.compile_canvases()  # ahead of time, in parallel: one program per canvas
    else:  # same shapes: the compiled programs are reused
      self._segmenter.variables = jax.device_put(variables)

  def program_counts(self) -> Dict[str, Any]:
    """The segmenter's compiled programs and compile seconds (``Segmenter.program_counts``); {} before any."""
    return {} if self._segmenter is None else self._segmenter.program_counts()

  def process_fn(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
    return {"confusion": self.model.confusion_matrix(outputs, batch),
            "prediction": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)}

  def _score_original_size(self, host_batch: Mapping[str, Any]) -> None:
    num_classes = self.model.num_classes
    mask = np.asarray(host_batch.get("batch_mask", np.ones(len(host_batch["inputs"]))))
    for i in np.flatnonzero(mask > 0):
      h, w = (int(v) for v in host_batch["image_size"][i])
      oh, ow = (int(v) for v in host_batch["orig_size"][i])
      aligned = np.asarray(host_batch["inputs"][i, :h, :w])
      prediction = self._segmenter.predict_views(self._segmenter.views_from_aligned(aligned, (oh, ow)), (oh, ow))
      counts = confusion_counts(original_label(host_batch["orig_label"][i, :oh, :ow]), prediction, num_classes)
      self._official = counts if self._official is None else self._official + counts

  def update(self, processed: Any, host_batch: Mapping[str, Any]) -> None:
    if self._segmenter is not None and "orig_label" in host_batch:
      self._score_original_size(host_batch)
      if self._official is None:  # a batch of fillers only
        self._official = np.zeros((self.model.num_classes,) * 2, np.int64)
    else:
      # The confusion matrix stays on the devices (asynchronous additions).
      confusion = processed["confusion"]
      self._confusion = confusion if self._confusion is None else self._confusion + confusion
    if self._examples is None and self.num_examples > 0:  # only the first batch's predictions are fetched
      local = len(host_batch["label"])
      prediction = sharding.to_host(processed["prediction"])
      if jax.process_count() > 1:  # this process's rows of the global batch
        prediction = prediction[jax.process_index() * local:(jax.process_index() + 1) * local]
      keep = np.flatnonzero(np.asarray(host_batch.get("batch_mask", np.ones(local))) > 0)[:self.num_examples]
      self._examples = {"inputs": np.asarray(host_batch["inputs"])[keep],
                        "label": np.asarray(host_batch["label"])[keep], "prediction": prediction[keep]}
      if "image_size" in host_batch:
        self._examples["image_size"] = np.asarray(host_batch["image_size"])[keep]

  def compute(self) -> Dict[str, Any]:
    if self._official is not None:
      confusion = self._official
      if jax.process_count() > 1:  # every process scored its own examples
        from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
        confusion = np.asarray(multihost_utils.process_allgather(confusion)).sum(axis=0)
      protocol = "original_size"
    elif self._confusion is not None:
      confusion, protocol = sharding.to_host(self._confusion), "resized_frame"
    else:
      raise ValueError("SegmentationEvaluator.compute() called before any update()")
    metrics = self.model.global_metrics(confusion)
    per_class: Dict[str, Dict[str, float]] = {}
    for key, value in metrics.items():
      if "/" in key:
        kind, name = key.split("/", 1)
        per_class.setdefault(name, {})[kind] = value
    return {"mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "aAcc": metrics["aAcc"],
            "per_class": per_class, "confusion_matrix": np.asarray(confusion), "protocol": protocol,
            "examples": self._examples}


def ensure_synthetic_data(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """For ``config.synthetic_data``: generates the synthetic ADE20K release and builds it with the real tfds
  builder unless already built. Returns ``config`` with ``dataset.data_dir`` set.

  ``config.synthetic_data`` = ``dict(num_train, num_val, seed, short_side, max_aspect, manual_dir)``; the
  tfds data dir is ``config.dataset.data_dir`` (default ``<workdir>/data``), the generated release goes to
  ``manual_dir`` (default ``<data_dir>/synthetic_manual``).
  """
  synthetic = config.get("synthetic_data")
  if not synthetic:
    return config
  from projects.segmentation.data import ade20k_builder  # pylint: disable=g-import-not-at-top
  from projects.segmentation.data import make_synthetic_ade20k  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config)
  with config.unlocked():
    data_dir = os.path.abspath(config.dataset.get("data_dir") or os.path.join(workdir, "data"))
    config.dataset.data_dir = data_dir
  manual_dir = synthetic.get("manual_dir") or os.path.join(data_dir, "synthetic_manual")
  if ade20k_builder.Ade20kChallenge(data_dir=data_dir).is_prepared():
    return config

  def prepare() -> None:
    if not os.path.isdir(os.path.join(manual_dir, ade20k_builder.ROOT)):
      logging.info("writing the synthetic ADE20K release to %s", manual_dir)
      make_synthetic_ade20k.make_synthetic_ade20k(
          manual_dir, num_train=int(synthetic.get("num_train", 300)), num_val=int(synthetic.get("num_val", 60)),
          seed=int(synthetic.get("seed", 0)), short_side=tuple(synthetic.get("short_side", (192, 384))),
          max_aspect=float(synthetic.get("max_aspect", 2.0)))
    logging.info("building the ade20k_challenge tfds dataset in %s", data_dir)
    ade20k_builder.prepare(manual_dir, data_dir)

  sharding.run_on_first_process(prepare, "synthetic_ade20k_ready")
  return config


def build_dataset(config: ml_collections.ConfigDict) -> Any:
  """The ``Dataset`` registered as ``config.dataset_name`` (default ``ade20k``; ``pipeline.get_dataset`` serves
  ``ade20k``, ``cityscapes`` and ``segmentation_folder``)."""
  return registry.get_dataset_fn(config.get("dataset_name") or "ade20k")(config)


def write_results(results: Mapping[str, Any], workdir: str) -> Dict[str, str]:
  """Writes ``eval_results.json`` (scalars) and ``per_class_iou.tsv``; returns their paths."""
  paths = {"summary": os.path.join(workdir, "eval_results.json")}
  summary: Dict[str, Any] = evaluation.scalar_results(results)
  if "protocol" in results:  # how the score was computed (original_size: mmseg's)
    summary["protocol"] = str(results["protocol"])
  config_utils.write_json(paths["summary"], summary)  # strict JSON: NaN -> null
  if "per_class" in results:
    paths["per_class"] = os.path.join(workdir, "per_class_iou.tsv")
    with open(paths["per_class"], "w") as f:
      f.write("class\tIoU\tAcc\n")
      for name, values in results["per_class"].items():
        f.write(f"{name}\t{values.get('IoU', float('nan')):.4f}\t{values.get('Acc', float('nan')):.4f}\n")
  return paths


def write_prediction_png(examples: Optional[Mapping[str, np.ndarray]], path: str,
                         num_classes: int) -> Optional[str]:
  """Saves ``image | ground truth | prediction`` rows of the evaluator's ``examples`` to ``path``."""
  if not examples or not len(examples["label"]):
    return None
  panel = visualize.comparison_panel(examples["inputs"], examples["label"], examples["prediction"],
                                     examples.get("image_size"), colors=visualize.palette(num_classes))
  return visualize.save_png(path, panel)


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: Optional[jax.sharding.Mesh] = None, **trainer_kwargs: Any) -> trainer.TrainResult:
  """Trains and evaluates the segmentation model of ``config``; writes the results into ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  config = ensure_synthetic_data(config, workdir)
  mesh = mesh or sharding.create_mesh()
  dataset = build_dataset(config)
  if jax.process_index() == 0:
    config_utils.save_config(model_io.with_dataset_meta(config, dataset.meta_data), workdir)
  model = registry.get_model_cls(config.get("model_name") or "crossformer_segmentation")(config, dataset.meta_data)
  evaluator = SegmentationEvaluator(model, num_examples=int(config.get("num_visualized_images", 4)),
                                    test_time=predictor.test_time_from_config(config))
  train_fn = registry.get_trainer(config.get("trainer_name") or "crossformer_trainer")
  result = train_fn(model, dataset, config, workdir, evaluator, mesh=mesh, **trainer_kwargs)
  if jax.process_index() == 0 and result.eval_summary:
    paths = write_results(result.eval_summary, workdir)
    logging.info("final mIoU %.4f (per-class IoU in %s)", result.eval_summary.get("mIoU", float("nan")),
                 paths.get("per_class"))
    png = write_prediction_png(result.eval_summary.get("examples"), os.path.join(workdir, "predictions.png"),
                               model.num_classes)
    if png:
      logging.info("wrote %s", png)
  return result
