"""A tiny CrossFormer + Semantic FPN trained on the synthetic ADE20K stand-in: the library's demo job.

python -m projects.segmentation.main --config configs/tiny_ade20k.py --workdir workdirs/tiny_ade20k

On first use it generates the synthetic ``ADEChallengeData2016`` release (8 of the 150 classes drawn as
textured scenes) and builds it with the real tfds builder into ``<workdir>/data`` (or
``--config.dataset.data_dir``); then it trains with the official FPN recipe's structure (AdamW, poly decay,
random rescale / crop / flip / photometric distortion) at a small scale, evaluates mIoU and writes
``eval_results.json``, ``per_class_iou.tsv`` and ``predictions.png`` (image | ground truth | prediction) into
the workdir. Runs in a few minutes on a laptop CPU.
"""

from configs import common
from configs import segmentation_base


def get_config():
  """Returns the tiny job config."""
  config = segmentation_base.semantic_fpn("s")
  config.experiment_name = "tiny_ade20k"
  config.num_training_steps = 300
  config.batch_size = config.eval_batch_size = 8
  config.log_summary_steps = 20
  config.log_eval_steps = 150
  config.checkpoint_steps = 150
  config.max_checkpoint_keep = 1
  config.model.backbone = common.backbone_config(
      "s", group_sizes=(7, 7, 7, 7), intervals=(4, 2, 1, 1), embed_dim=32, depths=(1, 1, 1, 1),
      num_heads=(1, 2, 4, 8))
  config.model.backbone.drop_path_rate = 0.0
  config.model.neck.out_channels = 32
  config.model.decode_head.channels = 32
  config.model.avg_non_ignore = True
  common.adamw(config, weight_decay=1e-4)
  config.lr_configs = common.mmcv_lr_configs(2e-3, policy="poly", power=0.9, min_lr=1e-5, warmup_steps=20,
                                             warmup_ratio=0.1, decay_steps=config.get_ref("num_training_steps"))
  # Small images: the synthetic release's short side is 96-160 px (aspect ratios up to 2); training
  # rescales to (256, 128) x ratio 0.5-2.0 and crops 128 x 128; evaluation AlignResizes to (256, 128) into
  # two padded buckets (landscape, portrait): two eval programs to compile.
  config.synthetic_data = dict(num_train=240, num_val=24, seed=0, short_side=(96, 160), max_aspect=2.0,
                               manual_dir=None)
  config.dataset = segmentation_base.dataset_config(
      scale=(256, 128), ratio_range=(0.5, 2.0), crop_size=(128, 128), eval_scale=(256, 128),
      eval_buckets=((128, 256), (256, 128)), shuffle_buffer_size=256)
  config.num_visualized_images = 4
  return config
