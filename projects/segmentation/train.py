"""The ADE20K semantic-segmentation job: model, data, mIoU evaluator and outputs around the shared trainer.

``run(config, workdir)`` builds ``SegmentationModel`` and the ADE20K dataset (``get_dataset``), prepares the
synthetic stand-in first when ``config.synthetic_data`` is set, trains with
``projects.common.trainer.train_and_evaluate`` (mIoU every ``log_eval_steps`` and at the end) and writes into
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
from projects.common import evaluation
from projects.common import sharding
from projects.common import trainer
from projects.segmentation import visualize
from projects.segmentation.model import SegmentationModel


class SegmentationEvaluator(evaluation.Evaluator):
  """mIoU from a confusion matrix accumulated on the devices over the whole validation pass.

  ``compute()`` returns ``mIoU``, ``mAcc`` and ``aAcc`` (fractions) as scalars, plus ``per_class``
  (``{class name: {"IoU": .., "Acc": ..}}``), ``confusion_matrix`` (K, K) numpy and ``examples``: the first
  ``num_examples`` real examples of the pass as ``{"inputs", "label", "prediction", "image_size"}`` numpy
  arrays (this process's share of the first batch), for pictures without another forward pass.
  """

  def __init__(self, model: SegmentationModel, num_examples: int = 4) -> None:
    self.model = model
    self.num_examples = num_examples
    self._confusion = None
    self._examples = None

  def reset(self) -> None:
    self._confusion = None
    self._examples = None

  def process_fn(self, outputs: Mapping[str, Any], batch: Mapping[str, Any]) -> Any:
    return {"confusion": self.model.confusion_matrix(outputs, batch),
            "prediction": jnp.argmax(outputs["logits"], axis=-1).astype(jnp.int32)}

  def update(self, processed: Any, host_batch: Mapping[str, Any]) -> None:
    # The confusion matrix stays on the devices (asynchronous additions); only the first batch's
    # predictions are fetched, for the pictures.
    confusion = processed["confusion"]
    self._confusion = confusion if self._confusion is None else self._confusion + confusion
    if self._examples is None and self.num_examples > 0:
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
    if self._confusion is None:
      raise ValueError("SegmentationEvaluator.compute() called before any update()")
    confusion = sharding.to_host(self._confusion)
    metrics = self.model.global_metrics(confusion)
    per_class: Dict[str, Dict[str, float]] = {}
    for key, value in metrics.items():
      if "/" in key:
        kind, name = key.split("/", 1)
        per_class.setdefault(name, {})[kind] = value
    return {"mIoU": metrics["mIoU"], "mAcc": metrics["mAcc"], "aAcc": metrics["aAcc"],
            "per_class": per_class, "confusion_matrix": confusion, "examples": self._examples}


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
  """The ADE20K ``Dataset`` of ``config.dataset`` (``projects.segmentation.data.get_dataset``)."""
  from projects.segmentation.data import pipeline  # pylint: disable=g-import-not-at-top
  return pipeline.get_dataset(config)


def write_results(results: Mapping[str, Any], workdir: str) -> Dict[str, str]:
  """Writes ``eval_results.json`` (scalars) and ``per_class_iou.tsv``; returns their paths."""
  paths = {"summary": os.path.join(workdir, "eval_results.json")}
  config_utils.write_json(paths["summary"], evaluation.scalar_results(results))  # strict JSON: NaN -> null
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
    config_utils.save_config(config, workdir)
  model = SegmentationModel(config, dataset.meta_data)
  evaluator = SegmentationEvaluator(model, num_examples=int(config.get("num_visualized_images", 4)))
  result = trainer.train_and_evaluate(model, dataset, config, workdir, evaluator, mesh=mesh,
                                      **trainer_kwargs)
  if jax.process_index() == 0 and result.eval_summary:
    paths = write_results(result.eval_summary, workdir)
    logging.info("final mIoU %.4f (per-class IoU in %s)", result.eval_summary.get("mIoU", float("nan")),
                 paths.get("per_class"))
    png = write_prediction_png(result.eval_summary.get("examples"), os.path.join(workdir, "predictions.png"),
                               model.num_classes)
    if png:
      logging.info("wrote %s", png)
  return result
