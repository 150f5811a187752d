"""The console scripts find the task of a config or checkpoint, and configs resolve by name from anywhere."""

import pytest

from projects import cli
from projects.common import config_utils


def test_shipped_recipes_resolve_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = config_utils.resolve_config_path("tiny_ade20k")
  assert path.endswith("configs/tiny_ade20k.py")
  assert config_utils.resolve_config_path("configs/tiny_coco.py").endswith("configs/tiny_coco.py")
  assert config_utils.load_config("upernet_crossformer_s_ade20k").model_name == "crossformer_segmentation"
  with pytest.raises(ValueError, match="no shipped recipe is named 'nope'"):
    config_utils.resolve_config_path("nope.py")


def test_commands_dispatch_on_the_models_declared_task(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert cli.task_of(["--config", "tiny_ade20k"]) == "segmentation"
  assert cli.task_of(["--config=tiny_coco_instance", "--workdir", "w"]) == "detection"
  assert cli.task_of(["--config", "tiny_classification"]) == "classification"
  argv = cli._with_resolved_config(["--config", "tiny_coco", "--workdir", "w"])  # pylint: disable=protected-access
  assert argv[1].endswith("configs/tiny_coco.py") and argv[2:] == ["--workdir", "w"]
  with pytest.raises(SystemExit, match="give --config"):
    cli.task_of(["--input", "x.jpg"])
