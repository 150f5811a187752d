"""A tiny CrossFormer classifier trained on a generated 4-class folder: the classification demo job.

python -m projects.classification.main --config configs/tiny_classification.py --workdir workdirs/tiny_cls

On first use it writes the synthetic folder (``projects.classification.data.make_synthetic``: 4 classes of
coloured patterns, 48 x 48 to 96 x 96 pixels) into ``<workdir>/data`` and prepares it with the ``image_folder``
builder; then it trains with the official recipe's structure at a small scale (AdamW + warm-up + cosine,
gradient clipping, label smoothing, random resized crop, flip, random erasing, Mixup/CutMix on half of the
batches; RandAugment off to learn fast), evaluates with the official protocol scaled to 64 x 64 crops and
writes ``eval_results.json``, ``per_class_accuracy.tsv`` and ``predictions.png``. A few CPU minutes.
"""

from configs import classification_base


def get_config():
  """Returns the tiny job config."""
  config = classification_base.finetune("crossformer_s", batch_size=32, num_training_steps=240, base_lr=2e-3)
  config.experiment_name = "tiny_classification"
  config.model = classification_base.model_config(
      "crossformer_s", drop_path_rate=0.0, embed_dim=16, depths=(1, 1, 1, 1), num_heads=(1, 1, 2, 2),
      group_sizes=(4, 4, 4, 2), intervals=(4, 2, 1, 1))
  config.dataset = classification_base.dataset_config(
      crop_size=64, rand_augment=None, color_jitter=0.0, erase_prob=0.25, mix_prob=0.5, shuffle_buffer_size=512)
  config.synthetic_data = dict(num_train=60, num_val=15, seed=0)
  config.optimizer_configs.weight_decay = 0.05
  config.log_summary_steps = 20
  config.log_eval_steps = 120
  config.checkpoint_steps = 120
  config.max_checkpoint_keep = 1
  config.num_visualized_images = 16
  return config
