"""Semantic FPN + CrossFormer-S fine-tuned on your own segmentation folder (``segmentation_folder``).

The folder holds ``classes.txt``, ``images/{train,val}/`` and ``masks/{train,val}/`` (8-bit class-index PNGs,
255 or ``ignore: N`` = unlabelled; see ``projects/segmentation/data/folder_builders.py``). The class count
and names come from the prepared dataset's metadata (``dataset.num_classes`` None); the run's
``config.json`` records them, so the evaluate and predict commands name the classes.

    python -m projects.segmentation.data.prepare_folder --dataset segmentation_folder --manual_dir MY_DATA \
        --data_dir TFDS_DIR
    python -m projects.segmentation.main --config configs/fpn_crossformer_s_custom_folder.py --workdir DIR \
        --config.dataset.data_dir=TFDS_DIR --config.init_from.checkpoint_path=CONVERTED_IMAGENET_CKPT

Recipe: the ADE20K Semantic FPN recipe (AdamW lr 1e-4 wd 1e-4, poly 0.9; Resize (2048, 512) ratio 0.5-2.0,
crop 512 x 512, flip, photometric distortion; test AlignResize (2048, 512)) for 20k iterations at batch 8.
Change ``dataset.scale`` / ``crop_size`` / ``eval_scale`` to your images' size.
"""

from ml_collections import config_dict

from configs import segmentation_base


def get_config():
  """Returns the job config."""
  config = segmentation_base.semantic_fpn("s")
  config.experiment_name = "fpn_crossformer_s_custom_folder"
  config.num_training_steps = 20_000
  config.batch_size = config.eval_batch_size = 8
  config.log_eval_steps = config.checkpoint_steps = 2000
  config.dataset_name = "segmentation_folder"  # projects.registry
  config.dataset = segmentation_base.dataset_config(num_classes=config_dict.placeholder(int))
  # No released checkpoint of this recipe.
  config.official_checkpoint = config_dict.placeholder(str)
  config.official_checkpoint_url = config_dict.placeholder(str)
  return config
