"""The COCO detection job: model, data, COCO evaluator and outputs around the shared trainer.

``run(config, workdir)`` builds the detection model named by ``config.model_name`` (any registered
``Detector``: ``"crossformer_retinanet"``, the default, or ``"crossformer_mask_rcnn"``) and the COCO dataset
(``input_pipeline.get_dataset``, with instance masks only for models that declare ``with_masks``),
generates and prepares the synthetic COCO-format stand-in first when ``config.synthetic_data`` is set, converts
an epoch-based schedule to steps (``resolve_epoch_schedule``), trains with
``projects.common.trainer.train_and_evaluate`` (COCO box AP every ``log_eval_steps`` and at the end) and writes
into ``workdir``: ``config.json`` (the resolved config: data dirs and steps filled in),
``coco_bbox_detections.json`` (the COCO results of the last evaluation, written by the
evaluator; Mask R-CNN also ``coco_segm_detections.json`` with RLE masks), ``eval_results.json`` (AP, AP50, AP75,
APs, APm, APl, ...; Mask R-CNN also mask_AP, ...) and ``detections.png`` (the first validation images with
ground truth in white and detections coloured by class, Mask R-CNN's masks as coloured overlays).
"""

import copy
import os
from typing import Any, Dict, Mapping, Optional, Sequence, Type

from absl import logging
import jax
import ml_collections
import numpy as np

from projects.common import config_utils
from projects.common import evaluation
from projects.common import sharding
from projects import registry
from projects.common import trainer
from projects.detection import visualize
from projects.detection.coco_evaluator import CocoEvaluator
from projects.detection.detector import Detector

RESULTS_FILE = "eval_results.json"
PNG_FILE = "detections.png"


def model_class(config: ml_collections.ConfigDict) -> Type[Detector]:
  """The detection model class that ``config.model_name`` names (``"crossformer_retinanet"`` when absent)."""
  name = config.get("model_name") or "crossformer_retinanet"
  cls = registry.get_model_cls(name)
  if not (isinstance(cls, type) and issubclass(cls, Detector)):
    raise ValueError(f"config.model_name {name!r} is not a detection model (its task is "
                     f"{getattr(cls, 'task', '?')!r})")
  return cls


class DetectionEvaluator(CocoEvaluator):
  """``CocoEvaluator`` that also keeps the first real examples of the pass with their detections.

  ``compute()`` adds ``examples``: ``{"inputs", "label", "batch_mask", "predictions"}`` numpy arrays of the
  first ``num_examples`` real examples (this process's share of the first batch), for pictures without
  another forward pass.
  """

  def __init__(self, meta_data: Mapping[str, Any], predict_fn, output_dir: Optional[str] = None,
               num_examples: int = 4, **kwargs: Any) -> None:
    self.num_examples = num_examples
    self._examples = None
    super().__init__(meta_data["annotation_file"], meta_data["category_ids"], predict_fn, output_dir, **kwargs)

  def reset(self) -> None:
    super().reset()
    self._examples = None

  def update(self, processed: Mapping[str, Any], host_batch: Mapping[str, Any]) -> None:
    super().update(processed, host_batch)
    if self._examples is not None or self.num_examples <= 0:
      return
    local = len(host_batch["batch_mask"])
    keys = ("boxes", "scores", "labels", "valid") + (("mask_probs",) if self.with_masks else ())
    predictions = sharding.to_host({k: processed[k] for k in keys})
    if jax.process_count() > 1:  # this process's rows of the global batch
      start = jax.process_index() * local
      predictions = jax.tree.map(lambda x: x[start:start + local], predictions)
    keep = np.flatnonzero(np.asarray(host_batch["batch_mask"]) > 0)[:self.num_examples]
    take = lambda x: np.asarray(x)[keep]
    self._examples = {"inputs": take(host_batch["inputs"]),
                      "label": jax.tree.map(take, dict(host_batch["label"])),
                      "batch_mask": take(host_batch["batch_mask"]),
                      "predictions": jax.tree.map(take, predictions)}

  def compute(self) -> Dict[str, Any]:
    results = super().compute()
    results["examples"] = self._examples
    return results


def resolve_epoch_schedule(config: ml_collections.ConfigDict,
                           steps_per_epoch: int) -> ml_collections.ConfigDict:
  """Converts an epoch-based config (``num_training_epochs > 0``) to the trainer's steps; see
  configs/detection_base.

  Sets ``num_training_steps = num_training_epochs * steps_per_epoch``, ``lr_configs.decay_events`` from
  ``lr_configs.decay_epochs`` (``e * steps_per_epoch - 1``: Scenic's piecewise-constant boundaries), and
  ``log_eval_steps`` / ``checkpoint_steps`` from ``eval_every_epochs`` / ``checkpoint_every_epochs`` when those
  are set. Returns ``config`` unchanged when ``num_training_epochs`` is 0/None.
  """
  num_epochs = config.get("num_training_epochs") or 0
  if num_epochs <= 0:
    return config
  if steps_per_epoch <= 0:
    raise ValueError(f"steps_per_epoch must be positive, got {steps_per_epoch}")
  config = copy.deepcopy(config)  # shares no FieldReference (placeholder) with the input
  with config.unlocked():
    config.num_training_steps = int(round(num_epochs * steps_per_epoch))
    decay_epochs = config.lr_configs.get("decay_epochs")
    if decay_epochs is not None:
      config.lr_configs.decay_events = [int(round(e * steps_per_epoch)) - 1 for e in decay_epochs]
    if config.get("eval_every_epochs"):
      config.log_eval_steps = max(1, int(round(config.eval_every_epochs * steps_per_epoch)))
    if config.get("checkpoint_every_epochs"):
      config.checkpoint_steps = max(1, int(round(config.checkpoint_every_epochs * steps_per_epoch)))
  logging.info("%s epochs of %d steps: num_training_steps %d, lr decay after steps %s, eval every %s, "
               "checkpoint every %s steps", num_epochs, steps_per_epoch, config.num_training_steps,
               list(config.lr_configs.get("decay_events", ())), config.get("log_eval_steps"),
               config.get("checkpoint_steps"))
  return config


def ensure_synthetic_data(config: ml_collections.ConfigDict, workdir: str) -> ml_collections.ConfigDict:
  """For ``config.synthetic_data``: writes the synthetic COCO-format tree and builds it with the real
  ``coco_tree`` builder unless already built. Returns ``config`` with ``dataset.data_dir``/``manual_dir`` set.

  ``config.synthetic_data`` = ``dict(num_train, num_val, seed, manual_dir)``; the tfds data dir is
  ``config.dataset.data_dir`` (default ``<workdir>/data``), the tree goes to ``manual_dir`` (default
  ``config.dataset.manual_dir``, else ``<data_dir>/synthetic_coco``). An existing build is reused as is
  (delete the data dir after changing the synthetic settings).
  """
  synthetic = config.get("synthetic_data")
  if not synthetic:
    return config
  from projects.detection.data import coco_source  # pylint: disable=g-import-not-at-top
  from projects.detection.data import make_synthetic_coco  # pylint: disable=g-import-not-at-top
  from projects.detection.data import prepare_coco  # pylint: disable=g-import-not-at-top
  config = ml_collections.ConfigDict(config)
  with config.unlocked():
    data_dir = os.path.abspath(config.dataset.get("data_dir") or os.path.join(workdir, "data"))
    manual_dir = os.path.abspath(synthetic.get("manual_dir") or config.dataset.get("manual_dir")
                                 or os.path.join(data_dir, "synthetic_coco"))
    config.dataset.data_dir = data_dir
    config.dataset.manual_dir = manual_dir
  dataset_config = config.dataset.to_dict()
  if coco_source.make_builder(dataset_config).is_prepared():
    return config

  def prepare() -> None:
    annotations = os.path.join(manual_dir, "annotations", make_synthetic_coco.SPLITS[-1][1])
    if not os.path.isfile(annotations):
      logging.info("writing the synthetic COCO-format tree to %s", manual_dir)
      make_synthetic_coco.make_synthetic_coco(manual_dir, num_train=int(synthetic.get("num_train", 256)),
                                              num_val=int(synthetic.get("num_val", 32)),
                                              seed=int(synthetic.get("seed", 0)))
    logging.info("building the coco_tree tfds dataset in %s", data_dir)
    prepare_coco.prepare(dataset_config)

  sharding.run_on_first_process(prepare, "synthetic_coco_ready")
  return config


def build_dataset(config: ml_collections.ConfigDict) -> Any:
  """The ``Dataset`` registered as ``config.dataset_name`` (default ``coco``: ``input_pipeline.get_dataset``)."""
  return registry.get_dataset_fn(config.get("dataset_name") or "coco")(config)


def write_results(results: Mapping[str, Any], workdir: str) -> str:
  """Writes the scalar results (AP, AP50, ...) as ``eval_results.json``; returns its path."""
  path = os.path.join(workdir, RESULTS_FILE)
  config_utils.write_json(path, evaluation.scalar_results(results))  # strict JSON: NaN -> null
  return path


def write_detection_png(examples: Optional[Mapping[str, Any]], path: str,
                        class_names: Optional[Sequence[str]] = None,
                        score_threshold: float = 0.3, mask_threshold: float = 0.5) -> Optional[str]:
  """Saves the evaluator's ``examples`` side by side (ground truth white, detections by class, masks as
  coloured overlays when predicted) to ``path``."""
  if not examples or not len(examples["batch_mask"]):
    return None
  drawn = visualize.draw_batch(examples, examples["predictions"], class_names, score_threshold,
                               mask_threshold=mask_threshold)
  return visualize.save_png(path, visualize.tile_images([canvas for _, canvas in drawn]))


def run(config: ml_collections.ConfigDict, workdir: str,
        mesh: Optional[jax.sharding.Mesh] = None, **trainer_kwargs: Any) -> trainer.TrainResult:
  """Trains and evaluates the detector of ``config``; writes the results into ``workdir``."""
  os.makedirs(workdir, exist_ok=True)
  model_cls = model_class(config)
  config = ml_collections.ConfigDict(config)
  with config.unlocked():
    config.dataset.with_masks = model_cls.with_masks  # masks are decoded only for the models that train on them
  config = ensure_synthetic_data(config, workdir)
  mesh = mesh or sharding.create_mesh()
  dataset = build_dataset(config)
  config = resolve_epoch_schedule(config, int(dataset.meta_data["steps_per_epoch"]))
  if jax.process_index() == 0:
    config_utils.save_config(config, workdir)
  model = model_cls(config, dataset.meta_data)
  mask_threshold = float(config.model.get("test_cfg", {}).get("mask_thr_binary", 0.5))
  evaluator = DetectionEvaluator(dataset.meta_data, model.predict, output_dir=workdir,
                                 num_examples=int(config.get("num_visualized_images", 4)),
                                 iou_types=model_cls.iou_types, mask_threshold=mask_threshold)
  train_fn = registry.get_trainer(config.get("trainer_name") or "crossformer_trainer")
  result = train_fn(model, dataset, config, workdir, evaluator, mesh=mesh, **trainer_kwargs)
  if jax.process_index() == 0 and result.eval_summary:
    path = write_results(result.eval_summary, workdir)
    summary = result.eval_summary
    masks = f", mask AP {summary['mask_AP']:.4f}" if "mask_AP" in summary else ""
    logging.info("final box AP %.4f%s (results in %s)", summary.get("AP", float("nan")), masks, path)
    png = write_detection_png(result.eval_summary.get("examples"), os.path.join(workdir, PNG_FILE),
                              dataset.meta_data.get("class_names"),
                              float(config.get("visualization_score_threshold", 0.3)), mask_threshold)
    if png:
      logging.info("wrote %s", png)
  return result
