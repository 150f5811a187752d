"""Every code block of README.md and docs/*.md works as written on a fresh clone.

Python blocks run, each in its own subprocess from the repository root (PYTHONPATH = the root). Shell blocks
are parsed (``bash -n``); every ``python -m MODULE`` they name must be importable and every ``configs/*.py``,
``benchmarks/*.py`` or ``backbones/assets/*`` path they name must exist. A block whose first line is
``# needs: <reason>`` (external data, an official checkpoint, a demo workdir) is not run; its shell commands
are still checked for modules and repository paths, since those are facts of the repository.
"""

import importlib.util
import os
import pathlib
import re
import subprocess
import sys
from typing import List, NamedTuple

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
DOCS = [REPO_ROOT / "README.md"] + sorted((REPO_ROOT / "docs").glob("*.md"))
FENCE = re.compile(r"^```(\w*)[^\n]*\n(.*?)^```", re.MULTILINE | re.DOTALL)
NEEDS = re.compile(r"^#\s*needs:\s*(.+)$")
MODULE = re.compile(r"\bpython3?\s+-m\s+([A-Za-z_][\w.]*)")
REPO_PATH = re.compile(r"(?<![\w/.-])((?:configs|benchmarks)/[\w.-]+\.py|backbones/assets/[\w.-]+)")
TIMEOUT_S = 600
# Blocks that compile a whole network more than once or a task network (over ~20 s on 2 CPU cores), run by
# `make test` but not `make test-fast`: their file and a string of their code, so that editing other blocks
# does not move them.
SLOW = {
    ("segmentation.md", "tiny_ade20k.get_config()"),
    ("detection.md", "tiny_coco.get_config()"),
    ("detection.md", "tiny_coco_instance.get_config()"),
    ("backbones.md", "model = CrossFormer("),
    ("scenic.md", "class MyModel"),
    ("export_hub.md", "export.export_stablehlo("),
}


class Snippet(NamedTuple):
  path: pathlib.Path
  line: int
  language: str
  code: str

  @property
  def id(self) -> str:
    return f"{self.path.name}:{self.line}"

  @property
  def needs(self) -> str:
    first = self.code.lstrip().splitlines()[0] if self.code.strip() else ""
    match = NEEDS.match(first.strip())
    return match.group(1).strip() if match else ""


def snippets(languages) -> List[Snippet]:
  found = []
  for path in DOCS:
    text = path.read_text()
    for match in FENCE.finditer(text):
      if match.group(1) in languages:
        line = text.count("\n", 0, match.start()) + 1
        found.append(Snippet(path, line, match.group(1), match.group(2)))
  return found


def _params(languages):
  params = []
  for s in snippets(languages):
    marks = [pytest.mark.slow] if any(s.path.name == name and text in s.code for name, text in SLOW) else []
    params.append(pytest.param(s, id=s.id, marks=marks))
  return params


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:  # a parent package is missing
    return False


def test_docs_exist_and_readme_is_short():
  readme = (REPO_ROOT / "README.md").read_text()
  assert len(readme.splitlines()) <= 250, "README.md is over 250 lines: move the detail to docs/"
  for link in re.findall(r"\]\((docs/[^)#]+)", readme):
    assert (REPO_ROOT / link).exists(), f"README.md links to {link}, which does not exist"
  assert snippets({"python"}) and snippets({"bash", "sh"})


@pytest.mark.parametrize("snippet", _params({"python"}))
def test_python_snippet_runs(snippet: Snippet, tmp_path):
  if snippet.needs:
    pytest.skip(f"{snippet.id} needs {snippet.needs}")
  env = dict(os.environ, PYTHONPATH=str(REPO_ROOT), TF_CPP_MIN_LOG_LEVEL="2")
  env.pop("XLA_FLAGS", None)  # a fresh shell: one CPU device, as a user has
  script = tmp_path / "snippet.py"
  script.write_text(snippet.code)
  result = subprocess.run([sys.executable, str(script)], cwd=REPO_ROOT, env=env, capture_output=True,
                          text=True, timeout=TIMEOUT_S, check=False)
  assert result.returncode == 0, (f"{snippet.id} failed (exit {result.returncode}):\n{snippet.code}\n"
                                  f"--- stderr ---\n{result.stderr[-4000:]}")


@pytest.mark.parametrize("snippet", _params({"bash", "sh"}))
def test_shell_snippet_is_valid(snippet: Snippet):
  result = subprocess.run(["bash", "-n"], input=snippet.code, capture_output=True, text=True, check=False)
  assert result.returncode == 0, f"{snippet.id} does not parse: {result.stderr}"
  for module in MODULE.findall(snippet.code):
    assert _importable(module), f"{snippet.id}: `python -m {module}`: no such module"
  for path in REPO_PATH.findall(snippet.code):
    assert (REPO_ROOT / path).exists(), f"{snippet.id} names {path}, which is not in the repository"
