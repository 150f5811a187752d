"""Fine-tune CrossFormer-S (ImageNet weights) on your own classes: one sub-folder per class.

python -m projects.convert_checkpoint --input crossformer-s.pth --variant crossformer_s --output cf_s.msgpack
python -m projects.classification.main --config configs/finetune_crossformer_s_folder.py --workdir workdirs/ft \
    --config.dataset.manual_dir=PHOTOS --config.init_from.checkpoint_path=cf_s.msgpack

PHOTOS holds train/<class>/ and val/<class>/ (or <class>/ folders with --config.dataset.val_fraction=0.1); the
checkpoint is the official ImageNet one converted by projects.convert_checkpoint (its trunk is loaded, its
1000-class head is not).
"""

from configs import classification_base


def get_config():
  """The fine-tuning recipe (``classification_base.finetune``) for CrossFormer-S at batch 64."""
  return classification_base.finetune("crossformer_s", batch_size=64, num_training_steps=3000, base_lr=1e-4)
