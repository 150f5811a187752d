"""CrossFormer-L on ImageNet-1k, the official recipe (configs/classification_base.py).

python -m projects.classification.main --config configs/crossformer_l_imagenet.py \
    --workdir workdirs/crossformer_l_imagenet     (append `:BATCH` to the config path for another global batch)
"""

from configs import classification_base


def get_config(batch_size: str = ""):
  """The official recipe at global batch ``batch_size`` (default 1024, the official 128 x 8 GPUs)."""
  return classification_base.imagenet("crossformer_l", int(batch_size or classification_base.OFFICIAL_BATCH))
