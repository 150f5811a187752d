"""CrossFormer (arXiv 2108.00154) and CrossFormer++ (arXiv 2303.06908): the dense backbone and the
image classifier, in Flax linen, NHWC."""

from typing import Any, Dict, Optional, Sequence, Tuple, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from backbones.crossformer import grouping
from backbones.crossformer.attention import GroupAttention
from backbones.crossformer.layers import CrossScaleEmbedding, DropPath, LayerNorm, Mlp
from backbones.crossformer.sizes import check_input, stage_sizes
from backbones.feature_info import FeatureInfo
from backbones.valid_region import scaled_sizes, zero_outside

Dtype = Any
IntOrSeq = Union[int, Sequence[int]]
FloatOrSeq = Union[float, Sequence[float]]


def per_stage(value: IntOrSeq, num_stages: int, name: str) -> Tuple[int, ...]:
  """Broadcasts an int to one value per stage, or checks that a sequence has one per stage."""
  if isinstance(value, (int, np.integer)):
    return (int(value),) * num_stages
  value = tuple(int(v) for v in value)
  if len(value) != num_stages:
    raise ValueError(f"{name} needs one value per stage ({num_stages}), got {value}")
  return value


def per_stage_ratio(value: FloatOrSeq, num_stages: int) -> Tuple[float, ...]:
  """``mlp_ratio``: a float for every stage, or one per stage (the CrossFormer++ classifier's list)."""
  if isinstance(value, (int, float, np.number)):
    return (float(value),) * num_stages
  value = tuple(float(v) for v in value)
  if len(value) != num_stages:
    raise ValueError(f"mlp_ratio needs one value per stage ({num_stages}), got {value}")
  return value


def has_acl(block: int, depth: int) -> bool:
  """The official ACL rule: blocks 2, 5, 8, ... of a stage, never its last block."""
  return (block + 1) % 3 == 0 and block < depth - 1


def check_pp_options(module: Any) -> None:
  """Raises ``ValueError`` for CrossFormer++ options the module cannot honour."""
  grouping.block_group_sizes(module.group_sizes, module.depths, module.img_size, module.patch_sizes[0],
                             module.group_type)  # validates group_sizes / group_type
  if module.pad_type not in grouping.PAD_TYPES:
    raise ValueError(f"pad_type must be one of {grouping.PAD_TYPES}, got {module.pad_type!r}")
  pp_options = dict(use_acl=module.use_acl, pad_type=module.pad_type, no_mask=module.no_mask,
                    adaptive_interval=module.adaptive_interval)
  if module.lda_mode == "v1" and any(pp_options.values()):
    used = ", ".join(f"{k}={v}" for k, v in pp_options.items() if v)
    raise ValueError(f"{used}: CrossFormer++ options exist only in the main-branch code, whose LDA is "
                     "lda_mode='main'; set lda_mode='main'")


# Block rematerialisation policies (what a block keeps for the backward pass; the rest is recomputed):
#   "full": only the block's input; "dots": also the outputs of its Dense layers (qkv, proj, fc1, fc2),
#   recomputing norms, GELU and the attention scores/softmax (which long groups chunk anyway).
REMAT_POLICIES = {"full": None, "dots": jax.checkpoint_policies.dots_with_no_batch_dims_saveable}


def remat_block(block_cls: type, remat: Union[bool, str]) -> type:
  """``block_cls`` wrapped by ``nn.remat`` with the named policy; unchanged for False/None/"" /"none"."""
  if remat in (False, None, "", "none"):
    return block_cls
  name = "full" if remat is True else remat
  if name not in REMAT_POLICIES:
    raise ValueError(f"remat must be a bool or one of {sorted(REMAT_POLICIES)}, got {remat!r}")
  return nn.remat(block_cls, static_argnums=(2,), policy=REMAT_POLICIES[name])


def block_plan_args(module: Any) -> Tuple[Tuple[Dict[str, Any], ...], ...]:
  """Per stage, per block: the grouping arguments of the block (what :func:`grouping.plan_groups` takes)."""
  intervals = per_stage(module.intervals, len(module.dims), "intervals")
  return tuple(tuple(dict(group_size=g, interval=intervals[stage], long_distance=b % 2 == 1,
                          lda_mode=module.lda_mode, adaptive_interval=module.adaptive_interval)
                     for b, g in enumerate(sizes))
               for stage, sizes in enumerate(module.block_group_sizes))


class CrossFormerBlock(nn.Module):
  """Pre-norm block: ``x + DropPath(LSDA(LN(x)))`` then ``x + DropPath(MLP(LN(x)))``.

  Whether the block attends short-distance (SDA) or long-distance (LDA), and with which groups, is
  decided from the input map size on every call (see :func:`grouping.plan_groups`). With ``use_acl``
  (CrossFormer++ amplitude cooling layer) the output is then replaced by ``LN(DWConv3x3(x))``.
  """
  num_heads: int
  group_size: int
  interval: int
  long_distance: bool
  lda_mode: str = "v1"
  mlp_ratio: float = 4.0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  drop_path: float = 0.0
  attn_drop: float = 0.0
  use_acl: bool = False
  pad_type: int = 0
  no_mask: bool = False
  adaptive_interval: bool = False
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               valid_hw: Optional[jnp.ndarray] = None) -> jnp.ndarray:
    """``valid_hw`` (B, 2): canvas inference, each example's map being its top-left ``valid_hw`` region
    (see :meth:`CrossFormerBackbone.__call__`); the map's tokens outside it are masked out of every group."""
    _, h, w, c = x.shape
    plan = grouping.plan_groups(h, w, self.group_size, self.interval, self.long_distance,
                                self.lda_mode, self.adaptive_interval, self.pad_type)
    y = LayerNorm(dtype=self.dtype, name="norm1")(x)
    if valid_hw is None:
      key_bias = None if self.no_mask else grouping.key_padding_bias(plan)
    else:
      if self.no_mask or self.pad_type:
        raise ValueError("canvas inference (image_size) needs no_mask=False and pad_type=0: the image's own "
                         "padding would otherwise depend on its size")
      y = zero_outside(y, valid_hw)  # as the zero padding of the image alone (and never 0 * inf)
      if self.lda_mode == "v1" and min(h, w) <= self.group_size:
        plan = grouping.dense_plan(h, w)  # v1 fallback: G' = min(valid h, w), a traced size
        key_bias = grouping.fallback_group_bias(h, w, valid_hw)
      else:
        key_bias = grouping.valid_key_bias(plan, valid_hw)
    (top, bottom), (left, right) = plan.pad_widths
    # Zero padding after norm1 (bottom/right, or centred with pad_type 1); padded keys are masked.
    y = jnp.pad(y, ((0, 0), (top, bottom), (left, right), (0, 0)))
    y = GroupAttention(self.num_heads, self.qkv_bias, self.qk_scale, attn_drop=self.attn_drop,
                       dtype=self.dtype, name="attn")(grouping.group(y, plan), plan.group_hw, key_bias, train)
    y = grouping.ungroup(y, plan)[:, top:top + h, left:left + w]
    x = x + DropPath(self.drop_path)(y, train)
    y = LayerNorm(dtype=self.dtype, name="norm2")(x)
    y = Mlp(int(c * self.mlp_ratio), dtype=self.dtype, name="mlp")(y, train)
    x = x + DropPath(self.drop_path)(y, train)
    if self.use_acl:  # no residual: the cooling layer replaces the tokens
      x = nn.Conv(c, (3, 3), padding=((1, 1), (1, 1)), feature_group_count=c, dtype=self.dtype,
                  name="ex_conv")(zero_outside(x, valid_hw))
      x = LayerNorm(dtype=self.dtype, name="ex_ln")(x)
    return x

class CrossFormerBackbone(nn.Module):
  """The official CrossFormer dense backbone: a feature pyramid at strides 4, 8, 16 and 32.

  Stage ``i`` returns its tokens after its blocks and before the following patch merging, as the
  official ``crossformer_backbone.py``; outputs are ``{'stage_1': ..., 'stage_4': ...}`` (NHWC) for the
  stages in ``out_indices``.

  Input: *normalised* float NHWC RGB (0-255 pixels minus the ImageNet mean, divided by its std:
  ``backbones.preprocess.normalize_image``); integer (e.g. uint8) images are refused.

  Attributes:
    dims: channels per stage.
    depths: blocks per stage; even blocks are SDA, odd ones LDA.
    num_heads: attention heads per stage (None: ``dim // 32``, the official head width).
    group_sizes: group side G (the seed API's ``local_window_size``): an int, one per stage (turned
      into one per block by ``group_type``), or one list of block sizes per stage.
    intervals: LDA interval I per stage (the seed API's ``global_window_size``).
    patch_sizes: kernel sizes of the stage-1 cross-scale embedding (stride 4).
    merge_sizes: kernel sizes of each patch-merging layer (stride 2).
    mlp_ratio: MLP width / channels: one float, or one per stage.
    lda_mode: ``"v1"`` (paper and released checkpoints) or ``"main"`` (CrossFormer++ code).
    group_type: CrossFormer++ progressive group size (PGS) schedule, one of
      :data:`grouping.GROUP_TYPES` (official ``compute_group_size``); ``constant`` keeps ``group_sizes``.
    img_size: the *design* resolution the non-constant ``group_type`` schedules scale with (official
      constructor ``img_size``; only its first side counts). Never the input's size: inputs may have
      any valid size.
    use_acl: CrossFormer++ amplitude cooling layers (``ex_conv`` + ``ex_ln``) after blocks 2, 5, 8, ...
      of each stage, never its last block.
    pad_type: 0 pads maps at the bottom/right, 1 centres them (official classifier option).
    no_mask: let padded tokens take part in the attention (official classifier option).
    adaptive_interval: LDA interval ``ceil(max(H, W) / G)`` per call instead of ``intervals``.
    remat: gradient checkpointing of every block, a :data:`REMAT_POLICIES` name (True = ``"full"``).
  """
  dims: Sequence[int] = (96, 192, 384, 768)
  depths: Sequence[int] = (2, 2, 6, 2)
  num_heads: Optional[Sequence[int]] = None
  group_sizes: IntOrSeq = 7
  intervals: IntOrSeq = (8, 4, 2, 1)
  patch_sizes: Sequence[int] = (4, 8, 16, 32)
  merge_sizes: Sequence[Sequence[int]] = ((2, 4), (2, 4), (2, 4))
  mlp_ratio: FloatOrSeq = 4.0
  qkv_bias: bool = True
  qk_scale: Optional[float] = None
  patch_norm: bool = True
  drop_rate: float = 0.0
  attn_drop_rate: float = 0.0
  drop_path_rate: float = 0.0
  lda_mode: str = "v1"
  group_type: str = "constant"
  img_size: IntOrSeq = 224
  use_acl: bool = False
  pad_type: int = 0
  no_mask: bool = False
  adaptive_interval: bool = False
  in_chans: int = 3
  out_indices: Sequence[int] = (0, 1, 2, 3)
  remat: Union[bool, str] = False
  dtype: Dtype = jnp.float32

  def __post_init__(self):
    num_stages = len(self.dims)
    if len(self.depths) != num_stages or len(self.merge_sizes) != num_stages - 1:
      raise ValueError(f"dims {tuple(self.dims)}, depths {tuple(self.depths)} and merge_sizes "
                       f"{tuple(map(tuple, self.merge_sizes))} disagree on the number of stages")
    if self.lda_mode not in grouping.LDA_MODES:
      raise ValueError(f"lda_mode must be one of {grouping.LDA_MODES}, got {self.lda_mode!r}")
    bad = [i for i in self.out_indices if not 0 <= i < num_stages]
    if bad:
      raise ValueError(f"out_indices {tuple(self.out_indices)} must lie in [0, {num_stages})")
    per_stage_ratio(self.mlp_ratio, num_stages)
    check_pp_options(self)
    super().__post_init__()

  @property
  def feature_info(self) -> FeatureInfo:
    """timm-style description of the returned levels (channels, reduction, name)."""
    return FeatureInfo([dict(num_chs=self.dims[i], reduction=4 * 2 ** i, module=f"stage_{i + 1}")
                        for i in self.out_indices])

  @property
  def stage_heads(self) -> Tuple[int, ...]:
    if self.num_heads is None:
      return tuple(max(1, d // 32) for d in self.dims)
    return per_stage(self.num_heads, len(self.dims), "num_heads")

  @property
  def block_group_sizes(self) -> Tuple[Tuple[int, ...], ...]:
    """G of every block (before the per-call small-map fallback), one tuple per stage."""
    return grouping.block_group_sizes(self.group_sizes, self.depths, self.img_size, self.patch_sizes[0],
                                      self.group_type)

  def canvas_fits(self, canvas_hw: Tuple[int, int], image_hw: Tuple[int, int]) -> bool:
    """Whether an image of ``image_hw`` (a valid input size) inferred inside a ``canvas_hw`` canvas
    (``__call__`` with ``image_size``) gives exactly its own outputs: it fits, and every block makes the same
    grouping decision (small-map fallback, adaptive interval) for the image's maps as for the canvas's."""
    if image_hw[0] > canvas_hw[0] or image_hw[1] > canvas_hw[1]:
      return False
    if self.no_mask or self.pad_type:  # padding that depends on the size: no canvas inference
      return False
    valid = np.asarray([image_hw], np.int64)
    for stage, blocks in enumerate(block_plan_args(self)):
      canvas_map = stage_sizes(*canvas_hw)[stage]
      valid_map = valid // (4 * 2 ** stage)
      for args in blocks:
        if not bool(grouping.canvas_plan_agrees(valid_map[:, 0], valid_map[:, 1], canvas_map, **args)[0]):
          return False
    return True

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False,
               image_size: Optional[jnp.ndarray] = None) -> Dict[str, jnp.ndarray]:
    """Feature maps of a batch of normalised NHWC images.

    ``image_size`` (B, 2) int (h, w), optional: canvas inference. Example i is the image ``x[i, :h, :w]``
    (a valid input size, see ``sizes``) at the top-left of the shared canvas ``x``; its features are
    exactly (to float rounding) those of the image alone in their top-left ``floor(h/s) x floor(w/s)``
    region at stride ``s``, and zero outside, so one program serves every image size a canvas holds.
    How: zeros re-imposed outside the region before every convolution (the image, each patch merging's
    input after its norm, the ACL conv's input), keys outside it masked in every group (groups are anchored
    at the top-left, so valid tokens keep their groups, slots and DPB offsets; the extra canvas slots are
    masked like the official group padding; LDA's residue-class groups likewise). The small-map fallback is
    decided per block from the canvas map: where the canvas falls back, v1's group side ``min(h, w)`` of
    the VALID map (a traced value) is applied by masking attention over the whole canvas map (one dense
    group) to same-square pairs; main's one ``max(H, W)`` group is the whole canvas, masked to the valid
    region. An example whose own decision differs from its canvas's (:meth:`canvas_fits` is False: its map
    falls back where the canvas's does not, or the reverse, or an adaptive interval differs) gets NaN
    features rather than wrong ones: choose canvases with :meth:`canvas_fits`. Not supported with
    ``no_mask`` or ``pad_type`` 1 (ValueError). Without ``image_size`` the whole input is the image.
    """
    check_input(x.shape, self.in_chans)
    if not jnp.issubdtype(x.dtype, jnp.floating):
      raise TypeError(f"CrossFormer expects normalised float images, got {x.dtype}; apply "
                      "backbones.preprocess.normalize_image to 0-255 pixels first")
    num_stages = len(self.dims)
    group_sizes = self.block_group_sizes
    intervals = per_stage(self.intervals, num_stages, "intervals")
    mlp_ratios = per_stage_ratio(self.mlp_ratio, num_stages)
    drop_path = np.linspace(0.0, self.drop_path_rate, sum(self.depths))
    block_cls = remat_block(CrossFormerBlock, self.remat)

    valid = None if image_size is None else jnp.asarray(image_size, jnp.int32).reshape(x.shape[0], 2)
    agrees = None
    x = CrossScaleEmbedding(self.dims[0], tuple(self.patch_sizes), stride=4,
                            use_norm=self.patch_norm, dtype=self.dtype, name="patch_embed")(
                                zero_outside(x.astype(self.dtype), valid))
    x = nn.Dropout(self.drop_rate, deterministic=not train)(x)
    features, block_index = {}, 0
    for stage in range(max(self.out_indices) + 1):
      stage_valid = None if valid is None else scaled_sizes(valid, 4 * 2 ** stage)
      for b in range(self.depths[stage]):
        block = block_cls(self.stage_heads[stage], group_sizes[stage][b], intervals[stage],
                      long_distance=b % 2 == 1, lda_mode=self.lda_mode, mlp_ratio=mlp_ratios[stage],
                      qkv_bias=self.qkv_bias, qk_scale=self.qk_scale,
                      drop_path=float(drop_path[block_index]), attn_drop=self.attn_drop_rate,
                      use_acl=self.use_acl and has_acl(b, self.depths[stage]),
                      pad_type=self.pad_type, no_mask=self.no_mask,
                      adaptive_interval=self.adaptive_interval, dtype=self.dtype,
                      name=f"layers_{stage}_blocks_{b}")
        x = block(x, train) if valid is None else block(x, train, stage_valid)
        if valid is not None:
          ok = grouping.canvas_plan_agrees(stage_valid[:, 0], stage_valid[:, 1], x.shape[1:3],
                                           group_sizes[stage][b], intervals[stage], b % 2 == 1, self.lda_mode,
                                           self.adaptive_interval, jnp)
          agrees = ok if agrees is None else agrees & ok
        block_index += 1
      if stage in self.out_indices:
        features[f"stage_{stage + 1}"] = zero_outside(x, stage_valid)
      if stage < num_stages - 1 and stage < max(self.out_indices):
        x = CrossScaleEmbedding(self.dims[stage + 1], tuple(self.merge_sizes[stage]), stride=2,
                                norm_first=True, use_norm=True, conv_name="reductions",
                                dtype=self.dtype, name=f"layers_{stage}_downsample")(x, stage_valid)
    if agrees is not None:  # a wrong canvas gives NaN, never silently different features
      poison = jnp.where(agrees, 0.0, jnp.nan).astype(self.dtype)[:, None, None, None]
      features = {k: v + poison for k, v in features.items()}
    return features


# The seed API's names of four backbone arguments, and the seed classifier's defaults for them.
SEED_ARGUMENTS = {"dim": "dims", "depth": "depths", "global_window_size": "intervals",
                  "local_window_size": "group_sizes"}
SEED_DEFAULTS = dict(dims=(64, 128, 256, 512), depths=(2, 2, 8, 2), intervals=(8, 4, 2, 1), group_sizes=7)


class CrossFormer(nn.Module):
  """CrossFormer image classifier (the seed API): a :class:`CrossFormerBackbone`, LayerNorm, mean pool, head.

  ``CrossFormer(num_classes=1000, dim=(64, 128, 256, 512), depth=(2, 2, 8, 2),
  global_window_size=(8, 4, 2, 1), local_window_size=7)``; ``dim`` is the per-stage width, ``depth`` the blocks
  per stage, ``global_window_size`` the LDA interval per stage and ``local_window_size`` the SDA group size
  (an int, one per stage or one list per stage): the seed's names of the backbone's ``dims``, ``depths``,
  ``intervals`` and ``group_sizes``. Every other architecture option (CrossFormer++, dtype, remat, ...) is the
  backbone's: ``CrossFormer(num_classes=10, backbone=CrossFormerBackbone(dims=..., use_acl=True))`` (give the
  backbone or the seed arguments, not both). The seed arguments only build the backbone: afterwards they
  read ``None`` and the architecture lives in ``self.backbone`` alone (its parameters are
  ``params["backbone"]``). Takes normalised float NHWC images (``backbones.preprocess.normalize_image``),
  returns logits.
  """
  num_classes: int = 1000
  dim: Optional[Sequence[int]] = None
  depth: Optional[Sequence[int]] = None
  global_window_size: Optional[IntOrSeq] = None
  local_window_size: Optional[IntOrSeq] = None
  backbone: Optional[CrossFormerBackbone] = None

  def __post_init__(self):
    seed = {name: getattr(self, arg) for arg, name in SEED_ARGUMENTS.items() if getattr(self, arg) is not None}
    if self.backbone is not None and seed:
      raise ValueError(f"give CrossFormer either backbone= or the seed arguments {sorted(SEED_ARGUMENTS)}, not "
                       f"both (got backbone and {sorted(seed)})")
    backbone = self.backbone or CrossFormerBackbone(**{**SEED_DEFAULTS, **seed}, parent=None)
    # Unbound (adopted as the sub-module "backbone"), returning only the last stage.
    backbone = backbone.clone(parent=None, name=None, out_indices=(len(backbone.dims) - 1,))
    object.__setattr__(self, "backbone", backbone)
    for arg in SEED_ARGUMENTS:
      object.__setattr__(self, arg, None)
    super().__post_init__()

  @classmethod
  def from_description(cls, **kwargs: Any) -> "CrossFormer":
    """The classifier a converted file describes: ``num_classes`` + ``backbone``, or the flat layout of files
    written before the classifier composed its backbone (the seed names plus every backbone field)."""
    if "backbone" in kwargs:
      return cls(**kwargs)
    num_classes = kwargs.pop("num_classes", 1000)
    backbone = {SEED_ARGUMENTS.get(k, k): v for k, v in kwargs.items()}
    return cls(num_classes=num_classes, backbone=CrossFormerBackbone(**{**SEED_DEFAULTS, **backbone}, parent=None))

  def backbone_kwargs(self) -> Dict[str, Any]:
    """The :class:`CrossFormerBackbone` arguments of this classifier's trunk (``out_indices`` left out)."""
    return {f: getattr(self.backbone, f) for f in self.backbone.__dataclass_fields__
            if f not in ("parent", "name", "out_indices")}

  @nn.compact
  def __call__(self, x: jnp.ndarray, train: bool = False, return_features: bool = False):
    dtype = self.backbone.dtype
    feats = self.backbone(x, train)
    x = LayerNorm(dtype=dtype, name="norm")(feats[f"stage_{len(self.backbone.dims)}"])
    pooled = jnp.mean(x.astype(jnp.promote_types(dtype, jnp.float32)), axis=(1, 2))
    logits = nn.Dense(self.num_classes, name="output_projection")(pooled)
    return (logits, pooled) if return_features else logits
