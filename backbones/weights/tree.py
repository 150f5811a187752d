"""Nested variables as flat ``{path: leaf}`` tables, and the one report of how two sets of shapes differ.

* ``flatten(tree)`` / ``unflatten(flat)``: paths joined by ``sep`` (``"params/stage_1/kernel"``) or, with
  ``sep=None``, kept as tuples (``("params", "stage_1", "kernel")``); ``FrozenDict`` and any ``Mapping`` are
  opened; ``keep_empty`` keeps an empty sub-mapping as a leaf ``{}`` (config comparison).
* ``compare_shapes(expected, given)`` -> :class:`ShapeReport` (missing / unexpected / mismatched paths), whose
  ``problems()`` is a one-line summary and ``raise_if_bad(source, hint)`` the ``ValueError`` every loader
  raises.
"""

import dataclasses
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

Path = Union[str, Tuple[Any, ...]]
SEP = "/"


def flatten(tree: Mapping[Any, Any], sep: Optional[str] = SEP, keep_empty: bool = False) -> Dict[Path, Any]:
  """``{path: leaf}`` of a nested mapping (``sep=None``: tuple paths)."""
  flat: Dict[Path, Any] = {}

  def visit(node: Any, prefix: Tuple[Any, ...]) -> None:
    if isinstance(node, Mapping) and (node or not keep_empty or not prefix):
      for key, value in node.items():
        visit(value, prefix + (key,))
    else:
      flat[prefix if sep is None else sep.join(map(str, prefix))] = {} if isinstance(node, Mapping) else node

  visit(tree, ())
  return flat


def unflatten(flat: Mapping[Path, Any], sep: Optional[str] = SEP) -> Dict[Any, Any]:
  """The nested dict of ``{path: leaf}`` (string paths split at ``sep``; tuple paths as they are)."""
  tree: Dict[Any, Any] = {}
  for path, value in flat.items():
    keys = tuple(path.split(sep)) if isinstance(path, str) else tuple(path)
    node = tree
    for key in keys[:-1]:
      node = node.setdefault(key, {})
    node[keys[-1]] = value
  return tree


def shape_of(value: Any) -> Tuple[int, ...]:
  """The shape of an array, a ``jax.ShapeDtypeStruct`` or a shape tuple."""
  if isinstance(value, tuple) and all(isinstance(v, (int, np.integer)) for v in value):
    return tuple(int(v) for v in value)
  return tuple(np.shape(value)) if not hasattr(value, "shape") else tuple(value.shape)


def _show(items: List[str], limit: int) -> str:
  return ", ".join(items[:limit]) + (f" ... (+{len(items) - limit})" if len(items) > limit else "")


@dataclasses.dataclass
class ShapeReport:
  """How ``given`` variables differ from the ``expected`` ones: paths (``/``-joined), sorted."""
  missing: List[str] = dataclasses.field(default_factory=list)
  unexpected: List[str] = dataclasses.field(default_factory=list)
  mismatched: List[str] = dataclasses.field(default_factory=list)  # "path: checkpoint (a, b) vs model (c, d)"
  given_name: str = "checkpoint"  # what the given variables are called in messages

  @property
  def ok(self) -> bool:
    return not (self.missing or self.unexpected or self.mismatched)

  def problems(self, limit: int = 8) -> str:
    """One line: ``N shape mismatches [...]; N missing from the checkpoint [...]; N unexpected in the
    checkpoint [...]`` (empty when ok), at most ``limit`` paths of each."""
    return "; ".join(f"{len(items)} {title} [{_show(items, limit)}]" for title, items in (
        ("shape mismatches", self.mismatched), (f"missing from the {self.given_name}", self.missing),
        (f"unexpected in the {self.given_name}", self.unexpected)) if items)

  def raise_if_bad(self, source: str, hint: str = "") -> None:
    """``ValueError("{source} does not fit the model{hint}: {problems}")`` unless ok."""
    if not self.ok:
      raise ValueError(f"{source} does not fit the model{f' ({hint})' if hint else ''}: {self.problems()}")


def compare_shapes(expected: Mapping[Any, Any], given: Mapping[Any, Any], given_name: str = "checkpoint"
                   ) -> ShapeReport:
  """The :class:`ShapeReport` of two nested mappings (or flat ``{path: ...}`` tables) of arrays/shapes."""
  want, got = flatten(expected), flatten(given)
  return ShapeReport(
      missing=sorted(set(want) - set(got)), unexpected=sorted(set(got) - set(want)),
      mismatched=sorted(f"{k}: {given_name} {shape_of(got[k])} vs model {shape_of(want[k])}"
                        for k in set(want) & set(got) if shape_of(got[k]) != shape_of(want[k])),
      given_name=given_name)
