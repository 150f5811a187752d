"""Registries by name, as Scenic's (``model_lib.models.get_model_cls``, ``dataset_lib.datasets``):
``config.model_name`` / ``config.dataset_name`` / ``config.trainer_name`` select them.

A Scenic project uses our models with no glue::

    from projects import registry
    model_cls = registry.get_model_cls(config.model_name)  # e.g. "crossformer_segmentation"
    # ... then Scenic's own trainer: trainer(rng=rng, config=config, model_cls=model_cls, dataset=...)

**Models are declared where they live** (timm's model file + ``@register_model``): a file in a
``projects/<task>/models/`` folder decorates its ``BaseModel`` subclass with ``@registry.register_model(name)``,
and the class itself carries everything the core asks of a model (``projects.common.base_model.BaseModel``:
its task, config block, class-count reader, default dataset facts, official-checkpoint mapping, export
function). The first lookup imports every module of those folders, so adding a model is one new file there; a
model defined elsewhere (a user's project, a test) is registered by calling ``register_model`` before the
lookup. Nothing here names a task, a model or a head.

Datasets and trainers are looked up lazily (``"module:attribute"``), so selecting one does not import TensorFlow.
"""

import importlib
import pathlib
import pkgutil
from typing import Any, Callable, Dict, Type

# model_name -> BaseModel subclass, filled by @register_model when the declaring module is imported.
MODELS: Dict[str, Type[Any]] = {}
_DECLARATIONS_IMPORTED = False

# get_dataset(config) -> projects.common.dataset.Dataset(train_iter_fn, eval_iter_fn, meta_data). The
# segmentation pipeline reads config.dataset_name itself to pick the tfds builder (its datasets.DATASETS).
DATASETS: Dict[str, str] = {
    "ade20k": "projects.segmentation.data.pipeline:get_dataset",
    "cityscapes": "projects.segmentation.data.pipeline:get_dataset",
    "segmentation_folder": "projects.segmentation.data.pipeline:get_dataset",  # your own images and masks
    "coco": "projects.detection.data.input_pipeline:get_dataset",  # COCO-format: official zips or any tree
    "imagenet2012": "projects.classification.data.pipeline:get_dataset",
    "image_folder": "projects.classification.data.pipeline:get_dataset",
}
# dataset_name -> "module:function": ``dataset_meta(config)`` -> ``{"num_classes", "class_names", ...}`` or
# None: the facts a restored or converted model needs about its dataset without reading the data.
DATASET_META: Dict[str, str] = {
    "ade20k": "projects.segmentation.data.ade20k_classes:dataset_meta",
    "cityscapes": "projects.segmentation.data.datasets:dataset_meta",
    "segmentation_folder": "projects.segmentation.data.datasets:dataset_meta",
    "coco": "projects.detection.data.coco_classes:dataset_meta",
    "imagenet2012": "projects.classification.data.datasets:dataset_meta",
    "image_folder": "projects.classification.data.datasets:dataset_meta",
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


def _import_declarations() -> None:
  """Imports every module of the ``projects/<task>/models/`` folders once (their ``@register_model`` runs)."""
  global _DECLARATIONS_IMPORTED
  if _DECLARATIONS_IMPORTED:
    return
  root = pathlib.Path(__file__).resolve().parent
  for folder in sorted(root.glob("*/models")):
    if (folder / "__init__.py").is_file():
      package = f"projects.{folder.parent.name}.models"
      for info in pkgutil.iter_modules([str(folder)]):
        importlib.import_module(f"{package}.{info.name}")
  _DECLARATIONS_IMPORTED = True


def get_model_cls(model_name: str) -> Type[Any]:
  """The model class registered as ``model_name`` (Scenic's ``get_model_cls``)."""
  if model_name not in MODELS:
    _import_declarations()
  if model_name not in MODELS:
    raise ValueError(f"unknown model_name {model_name!r}; registered: {sorted(MODELS)}")
  return MODELS[model_name]


def list_models() -> list:
  """Every registered model name."""
  _import_declarations()
  return sorted(MODELS)


def get_dataset_fn(dataset_name: str) -> Callable[..., Any]:
  """The dataset builder ``get_dataset(config)`` registered as ``dataset_name``."""
  return _resolve(DATASETS, "dataset_name", dataset_name)


def dataset_meta(config: Any) -> Any:
  """What the dataset of ``config.dataset_name`` declares about its classes (``DATASET_META``), or None."""
  name = config.get("dataset_name")
  if not name or name not in DATASET_META:
    return None
  return _resolve(DATASET_META, "dataset_name", name)(config)


def get_trainer(trainer_name: str) -> Callable[..., Any]:
  """The trainer registered as ``trainer_name`` (ours: ``train_and_evaluate``)."""
  return _resolve(TRAINERS, "trainer_name", trainer_name)


def register_model(model_name: str, model_cls: Any = None) -> Any:
  """Registers a ``BaseModel`` subclass as ``model_name``; a decorator when ``model_cls`` is omitted::

      @registry.register_model("my_segmenter")
      class MySegmenter(SegmentationModel): ...

  Names are never reused (a second class under one name raises); the class gets ``model_name`` as its
  ``name`` attribute, which model files and configs record.
  """
  def register(cls: Any) -> Any:
    known = MODELS.get(model_name)
    if known is not None and known is not cls:
      raise ValueError(f"model_name {model_name!r} is already registered (by {known.__module__}.{known.__name__})")
    MODELS[model_name] = cls
    if isinstance(cls, type):
      cls.name = model_name
    return cls
  return register if model_cls is None else register(model_cls)


def register_dataset(dataset_name: str, get_dataset: Any) -> None:
  """Registers a ``get_dataset(config)`` builder (or ``"module:function"``) as ``dataset_name``."""
  if dataset_name in DATASETS:
    raise ValueError(f"dataset_name {dataset_name!r} is already registered")
  DATASETS[dataset_name] = get_dataset
