"""The classification job end to end, the evaluate and predict commands, and official checkpoints.

A tiny classifier (32 x 32 crops, one block per stage) on the generated 4-class folder: a few training steps,
then the outputs of the job, the evaluate command on the workdir (the job's own top-1 again), the predict
command (top-k JSON with class names + a picture), and an official-layout checkpoint (the tiny model's
variables under the official classifier's key names, as ``.npz``) converted and evaluated by the command.
"""

import json
import pathlib

import flax
import jax
import ml_collections
import numpy as np
import pytest
from PIL import Image

from configs import tiny_classification
from projects.classification import evaluate as evaluate_cmd
from projects.classification import predict as predict_cmd
from projects.classification import train
from projects.classification.data import folder_builder
from projects.classification.data import make_synthetic
from projects.common import model_io
from projects.common import restore

REPO = pathlib.Path(__file__).resolve().parents[1]
KEYS_FILE = REPO.parent / "shared" / "fixtures" / "crossformer" / "keys_crossformer_t_cls.json"


def _config(data_dir: pathlib.Path, manual_dir: pathlib.Path, steps: int = 4) -> ml_collections.ConfigDict:
  config = tiny_classification.get_config()
  with config.unlocked():
    config.num_training_steps = steps
    config.batch_size = config.eval_batch_size = 8
    config.log_summary_steps = config.log_eval_steps = config.checkpoint_steps = steps
    config.lr_configs.warmup_steps = 1
    config.progress_bar = False
    config.synthetic_data = None
    config.num_visualized_images = 4
    config.model.backbone.overrides.group_sizes = (4, 2, 2, 1)
    config.model.backbone.overrides.intervals = (2, 2, 1, 1)
    config.dataset.crop_size = 32
    config.dataset.data_dir = str(data_dir)
    config.dataset.manual_dir = str(manual_dir)
  return config


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
  root = tmp_path_factory.mktemp("classification")
  manual = make_synthetic.make_image_folder(str(root / "images"), num_train=4, num_val=2, size_range=(30, 60))
  folder_builder.prepare(str(manual), str(root / "tfds"))
  return root, manual


@pytest.mark.slow
def test_short_job_then_evaluate_and_predict(folder, tmp_path):
  root, manual = folder
  workdir = tmp_path / "work"
  result = train.run(_config(root / "tfds", manual), str(workdir))
  summary = json.loads((workdir / "eval_results.json").read_text())
  assert 0.0 <= summary["top1"] <= summary["top5"] <= 1.0 and summary["num_examples"] == 8
  assert summary["top1"] == pytest.approx(summary["accuracy"])  # the evaluator agrees with the model's metric
  rows = (workdir / "per_class_accuracy.tsv").read_text().splitlines()
  assert rows[0] == "class\taccuracy\tcorrect\ttotal" and [r.split("\t")[0] for r in rows[1:]] == list(
      make_synthetic.CLASSES)
  assert sum(int(r.split("\t")[3]) for r in rows[1:]) == 8
  assert Image.open(workdir / "predictions.png").size[0] > 100
  assert int(jax.device_get(result.state.step)) == 4

  # evaluate: the workdir's config and latest checkpoint, the same top-1.
  results = evaluate_cmd.main(["--checkpoint", str(workdir), "--output_dir", str(tmp_path / "eval")])
  assert results["top1"] == pytest.approx(summary["top1"]) and results["num_examples"] == 8
  assert (tmp_path / "eval" / "per_class_accuracy.tsv").is_file()

  # predict: one JSON with the top classes by name and one picture per image; a rerun refuses nothing.
  out = tmp_path / "pred"
  images = manual / "val" / "dots"
  done = predict_cmd.main(["--checkpoint", str(workdir), "--input", str(images), "--output_dir", str(out)])
  assert len(done["done"]) == 2 and not done["skipped"]
  payload = json.loads(next(out.glob("*.json")).read_text())
  assert payload["source"].startswith(str(images.resolve()))
  top = payload["top_k"]
  assert len(top) == 4 and {t["class"] for t in top} == set(make_synthetic.CLASSES)
  assert sum(t["probability"] for t in top) == pytest.approx(1.0, abs=1e-4)
  assert [t["probability"] for t in top] == sorted((t["probability"] for t in top), reverse=True)
  assert len(list(out.glob("*_top5.png"))) == 2


def _official_layout(variables, keys_file: pathlib.Path):
  """The tiny model's params under the official classifier's key names (those of ``keys_file`` the tiny model
  has), torch layouts, plus a few DPB buffers (which the conversion drops)."""
  from backbones.crossformer import convert  # pylint: disable=import-outside-toplevel
  flat = flax.traverse_util.flatten_dict(jax.tree.map(np.asarray, variables["params"]))
  state_dict = {}
  for entry in json.loads(keys_file.read_text())["keys"]:
    key = entry["key"]
    if entry["kind"] != "param":
      if key.startswith("layers.0.blocks.0."):
        state_dict[key] = np.zeros(entry["shape"], np.float32)
      continue
    path, leaf = convert.flax_path(key)
    if path[0] not in ("norm", "output_projection"):
      path = ("backbone",) + path
    name = "bias" if leaf == "bias" else ("kernel" if len(entry["shape"]) in (2, 4) else "scale")
    value = flat.get(path + (name,))
    if value is None:
      continue  # a block the tiny model does not have
    if name == "kernel":
      value = value.transpose(3, 2, 0, 1) if value.ndim == 4 else value.T
    state_dict[key] = value
  return state_dict


@pytest.mark.slow
def test_official_layout_checkpoint_converts_and_evaluates(folder, tmp_path):
  if not KEYS_FILE.is_file():
    pytest.skip(f"{KEYS_FILE} not found (the shared/ folder beside the checkout)")
  root, manual = folder
  config = _config(root / "tfds", manual)
  config_path = tmp_path / "tiny.json"
  config_path.write_text(config.to_json())
  model = model_io.build_model(config, inference=True)  # classes from the prepared folder (dataset_meta)
  assert model.num_classes == 4 and model.dataset_meta_data["class_names"] == list(make_synthetic.CLASSES)
  variables = jax.tree.map(np.asarray, model.flax_model.init(jax.random.PRNGKey(3), np.zeros((1, 32, 32, 3))))
  state_dict = _official_layout(variables, KEYS_FILE)
  assert "head.weight" in state_dict and "layers.0.blocks.0.attn.biases" in state_dict
  np.savez(tmp_path / "crossformer_tiny.npz", **state_dict)

  restored, converted = restore.restore_model(str(config_path), tmp_path / "crossformer_tiny.npz")
  flat_a = flax.traverse_util.flatten_dict(converted)
  flat_b = flax.traverse_util.flatten_dict(variables)
  assert set(flat_a) == set(flat_b)
  for key in flat_b:
    np.testing.assert_array_equal(flat_a[key], flat_b[key])  # every tensor back in its place
  results = evaluate_cmd.main(["--config", str(config_path), "--checkpoint", str(tmp_path / "crossformer_tiny.npz")])
  reference = evaluate_cmd.evaluate(restored, variables, config, progress=False)
  assert results["num_examples"] == 8 and results["top1"] == pytest.approx(reference["top1"])

  # Converted once into a model file (projects.convert_checkpoint), it evaluates without --config.
  from projects import convert_checkpoint  # pylint: disable=import-outside-toplevel
  config_py = tmp_path / "tiny_config.py"
  config_py.write_text(f"import json\nimport ml_collections\n\n\ndef get_config():\n"
                       f"  return ml_collections.ConfigDict(json.loads(open({str(config_path)!r}).read()))\n")
  assert convert_checkpoint.main(["--input", str(tmp_path / "crossformer_tiny.npz"), "--config", str(config_py),
                                  "--output", str(tmp_path / "tiny.msgpack")]) == 0
  again = evaluate_cmd.main(["--checkpoint", str(tmp_path / "tiny.msgpack")])
  assert again["top1"] == pytest.approx(results["top1"]) and again["top5"] == pytest.approx(results["top5"])

  # A checkpoint of another size is refused with the keys named.
  bad = dict(state_dict, **{"head.weight": np.zeros((3, 7), np.float32)})
  np.savez(tmp_path / "bad.npz", **bad)
  with pytest.raises(ValueError, match=r"head\.weight"):
    restore.restore_model(str(config_path), tmp_path / "bad.npz")


def test_finetune_takes_the_trunk_of_an_official_classifier_and_a_fresh_head(folder, tmp_path):
  """``init_from.checkpoint_path`` = a converted ImageNet classifier (``projects.convert_checkpoint`` output;
  here a tiny one with 1000 classes): the trunk is loaded into ``params["backbone"]``; the head for the folder's
  4 classes stays the fresh one."""
  import backbones  # pylint: disable=import-outside-toplevel
  from projects.common import pretrained  # pylint: disable=import-outside-toplevel
  root, manual = folder
  config = _config(root / "tfds", manual)
  imagenet = model_io.build_model(config, {"num_classes": 1000}, inference=True)
  pretrained_vars = jax.tree.map(np.asarray, imagenet.flax_model.init(jax.random.PRNGKey(5), np.zeros((1, 32, 32, 3))))
  backbones.save_converted(tmp_path / "imagenet_tiny.msgpack", imagenet.flax_model.classifier, pretrained_vars)
  model = model_io.build_model(config)
  params = jax.tree.map(np.asarray, model.flax_model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3))))["params"]
  loaded = pretrained.load_pretrained_backbone(dict(params), str(tmp_path / "imagenet_tiny.msgpack"))
  for a, b in zip(jax.tree.leaves(loaded["backbone"]), jax.tree.leaves(pretrained_vars["params"]["backbone"])):
    np.testing.assert_array_equal(a, b)
  assert loaded["output_projection"]["kernel"].shape == (128, 4)
  np.testing.assert_array_equal(loaded["output_projection"]["kernel"], params["output_projection"]["kernel"])
