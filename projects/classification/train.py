"""The image-classification job: model, data, top-1/top-5 evaluator and outputs around the shared trainer.

``run(config, workdir)`` builds the model ``config.model_name`` names (``crossformer_classification``) and
the dataset ``config.dataset_name`` names (``imagenet2012`` or ``image_folder``; ``config.synthetic_data``
first generates the tiny demo folder), trains with ``projects.common.trainer.train_and_evaluate`` (the
official evaluation protocol every ``log_eval_steps`` and at the end, ``ClassificationEvaluator``) and
writes into ``workdir``: ``eval_results.json`` (top-1, top-5, loss), ``per_class_accuracy.tsv`` and
``predictions.png`` (validation images captioned with truth and prediction).
"""

import os
import pathlib
from typing import Any, Dict, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from backbones.weights import files
from projects import registry
from projects.classification import visualize
from projects.classification.models.classifier import TOP_K
from projects.common import config_utils
from projects.common import model_io
from projects.common import evaluation
from projects.common import predict_io
from projects.common import sharding
from projects.common import trainer

MODEL_NAME = "crossformer_classification"


class ClassificationEvaluator(evaluation.Evaluator):
  """Top-1 / top-5 accuracy (fractions) over the real examples of a pass, per class too.

  ``compute()`` returns ``top1``, ``top5``, ``num_examples``, ``per_class`` (``{name: {"accuracy",
  "correct", "total"}}``) and ``examples`` (the first ``num_examples`` real examples of the pass:
  ``inputs``, ``label``, ``top``) for pictures. Labels must be integers (evaluation batches are never mixed).
  """

  def __init__(self, class_names, num_examples: int = 16) -> None:
    self.class_names = list(class_names)
    self.num_examples = int(num_examples)
    self.reset()

  def reset(self) -> None:
    k = len(self.class_names)
    self._correct1, self._correct5, self._total = (np.zeros(k, np.int64) for _ in range(3))
    self._examples = None

  def process_fn(self, outputs: Any, batch: Mapping[str, Any]) -> Any:
    return {"top": jax.lax.top_k(outputs, min(TOP_K, outputs.shape[-1]))[1].astype(jnp.int32)}

  def update(self, processed: Any, host_batch: Mapping[str, Any]) -> None:
    local = len(host_batch["label"])
    top = sharding.to_host(processed["top"])
    if jax.process_count() > 1:
      top = top[jax.process_index() * local:(jax.process_index() + 1) * local]
    labels = np.asarray(host_batch["label"])
    if labels.ndim != 1:
      raise ValueError("ClassificationEvaluator needs integer labels (B,), got soft labels")
    keep = np.flatnonzero(np.asarray(host_batch.get("batch_mask", np.ones(local))) > 0)
    labels, top = labels[keep], top[keep]
    np.add.at(self._total, labels, 1)
    np.add.at(self._correct1, labels, (top[:, 0] == labels).astype(np.int64))
    np.add.at(self._correct5, labels, np.any(top == labels[:, None], axis=1).astype(np.int64))
    if self.num_examples > 0:
      have = 0 if self._examples is None else len(self._examples["label"])
      take = keep[:max(0, self.num_examples - have)]
      if len(take):
        new = {"inputs": np.asarray(host_batch["inputs"])[take], "label": np.asarray(host_batch["label"])[take],
               "top": top[:len(take)]}
        self._examples = new if self._examples is None else {
            k: np.concatenate([self._examples[k], new[k]]) for k in new}

  def compute(self) -> Dict[str, Any]:
    correct1, correct5, total = self._correct1, self._correct5, self._total
    if jax.process_count() > 1:  # every process scored its own examples
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      correct1, correct5, total = (np.asarray(multihost_utils.process_allgather(x)).sum(axis=0)
                                   for x in (correct1, correct5, total))
    count = int(total.sum())
    if count == 0:
      raise ValueError("ClassificationEvaluator.compute() saw no real example")
    per_class = {name: {"accuracy": float(c / t) if t else float("nan"), "correct": int(c), "total": int(t)}
                 for name, c, t in zip(self.class_names, correct1, total)}
    return {"top1": float(correct1.sum() / count), "top5": float(correct5.sum() / count), "num_examples": count,
            "per_class": per_class, "examples": self._examples}


def ensure_synthetic_data(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """For ``config.synthetic_data`` (``dict(num_train, num_val, seed)``): writes the tiny demo folder
  (``data.make_synthetic``) under ``<workdir>/data/synthetic_folder`` unless there, and points
  ``config.dataset.manual_dir`` / ``data_dir`` at it."""
  synthetic = config.get("synthetic_data")
  if not synthetic:
    return config
  from projects.classification.data import make_synthetic  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config)
  with config.unlocked():
    data_dir = os.path.abspath(config.dataset.get("data_dir") or os.path.join(workdir, "data"))
    config.dataset.data_dir = data_dir
    config.dataset.manual_dir = config.dataset.get("manual_dir") or os.path.join(data_dir, "synthetic_folder")
  manual_dir = config.dataset.manual_dir

  def prepare() -> None:
    if not os.path.isdir(os.path.join(manual_dir, "train")):
      make_synthetic.make_image_folder(manual_dir, int(synthetic.get("num_train", 40)),
                                       int(synthetic.get("num_val", 10)), int(synthetic.get("seed", 0)))

  sharding.run_on_first_process(prepare, "synthetic_classification_ready")
  return config


def write_results(results: Mapping[str, Any], output_dir: str) -> Dict[str, str]:
  """Writes ``eval_results.json`` (the scalars) and ``per_class_accuracy.tsv``; returns their paths."""
  paths = {"summary": os.path.join(output_dir, "eval_results.json")}
  config_utils.write_json(paths["summary"], evaluation.scalar_results(results))
  if results.get("per_class"):
    paths["per_class"] = os.path.join(output_dir, "per_class_accuracy.tsv")
    lines = ["class\taccuracy\tcorrect\ttotal"] + [
        f"{name}\t{v['accuracy']:.4f}\t{v['correct']}\t{v['total']}" for name, v in results["per_class"].items()]
    files.write_atomic(pathlib.Path(paths["per_class"]), ("\n".join(lines) + "\n").encode())
  return paths


def write_prediction_png(examples: Optional[Mapping[str, np.ndarray]], class_names, path: str) -> Optional[str]:
  """Saves the evaluator's ``examples`` as a captioned grid (``visualize.prediction_grid``) to ``path``."""
  if not examples or not len(examples["label"]):
    return None
  grid = visualize.prediction_grid(examples["inputs"], list(examples["label"]), examples["top"], class_names)
  files.write_atomic(pathlib.Path(path), predict_io.png_bytes(grid, "validation predictions"))
  return path


def build_dataset(config: ml_collections.ConfigDict) -> Any:
  """The ``Dataset`` registered as ``config.dataset_name`` (default ``image_folder``)."""
  return registry.get_dataset_fn(config.get("dataset_name") or "image_folder")(config)


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: Optional[jax.sharding.Mesh] = None, **trainer_kwargs: Any) -> trainer.TrainResult:
  """Trains and evaluates the classifier of ``config``; writes the results into ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  config = ensure_synthetic_data(config, workdir)
  mesh = mesh or sharding.create_mesh()
  dataset = build_dataset(config)
  if jax.process_index() == 0:
    config_utils.save_config(model_io.with_dataset_meta(config, dataset.meta_data), workdir)
  model = registry.get_model_cls(config.get("model_name") or MODEL_NAME)(config, dataset.meta_data)
  evaluator = ClassificationEvaluator(dataset.meta_data["class_names"],
                                      num_examples=int(config.get("num_visualized_images", 16)))
  train_fn = registry.get_trainer(config.get("trainer_name") or "crossformer_trainer")
  result = train_fn(model, dataset, config, workdir, evaluator, mesh=mesh, **trainer_kwargs)
  if jax.process_index() == 0 and result.eval_summary:
    paths = write_results(result.eval_summary, workdir)
    logging.info("final top-1 %.4f top-5 %.4f (per-class accuracy in %s)", result.eval_summary["top1"],
                 result.eval_summary["top5"], paths.get("per_class"))
    png = write_prediction_png(result.eval_summary.get("examples"), dataset.meta_data["class_names"],
                               os.path.join(workdir, "predictions.png"))
    if png:
      logging.info("wrote %s", png)
  return result
