"""The classification recipes carry the official values (config.py / yaml / main.py / optimizer.py of the
official code) and build working optimizers, schedules and models."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import classification_base
from projects import registry
from projects.common import config_utils
from projects.common import optim

VARIANTS = {"crossformer_t": 0.1, "crossformer_s": 0.2, "crossformer_b": 0.3, "crossformer_l": 0.5,
            "crossformerpp_s": 0.2, "crossformerpp_b": 0.3, "crossformerpp_l": 0.5, "crossformerpp_h": 0.5}


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_imagenet_recipe_files(variant):
  import backbones  # pylint: disable=import-outside-toplevel
  config = config_utils.load_config(f"configs/{variant}_imagenet.py")
  assert config.model_name == "crossformer_classification" and config.dataset_name == "imagenet2012"
  assert registry.get_model_cls(config.model_name).task == "classification"
  assert config.batch_size == 1024 and config.num_training_steps == 300 * (1_281_167 // 1024)
  lr = config.lr_configs
  assert lr.base_learning_rate == pytest.approx(1e-3) and lr.warmup_steps == 20 * 1251
  assert lr.base_learning_rate * lr.warmup_alpha == pytest.approx(1e-6)  # 5e-7 x 1024 / 512
  assert lr.base_learning_rate * lr.alpha == pytest.approx(1e-5)  # 5e-6 x 1024 / 512
  assert config.optimizer == "adamw" and config.optimizer_configs.weight_decay == 0.05
  assert config.optimizer_configs.grad_clip.clip_value == 5.0 and config.label_smoothing == 0.1
  assert config.model.backbone.drop_path_rate is None  # the registry's own: the official value
  assert backbones.create_model(variant, features_only=False).backbone.drop_path_rate == VARIANTS[variant]
  assert config.official_top1 == backbones.get_pretrained_cfg(variant)["top1"]
  d = config.dataset
  assert (d.crop_size, d.crop_pct, d.rand_augment, d.erase_prob, d.mixup_alpha, d.cutmix_alpha, d.switch_prob) == (
      224, 0.875, "rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.5)


def test_batch_argument_rescales_linearly():
  from configs import crossformer_s_imagenet  # pylint: disable=import-outside-toplevel
  config = crossformer_s_imagenet.get_config("256")  # what --config configs/crossformer_s_imagenet.py:256 passes
  assert config.batch_size == 256 and config.lr_configs.base_learning_rate == pytest.approx(2.5e-4)
  assert config.lr_configs.warmup_steps == 20 * (1_281_167 // 256)


def test_schedule_warms_up_then_cosine_to_the_minimum():
  config = classification_base.imagenet("crossformer_t", 512)
  total = config.num_training_steps
  schedule = optim.create_lr_schedule(config.lr_configs, total)
  warmup = config.lr_configs.warmup_steps
  np.testing.assert_allclose(float(schedule(0)), 5e-7, rtol=1e-4)
  np.testing.assert_allclose(float(schedule(warmup)), 5e-4, rtol=1e-4)
  np.testing.assert_allclose(float(schedule(total - 1)), 5e-6, rtol=1e-3)  # the last step that runs
  middle = warmup + (total - warmup) // 2
  np.testing.assert_allclose(float(schedule(middle)), (5e-4 + 5e-6) / 2, rtol=1e-3)


def test_weight_decay_skips_exactly_the_1d_parameters():
  config = classification_base.imagenet("crossformer_t")
  params = {"backbone": {"layers_0_blocks_0": {"attn": {"pos1_linear": {"kernel": jnp.ones((2, 8)),
                                                                         "bias": jnp.ones((8,))}},
                                               "norm1": {"scale": jnp.ones((8,))}}},
            "output_projection": {"kernel": jnp.ones((8, 4)), "bias": jnp.ones((4,))}}
  mask = optim.config_weight_decay_mask(config, params)
  flat = {"/".join(str(getattr(k, "key", k)) for k in path): v for path, v in
          jax.tree_util.tree_flatten_with_path(mask)[0]}
  assert flat == {"backbone/layers_0_blocks_0/attn/pos1_linear/kernel": True,  # the official code decays the DPB
                  "backbone/layers_0_blocks_0/attn/pos1_linear/bias": False,
                  "backbone/layers_0_blocks_0/norm1/scale": False,
                  "output_projection/kernel": True, "output_projection/bias": False}


def test_finetune_and_tiny_recipes():
  tiny = config_utils.load_config("configs/tiny_classification.py")
  assert tiny.dataset_name == "image_folder" and tiny.synthetic_data is not None
  ft = config_utils.load_config("configs/finetune_crossformer_s_folder.py")
  assert ft.model.backbone.name == "crossformer_s" and ft.model.backbone.drop_path_rate == 0.1
  assert ft.dataset.mix_prob == 0.0 and ft.lr_configs.base_learning_rate == 1e-4


def test_layer_decay_scales_updates_by_depth():
  import backbones  # pylint: disable=import-outside-toplevel
  module = backbones.create_model("crossformer_t", features_only=False, num_classes=3, embed_dim=16,
                                  depths=(1, 2, 1, 1), num_heads=(1, 1, 2, 2))
  shapes = jax.eval_shape(module.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]
  params = jax.tree.map(lambda s: jnp.ones(s.shape, s.dtype), shapes)
  ids, num_layers = optim.layer_ids(params)
  assert num_layers == 5
  first = lambda tree: jax.tree.leaves(tree)[0]  # noqa: E731
  b = ids["backbone"]
  assert first(b["patch_embed"]) == 0 and first(b["layers_0_blocks_0"]) == 1 and first(b["layers_1_blocks_1"]) == 3
  assert first(b["layers_0_downsample"]) == 2 and first(b["layers_3_blocks_0"]) == 5
  assert first(ids["output_projection"]) == first(ids["norm"]) == 6
  config = classification_base.finetune("crossformer_t")
  with config.unlocked():
    config.layer_decay = 0.5
    config.optimizer, config.optimizer_configs = "sgd", {}
  tx = optim.create_optimizer(config, lambda step: 1.0)
  updates, _ = tx.update(params, tx.init(params), params)  # sgd: update = -lr * grad = -1
  def value(tree):
    return np.unique(np.concatenate([np.ravel(x) for x in jax.tree.leaves(tree)])).tolist()
  assert value(updates["output_projection"]) == value(updates["norm"]) == [-1.0]
  assert value(updates["backbone"]["layers_3_blocks_0"]) == [-0.5]
  assert value(updates["backbone"]["patch_embed"]) == [-(0.5 ** 6)]
  with config.unlocked():
    config.layer_decay = 1.5
  with pytest.raises(ValueError, match="layer_decay"):
    optim.create_optimizer(config, lambda step: 1.0)
