"""UPerNet + CrossFormer-S on Cityscapes (``dataset_name="cityscapes"``: 19 classes), mmseg's 512 x 1024 recipe.

Data as mmseg's ``configs/_base_/datasets/cityscapes.py``: train Resize (2048, 1024) ratio 0.5-2.0, random
crop 512 x 1024 (cat_max_ratio 0.75), flip 0.5, photometric distortion, pad to 512 x 1024; test Resize
(2048, 1024) keep ratio (AlignResize: the 2048 x 1024 frames stay as they are), inferred by sliding
1024 x 1024 windows with stride 768. Schedule: mmseg's 80k iterations at batch 8 (4 GPUs x 2). CrossFormer
released no Cityscapes model: head and optimizer are the ADE20K UPerNet recipe's (AdamW lr 6e-5 wd 0.01,
poly 1.0 with 1500 warm-up iterations, auxiliary FCN head 0.4).

    python -m projects.segmentation.data.prepare_folder --dataset cityscapes_train_ids \
        --manual_dir CITYSCAPES --data_dir TFDS_DIR
    python -m projects.segmentation.main --config configs/upernet_crossformer_s_cityscapes.py --workdir DIR \
        --config.dataset.data_dir=TFDS_DIR --config.init_from.checkpoint_path=CONVERTED_IMAGENET_CKPT
"""

import ml_collections
from ml_collections import config_dict

from configs import segmentation_base

CROP_SIZE = (512, 1024)


def get_config():
  """Returns the job config."""
  config = segmentation_base.upernet("s")
  config.experiment_name = "upernet_crossformer_s_cityscapes"
  config.num_training_steps = 80_000
  config.batch_size = config.eval_batch_size = 8
  config.log_eval_steps = config.checkpoint_steps = 8000
  config.dataset_name = "cityscapes"  # projects.registry
  config.dataset = segmentation_base.dataset_config(
      num_classes=19, scale=(2048, 1024), ratio_range=(0.5, 2.0),
      crop_size=CROP_SIZE, cat_max_ratio=0.75, eval_scale=(2048, 1024),
      eval_buckets=((1024, 2048), (2048, 1024)))  # every Cityscapes frame is 1024 x 2048
  config.inference = ml_collections.ConfigDict(dict(mode="slide", crop_size=(1024, 1024), stride=(768, 768),
                                                    ratios=(1.0,), flip=False))
  # No released checkpoint of this recipe.
  config.official_checkpoint = config_dict.placeholder(str)
  config.official_checkpoint_url = config_dict.placeholder(str)
  return config
