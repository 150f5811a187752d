"""Adding a model is one file: a linear-probe segmentation head declared below (as it would be in
``projects/segmentation/models/linear_probe.py``) trains, evaluates, predicts and exports through the library's
own job and commands, which look it up by name and know nothing else about it."""

import json
import os
import pathlib

import flax.linen as nn
import jax.numpy as jnp
import pytest

from heads.layers import resize_bilinear
from projects import registry
from projects.common import config_utils
from projects.common.base_model import param_shapes
from projects.segmentation.models.encoder_decoder import SegmentationModel

REPO = pathlib.Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------ the whole declaration of the new model

class LinearProbeNet(nn.Module):
  """A 1x1 convolution on the stride-8 backbone map, upsampled to the input: a linear probe."""
  backbone: nn.Module
  num_classes: int

  @nn.compact
  def __call__(self, inputs, train: bool = False, debug: bool = False):
    del debug
    features = self.backbone(inputs, train=train)["stage_1"]
    logits = nn.Conv(self.num_classes, (1, 1), name="probe")(features).astype(jnp.float32)
    return {"logits": resize_bilinear(logits, inputs.shape[1:3])}


@registry.register_model("linear_probe_segmentation")
class LinearProbeSegmentation(SegmentationModel):
  """Scenic's segmentation contract (loss, metrics, evaluator) with a linear-probe network."""

  @classmethod
  def num_classes_from_params(cls, params, config):
    del config
    return int(param_shapes(params, "probe/kernel")[0][-1])

  def build_flax_model(self):
    return LinearProbeNet(backbone=self.build_backbone(jnp.float32),
                          num_classes=self.num_classes)


# --------------------------------------------------------------------------------------------- the test

@pytest.mark.slow
def test_a_model_declared_in_one_file_trains_evaluates_predicts_and_exports(tmp_path, capsys):
  from projects import export  # pylint: disable=g-import-not-at-top
  from projects.segmentation import evaluate, predict, train  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config(str(REPO / "configs" / "tiny_ade20k.py"))
  with config.unlocked():
    config.model_name = "linear_probe_segmentation"
    config.num_training_steps = 2
    config.log_eval_steps = 0
    config.checkpoint_steps = 2
    config.progress_bar = False
    config.synthetic_data.num_train = 8
    config.synthetic_data.num_val = 2
    config.dataset.eval_buckets = ((256, 256),)
    config.dataset.data_dir = str(tmp_path / "data")
  workdir = tmp_path / "work"
  result = train.run(config, str(workdir))
  assert 0.0 <= result.eval_summary["mIoU"] <= 1.0
  assert json.loads((workdir / "config.json").read_text())["model_name"] == "linear_probe_segmentation"

  results = evaluate.main(["--checkpoint", str(workdir), "--max_batches", "1"])
  assert 0.0 <= results["mIoU"] <= 1.0

  out = tmp_path / "pred"
  summary = predict.main(["--checkpoint", str(workdir), "--input", str(REPO / "backbones/assets/sample.jpg"),
                          "--output_dir", str(out)])
  assert not summary["skipped"] and len(list(out.iterdir())) == 2

  exported = export.main(["--checkpoint", str(workdir), "--shape", "1x64x64", "--output",
                          str(tmp_path / "probe.jaxexport")])
  assert os.path.getsize(exported[0]) > 0
  from backbones import export as export_lib  # pylint: disable=g-import-not-at-top
  outputs = export_lib.load_stablehlo(exported[0])(jnp.zeros((1, 64, 64, 3)))
  assert outputs["logits"].shape == (1, 64, 64, 150)
  capsys.readouterr()


def test_the_registry_finds_the_declared_models_and_refuses_a_reused_name():
  assert {"crossformer_segmentation", "crossformer_retinanet", "crossformer_mask_rcnn",
          "linear_probe_segmentation"} <= set(registry.list_models())
  cls = registry.get_model_cls("crossformer_retinanet")
  assert (cls.name, cls.task) == ("crossformer_retinanet", "detection")
  with pytest.raises(ValueError, match="already registered"):
    registry.register_model("linear_probe_segmentation", SegmentationModel)
  with pytest.raises(ValueError, match="unknown model_name 'nope'"):
    registry.get_model_cls("nope")
