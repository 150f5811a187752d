"""Layers import downwards only, and no package module imports itself back through others.

Read from the source by AST (nothing is imported): every ``import`` statement counts, at module level or inside
a function. ``backbones`` imports neither ``heads`` nor ``projects``; ``heads`` does not import ``projects``;
the import graph of the package modules has no cycle.
"""

import ast
import functools
import pathlib
from typing import Dict, List, Set

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGES = ("backbones", "heads", "projects", "configs")
# Lower layer -> the upper layers it must not import.
FORBIDDEN = {"backbones": ("heads", "projects"), "heads": ("projects",)}
# Import cycles tolerated for now (each a frozenset of module names), with the reason.
KNOWN_CYCLES: Set[frozenset] = set()


def _module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO_ROOT).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> Dict[str, pathlib.Path]:
  """``{dotted name: file}`` of every module of the packages."""
  return {_module_name(p): p for package in PACKAGES for p in sorted((REPO_ROOT / package).rglob("*.py"))}


def _imports(name: str, path: pathlib.Path, known: Set[str]) -> Set[str]:
  """The modules ``name`` imports anywhere in its file: ``import a.b`` -> ``a.b``; ``from a import b`` ->
  ``a.b`` when that is a module, else ``a``; relative imports resolved against the module's package."""
  package = name if path.name == "__init__.py" else name.rpartition(".")[0]
  found: Set[str] = set()
  for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
    if isinstance(node, ast.Import):
      found.update(alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        anchor = package.split(".")[:len(package.split(".")) - (node.level - 1)]
        base = ".".join(anchor + ([base] if base else []))
      for alias in node.names:
        found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
  return found


@functools.lru_cache(maxsize=1)
def _graph() -> Dict[str, Set[str]]:
  modules = _modules()
  known = set(modules)
  return {name: _imports(name, path, known) for name, path in modules.items()}


def _cycles(graph: Dict[str, Set[str]]) -> List[frozenset]:
  """The strongly connected components of more than one module (Tarjan's algorithm, iterative)."""
  edges = {m: sorted(t for t in targets if t in graph and t != m) for m, targets in graph.items()}
  index: Dict[str, int] = {}
  low: Dict[str, int] = {}
  stack: List[str] = []
  on_stack: Set[str] = set()
  components: List[frozenset] = []
  for root in sorted(edges):
    if root in index:
      continue
    work = [(root, 0)]
    while work:
      node, i = work.pop()
      if i == 0:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
      if i < len(edges[node]):
        work.append((node, i + 1))
        child = edges[node][i]
        if child not in index:
          work.append((child, 0))
        elif child in on_stack:
          low[node] = min(low[node], index[child])
        continue
      if low[node] == index[node]:
        component = set()
        while True:
          member = stack.pop()
          on_stack.discard(member)
          component.add(member)
          if member == node:
            break
        if len(component) > 1:
          components.append(frozenset(component))
      if work:
        parent = work[-1][0]
        low[parent] = min(low[parent], low[node])
  return components


def test_lower_layers_do_not_import_upper_layers():
  graph = _graph()
  assert "heads.official" in graph and "backbones" in graph  # the scan sees the packages
  wrong = sorted(f"{module} imports {target}" for module, targets in graph.items() for target in targets
                 for upper in FORBIDDEN.get(module.partition(".")[0], ())
                 if target == upper or target.startswith(upper + "."))
  assert not wrong, "layering: " + "; ".join(wrong)


def test_no_import_cycles():
  cycles = [sorted(c) for c in _cycles(_graph()) if c not in KNOWN_CYCLES]
  assert not cycles, f"import cycles among the package modules: {cycles}"


def test_the_scan_finds_forbidden_imports_and_cycles(tmp_path):
  """The checks above could fail: a function-local upward import and a two-module cycle are both caught."""
  source = tmp_path / "m.py"
  source.write_text("def f():\n  from projects.parity import common\n  import heads.fpn as fpn\n")
  assert _imports("backbones.m", source, {"projects.parity.common"}) == {"projects.parity.common", "heads.fpn"}
  relative = tmp_path / "r.py"
  relative.write_text("from . import official\nfrom ..fpn import FPN\n")
  assert _imports("heads.detection.r", relative, {"heads.detection.official"}) == {
      "heads.detection.official", "heads.fpn"}
  assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
  assert _cycles({"a": {"b"}, "b": set()}) == []
