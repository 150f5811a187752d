"""Registries of models, datasets and trainers by name, as Scenic's (``model_lib.models.get_model_cls``,
``dataset_lib.datasets``): ``config.model_name`` / ``config.dataset_name`` / ``config.trainer_name`` select them.

A Scenic project uses our models with no glue::

    from projects import registry
    model_cls = registry.get_model_cls(config.model_name)  # e.g. "crossformer_segmentation"
    # ... then Scenic's own trainer: trainer(rng=rng, config=config, model_cls=model_cls, dataset=...)

Entries are imported lazily (``"module:attribute"``), so selecting a model does not import TensorFlow.
``register_model`` / ``register_dataset`` add a project's own entries.
"""

import importlib
from typing import Any, Callable, Dict, Type

MODELS: Dict[str, str] = {
    # Semantic FPN or UPerNet (+ FCN auxiliary head), chosen by config.model.decode_head.type.
    "crossformer_segmentation": "projects.segmentation.model:SegmentationModel",
    "crossformer_retinanet": "projects.detection.retinanet:RetinaNetModel",
    "crossformer_mask_rcnn": "projects.detection.mask_rcnn:MaskRCNNModel",
}
# get_dataset(config) -> projects.common.dataset.Dataset(train_iter_fn, eval_iter_fn, meta_data). The
# segmentation pipeline reads config.dataset_name itself to pick the tfds builder (its datasets.DATASETS).
DATASETS: Dict[str, str] = {
    "ade20k": "projects.segmentation.data.pipeline:get_dataset",
    "cityscapes": "projects.segmentation.data.pipeline:get_dataset",
    "segmentation_folder": "projects.segmentation.data.pipeline:get_dataset",  # your own images and masks
    "coco": "projects.detection.data.input_pipeline:get_dataset",  # COCO-format: official zips or any tree
}
TRAINERS: Dict[str, str] = {
    "crossformer_trainer": "projects.common.trainer:train_and_evaluate",
}


def _resolve(table: Dict[str, Any], kind: str, name: str) -> Any:
  if name not in table:
    raise ValueError(f"unknown {kind} {name!r}; registered: {sorted(table)}")
  entry = table[name]
  if isinstance(entry, str):
    module, attribute = entry.split(":")
    return getattr(importlib.import_module(module), attribute)
  return entry


def get_model_cls(model_name: str) -> Type[Any]:
  """The model class registered as ``model_name`` (Scenic's ``get_model_cls``)."""
  return _resolve(MODELS, "model_name", model_name)


def get_dataset_fn(dataset_name: str) -> Callable[..., Any]:
  """The dataset builder ``get_dataset(config)`` registered as ``dataset_name``."""
  return _resolve(DATASETS, "dataset_name", dataset_name)


def get_trainer(trainer_name: str) -> Callable[..., Any]:
  """The trainer registered as ``trainer_name`` (ours: ``train_and_evaluate``)."""
  return _resolve(TRAINERS, "trainer_name", trainer_name)


def register_model(model_name: str, model_cls: Any) -> None:
  """Registers ``model_cls`` (a class or ``"module:Class"``) as ``model_name``; names are never reused."""
  if model_name in MODELS:
    raise ValueError(f"model_name {model_name!r} is already registered")
  MODELS[model_name] = model_cls


def register_dataset(dataset_name: str, get_dataset: Any) -> None:
  """Registers a ``get_dataset(config)`` builder (or ``"module:function"``) as ``dataset_name``."""
  if dataset_name in DATASETS:
    raise ValueError(f"dataset_name {dataset_name!r} is already registered")
  DATASETS[dataset_name] = get_dataset
