"""The module description stored beside converted weights: the class name and its architecture arguments.

``architecture_json(module)`` writes the dataclass fields that describe the architecture (not ``dtype``,
``remat``, ``out_indices``: choices of the user); a field holding a module (the classifier's ``backbone``)
is written as ``{"module": class name, "kwargs": {...}}``. ``module_from_description`` rebuilds the module,
its class looked up in ``backbones.registry`` (through its ``from_description`` classmethod when it has one).
"""

import json
from typing import Any, Dict

import flax.linen as nn

from backbones import registry

FORMAT = "crossformer-jax/1"
# Module fields that describe no architecture (dtype, remat, out_indices are choices of the user).
RUNTIME_FIELDS = ("dtype", "remat", "out_indices", "parent", "name")


def architecture(module: Any) -> Dict[str, Any]:
  """``module``'s architecture arguments as JSON-ready values (nested modules described recursively)."""
  out = {}
  for field in module.__dataclass_fields__:
    if field in RUNTIME_FIELDS:
      continue
    value = getattr(module, field)
    out[field] = ({"module": type(value).__name__, "kwargs": architecture(value)}
                  if isinstance(value, nn.Module) else value)
  return out


def architecture_json(module: Any) -> str:
  """:func:`architecture` as JSON (msgpack cannot hold tuples)."""
  return json.dumps(architecture(module))


def module_from_description(module_name: str, kwargs_json: str, source: Any) -> nn.Module:
  """The module a converted file describes (class name + architecture JSON); ``source`` names the file."""
  return _build(module_name, json.loads(kwargs_json), source)


def _build(module_name: str, kwargs: Dict[str, Any], source: Any) -> nn.Module:
  cls = registry.module_class(module_name, source)
  build = getattr(cls, "from_description", cls)  # a class may read older layouts of its description
  return build(**{k: _value(v, source) for k, v in kwargs.items()})


def _value(value: Any, source: Any) -> Any:
  if isinstance(value, dict) and set(value) == {"module", "kwargs"}:
    return _build(value["module"], value["kwargs"], source)
  return tuple(_value(v, source) for v in value) if isinstance(value, list) else value
