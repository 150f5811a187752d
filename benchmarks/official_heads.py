"""The official segmentation stack for side-by-side train steps: official CrossFormer-S + mmsegmentation heads.

Needs ``torch``, ``mmcv-lite``, ``mmengine`` and ``mmsegmentation`` 1.x in the interpreter that runs the
official column (a separate benchmark venv; see benchmarks/RESULTS.md). mmcv-lite has no compiled ops, and
mmseg's package ``__init__`` files import modules that need them; so the three mmseg sub-packages used here
are registered by path without running their ``__init__``, and ``mmcv.ops`` is a stand-in whose every
function raises (UPerHead, FCNHead, FPNHead and FPN never call one). Nothing from mmseg is copied here.

A train step is mmseg's own: ``decode_head.loss`` (+ ``auxiliary_head.loss``, weight 0.4) on
``SegDataSample`` labels (cross-entropy after bilinear resize of the logits to the label size, ignore 255),
backward, ``torch.optim.AdamW``. Norms are plain BatchNorm (SyncBN without a process group is one process).
"""

import os
import sys
import types
from typing import Any, Callable, Tuple

NUM_CLASSES = 150
IGNORE_INDEX = 255
S_CHANNELS = [96, 192, 384, 768]


def _import_mmseg_heads() -> Tuple[Any, ...]:
  """(UPerHead, FCNHead, FPNHead, FPN, SegDataSample, PixelData) without mmseg's op-needing imports."""
  ops = types.ModuleType("mmcv.ops")

  def missing(name: str):
    if name.startswith("__"):
      raise AttributeError(name)

    def fn(*args, **kwargs):
      raise NotImplementedError(f"mmcv.ops.{name} needs mmcv's compiled ops (absent in mmcv-lite)")
    return fn

  ops.__getattr__ = missing
  sys.modules.setdefault("mmcv.ops", ops)
  import mmseg  # pylint: disable=g-import-not-at-top
  base = os.path.dirname(mmseg.__file__)
  for name in ("mmseg.models", "mmseg.models.decode_heads", "mmseg.models.necks"):
    if name not in sys.modules:
      package = types.ModuleType(name)
      package.__path__ = [os.path.join(base, *name.split(".")[1:])]
      sys.modules[name] = package
  from mmengine.structures import PixelData  # pylint: disable=g-import-not-at-top
  from mmseg.models.decode_heads.fcn_head import FCNHead  # pylint: disable=g-import-not-at-top
  from mmseg.models.decode_heads.fpn_head import FPNHead  # pylint: disable=g-import-not-at-top
  from mmseg.models.decode_heads.uper_head import UPerHead  # pylint: disable=g-import-not-at-top
  from mmseg.models.losses import cross_entropy_loss  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  from mmseg.models.necks.fpn import FPN  # pylint: disable=g-import-not-at-top
  from mmseg.structures import SegDataSample  # pylint: disable=g-import-not-at-top
  return UPerHead, FCNHead, FPNHead, FPN, SegDataSample, PixelData


def segmentation_train_step(root: str, kind: str, h: int, w: int, batch: int) -> Callable[[], None]:
  """One official train step (closure) of ``kind`` ``"upernet_train"`` or ``"fpn_train"`` at ``h`` x ``w``."""
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import official  # pylint: disable=g-import-not-at-top
  uper_head, fcn_head, fpn_head, fpn, seg_data_sample, pixel_data = _import_mmseg_heads()
  norm = dict(type="BN", requires_grad=True)
  loss = dict(type="CrossEntropyLoss", use_sigmoid=False, loss_weight=1.0)
  backbone = official.crossformer_s(root, (h, w))
  aux, neck = None, None
  if kind == "upernet_train":
    head = uper_head(in_channels=S_CHANNELS, in_index=[0, 1, 2, 3], pool_scales=(1, 2, 3, 6), channels=512,
                     dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                     loss_decode=loss)
    aux = fcn_head(in_channels=384, in_index=2, channels=256, num_convs=1, concat_input=False,
                   dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                   loss_decode=dict(loss, loss_weight=0.4))
    lr, decay = 6e-5, 0.01
  elif kind == "fpn_train":
    neck = fpn(in_channels=S_CHANNELS, out_channels=256, num_outs=4)
    head = fpn_head(in_channels=[256] * 4, in_index=[0, 1, 2, 3], feature_strides=[4, 8, 16, 32], channels=128,
                    dropout_ratio=0.1, num_classes=NUM_CLASSES, norm_cfg=norm, align_corners=False,
                    loss_decode=loss)
    lr, decay = 1e-4, 1e-4
  else:
    raise ValueError(f"unknown official segmentation work {kind!r}")
  modules = torch.nn.ModuleList([m for m in (backbone, neck, head, aux) if m is not None])
  modules.train()
  optimizer = torch.optim.AdamW(modules.parameters(), lr=lr, weight_decay=decay)
  generator = torch.Generator().manual_seed(0)
  images = torch.randn(batch, 3, h, w, generator=generator)
  labels = torch.randint(0, NUM_CLASSES + 1, (batch, 1, h, w), generator=generator)
  labels[labels == NUM_CLASSES] = IGNORE_INDEX
  samples = []
  for i in range(batch):
    sample = seg_data_sample()
    sample.gt_sem_seg = pixel_data(data=labels[i])
    sample.set_metainfo(dict(img_shape=(h, w), pad_shape=(h, w), ori_shape=(h, w)))
    samples.append(sample)

  def run() -> None:
    optimizer.zero_grad(set_to_none=True)
    feats = backbone(images)
    feats = neck(feats) if neck is not None else feats
    losses = head.loss(feats, samples, None)
    if aux is not None:
      losses.update({f"aux.{k}": v for k, v in aux.loss(feats, samples, None).items()})
    sum(v for k, v in losses.items() if "loss" in k).backward()
    optimizer.step()
  return run
