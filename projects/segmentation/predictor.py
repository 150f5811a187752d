"""Semantic segmentation of single images with the official mmseg test protocol: ``Segmenter``.

    segmenter = Segmenter.from_checkpoint("configs/upernet_crossformer_s_ade20k.py", "upernet_s.msgpack")
    label_map = segmenter("photo.jpg")        # (H, W) int32 class indices at the photo's own size

Per image (mmseg ``EncoderDecoder`` with CrossFormer's ``AlignResize`` test pipeline): the image is resized
keeping its ratio to fit ``config.dataset.eval_scale`` and then to the next multiple of ``size_divisor``
(the same TensorFlow ops as the evaluation pipeline, ``data.transforms``), normalised, run whole or by sliding
window (``projects.segmentation.inference``), and the logits are resized bilinearly (``align_corners=False``)
to the ORIGINAL image size before the argmax. Multi-scale + flip (``ratios``, ``flip``) AlignResizes the
original to ``eval_scale * ratio`` for each view, averages the views' softmax scores at the original size and
takes the argmax (mmseg ``aug_test``).

Test-time settings come from ``config.inference`` (``mode`` whole|slide, ``crop_size``, ``stride``, ``ratios``,
``flip``; defaults: whole, single scale) or the ``mode=`` argument (``"ms_flip"``: the official ratios
0.5-1.75 with flip over the configured whole/slide mode).

Compilation: in whole mode every view runs inside one of a few padded canvases (``TestTime.canvases``:
``config.inference.canvases``, default the dataset's eval buckets scaled to each ratio; ``canvases.py`` chooses
them from a dataset's sizes) with the padding made invisible (``SegmentationNet.canvas_logits``: the view's
logits equal its own whole inference to float rounding), so the network compiles once per canvas, ahead of
time and in parallel (``compile_canvases``), whatever the image sizes. A view no canvas holds exactly
(``CrossFormerBackbone.canvas_fits``) gets a program of its own size, as do all views in slide mode or with a
backbone without canvas inference. Flips are done on the host (the same program serves both). The resize to
the original size is a gather with host-computed indices over an output canvas rounded up to
``output_multiple`` pixels: one cheap program per (view canvas, output canvas). ``program_counts`` reports
the programs compiled and their compile seconds.
"""

import concurrent.futures
import dataclasses
import inspect
import time
from typing import Any, Dict, Mapping, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from projects.common import images as images_lib
from projects.common import restore
from projects.segmentation import inference

MS_RATIOS = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75)
TEST_MODES = ("whole", "slide", "ms_flip")


@dataclasses.dataclass(frozen=True)
class TestTime:
  """mmseg ``test_cfg`` + the test pipeline's scales.

  Attributes:
    mode: ``"whole"`` or ``"slide"`` (``inference.INFERENCE_MODES``).
    crop_size: slide window (h, w).
    stride: slide stride (h, w).
    ratios: multi-scale ratios of ``eval_scale`` ((1.0,) = single scale).
    flip: also infer the horizontally flipped views.
    eval_scale: ``AlignResize`` scale (long, short), e.g. (2048, 512).
    size_divisor: ``AlignResize`` (and backbone) size divisor.
    canvases: padded (h, w) canvases whole-mode views are inferred in (multiples of ``size_divisor``);
      empty: one program per view size.
  """
  mode: str = "whole"
  crop_size: Tuple[int, int] = (512, 512)
  stride: Tuple[int, int] = (341, 341)
  ratios: Tuple[float, ...] = (1.0,)
  flip: bool = False
  eval_scale: Tuple[int, int] = (2048, 512)
  size_divisor: int = 32
  canvases: Tuple[Tuple[int, int], ...] = ()

  def __post_init__(self):
    if self.mode not in inference.INFERENCE_MODES:
      raise ValueError(f"test mode {self.mode!r} must be one of {inference.INFERENCE_MODES}")
    if not self.ratios or min(self.ratios) <= 0:
      raise ValueError(f"test ratios must be positive, got {self.ratios}")
    bad = [c for c in self.canvases if len(c) != 2 or any(int(v) <= 0 or int(v) % self.size_divisor for v in c)]
    if bad:
      raise ValueError(f"config.inference.canvases {bad}: each must be (h, w), multiples of size_divisor "
                       f"{self.size_divisor}")

  @property
  def augmented(self) -> bool:
    """True for more than one view (softmax scores are averaged)."""
    return len(self.ratios) > 1 or self.flip


def test_time_from_config(config: ml_collections.ConfigDict, mode: Optional[str] = None) -> TestTime:
  """``TestTime`` from ``config.inference`` and ``config.dataset`` (eval_scale, size_divisor); ``mode``
  (whole|slide|ms_flip) overrides the configured one."""
  cfg = dict(config.get("inference") or {})
  canvases = cfg.pop("canvases", None)
  cfg = {k: (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in cfg.items()}
  unknown = sorted(set(cfg) - {"mode", "crop_size", "stride", "ratios", "flip"})
  if unknown:
    raise ValueError(f"unknown config.inference keys {unknown}; known: mode, crop_size, stride, ratios, flip, "
                     "canvases")
  dataset = config.get("dataset") or {}
  cfg["eval_scale"] = tuple(int(v) for v in dataset.get("eval_scale", (2048, 512)))
  cfg["size_divisor"] = int(dataset.get("size_divisor", 32))
  if mode is not None:
    if mode not in TEST_MODES:
      raise ValueError(f"--mode {mode!r} must be one of {TEST_MODES}")
    if mode == "ms_flip":
      cfg.update(ratios=MS_RATIOS, flip=True)
    else:
      cfg.update(mode=mode, ratios=(1.0,), flip=False)
  if canvases is None:  # the eval buckets (canvases of the ratio-1 views), scaled to every ratio
    canvases = scaled_canvases(dataset.get("eval_buckets"), cfg["eval_scale"], cfg["size_divisor"],
                               cfg.get("ratios", (1.0,)))
  cfg["canvases"] = tuple(sorted({(int(h), int(w)) for h, w in canvases}))
  return TestTime(**cfg)


def scaled_canvases(buckets: Optional[Sequence[Sequence[int]]], eval_scale: Sequence[int], size_divisor: int,
                    ratios: Sequence[float]) -> Tuple[Tuple[int, int], ...]:
  """Canvases for the views of ``ratios``: ``buckets`` (None: the pipeline's ``default_eval_buckets`` of
  ``eval_scale``) scaled by each ratio and rounded up to ``size_divisor``."""
  if buckets is None:
    from projects.segmentation.data import pipeline  # pylint: disable=g-import-not-at-top
    buckets = pipeline.default_eval_buckets(eval_scale, size_divisor)
  up = lambda x: max(size_divisor, -(-int(np.ceil(x - 1e-9)) // size_divisor) * size_divisor)
  return tuple(sorted({(up(h * r), up(w * r)) for r in ratios for h, w in buckets}))


def align_size(height: int, width: int, scale: Sequence[int], size_divisor: int) -> Tuple[int, int]:
  """CrossFormer ``AlignResize`` output size (``data.transforms.align_resize_size``) as Python ints."""
  from projects.segmentation.data import transforms  # pylint: disable=g-import-not-at-top
  return tuple(int(s) for s in transforms.align_resize_size(int(height), int(width), tuple(scale), size_divisor))


def view_scale(eval_scale: Sequence[int], ratio: float) -> Tuple[int, int]:
  """mmseg ``MultiScaleFlipAug`` scale of one ratio: ``(int(long * ratio), int(short * ratio))``."""
  return tuple(int(s * ratio) for s in eval_scale)


def align_resize(image: np.ndarray, scale: Sequence[int], size_divisor: int) -> np.ndarray:
  """The normalised AlignResize of a uint8 RGB image, with the evaluation pipeline's TensorFlow ops."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from projects.segmentation.data import transforms  # pylint: disable=g-import-not-at-top
  h, w = image.shape[:2]
  x = tf.cast(tf.constant(image), tf.float32)
  x = transforms.resize_image(x, transforms.rescale_size(h, w, scale))
  aligned = transforms.align_resize_size(h, w, scale, size_divisor)
  return transforms.normalize(transforms.resize_image(x, aligned)).numpy()


def resize_indices(in_size: int, out_size: int, padded: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
  """PyTorch bilinear ``align_corners=False`` sampling along one axis: ``(i0, i1, w1)`` of length ``padded``
  (entries past ``out_size`` repeat the last one; they are cropped away)."""
  dst = np.minimum(np.arange(padded), out_size - 1).astype(np.float64)
  src = np.maximum((dst + 0.5) * (in_size / out_size) - 0.5, 0.0)
  i0 = np.minimum(np.floor(src).astype(np.int32), in_size - 1)
  i1 = np.minimum(i0 + 1, in_size - 1)
  return i0, i1, (src - i0).astype(np.float32)


def _gather_resize(x: jnp.ndarray, rows, cols) -> jnp.ndarray:
  """(h, w, K) -> (len(rows[0]), len(cols[0]), K) bilinear with precomputed indices and weights."""
  (r0, r1, rw), (c0, c1, cw) = rows, cols
  x = x[r0] * (1.0 - rw)[:, None, None] + x[r1] * rw[:, None, None]
  return x[:, c0] * (1.0 - cw)[None, :, None] + x[:, c1] * cw[None, :, None]


def format_programs(counts: Dict[str, Any]) -> str:
  """One line of ``Segmenter.program_counts`` (printed by the evaluate and predict commands)."""
  if not counts:
    return "none"
  return (f"{counts['network']} network ({counts['canvases']} canvases compiled ahead in "
          f"{counts['compile_seconds']:.1f} s, {counts['per_size']} per view size), {counts['resize']} resize")


class Segmenter:
  """A segmentation model with its variables and test-time settings, applied to one image at a time."""

  def __init__(self, model: Any, variables: Mapping[str, Any], test_time: TestTime,
               output_multiple: int = 64) -> None:
    """``model`` is a ``SegmentationModel``; see ``from_checkpoint`` for the usual construction."""
    # Canvases need a network taking image_size (SegmentationNet) around a backbone that says which canvas
    # holds an image exactly (CrossFormerBackbone.canvas_fits); other models run one program per view size.
    backbone = getattr(model.flax_model, "backbone", None)
    takes_size = "image_size" in inspect.signature(type(model.flax_model).__call__).parameters
    self._canvas_fits = getattr(backbone, "canvas_fits", None) if takes_size else None
    self._canvas_net = jax.jit(self._canvas_view_logits)
    self._compiled: Dict[Tuple[int, int], Any] = {}  # canvas -> compiled network program
    self.compile_seconds = 0.0
    self.model = model
    self.variables = jax.device_put(dict(variables))
    self.test_time = test_time
    self.output_multiple = int(output_multiple)
    self.class_names = list(model.dataset_meta_data.get("class_names")
                            or [f"class_{i}" for i in range(model.num_classes)])
    # Two programs: the network per view shape, the (cheap) resize per (view, output canvas) shape.
    self._logits_fn = jax.jit(self._view_logits, static_argnames=("flip",))
    self._resize_fn = jax.jit(self._resize_scores, static_argnames=("softmax",))
    self._argmax = jax.jit(lambda x: jnp.argmax(x, axis=-1).astype(jnp.int32))

  @classmethod
  def from_checkpoint(cls, config: restore.ConfigOrPath, checkpoint: str, mode: Optional[str] = None,
                      **kwargs: Any) -> "Segmenter":
    """Restores ``checkpoint`` (workdir, converted file or official .pth/.npz; ``restore.restore_model``)."""
    model, variables = restore.restore_model(config, checkpoint)
    if model.task != "segmentation":
      raise ValueError(f"{checkpoint} is a {model.task} model ({model.name}), not a segmentation one")
    return cls(model, variables, test_time_from_config(model.config, mode), **kwargs)

  @property
  def num_classes(self) -> int:
    return self.model.num_classes

  def _view_logits(self, variables, view: jnp.ndarray, flip: bool) -> jnp.ndarray:
    """Logits (h, w, K) of one normalised view (1, h, w, 3), whole or by sliding window (un-flipped)."""
    tt = self.test_time

    def apply_fn(x):
      return self.model.flax_model.apply(variables, x, train=False)["logits"]

    x = view[:, :, ::-1] if flip else view
    if tt.mode == "whole":
      logits = inference.whole_inference(apply_fn, x, tt.size_divisor)
    else:
      logits = inference.slide_inference(apply_fn, x, tt.crop_size, tt.stride, tt.size_divisor)
    return logits[0, :, ::-1] if flip else logits[0]

  def _canvas_view_logits(self, variables, canvas: jnp.ndarray, image_size: jnp.ndarray) -> jnp.ndarray:
    """Logits (Hc, Wc, K) of the view at the top-left ``image_size`` of a (1, Hc, Wc, 3) zero canvas."""
    return self.model.flax_model.apply(variables, canvas, train=False, image_size=image_size)["logits"][0]

  @property
  def uses_canvases(self) -> bool:
    """Whether whole-mode views run in padded canvases (canvases configured, backbone supports it)."""
    return self.test_time.mode == "whole" and bool(self.test_time.canvases) and self._canvas_fits is not None

  def canvas_for(self, size: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """The canvas a view of ``size`` (a multiple of size_divisor) runs in: the smallest configured canvas
    that holds it exactly (``canvas_fits``), else None (the view gets a program of its own size)."""
    if not self.uses_canvases:
      return None
    fitting = [tuple(c) for c in self.test_time.canvases if self._canvas_fits(tuple(c), tuple(size))]
    return min(fitting, key=lambda c: (c[0] * c[1], c)) if fitting else None

  def _network(self, canvas: Tuple[int, int]) -> Any:
    """The compiled network program of ``canvas`` (compiled now if it is not yet)."""
    if canvas not in self._compiled:
      self.compile_canvases([canvas])
    return self._compiled[canvas]

  def compile_canvases(self, canvases: Optional[Sequence[Tuple[int, int]]] = None, threads: int = 4) -> int:
    """Compiles the network for ``canvases`` (default: the configured ones) ahead of time, in parallel
    threads (XLA compiles outside the GIL); returns how many programs were new. Their wall seconds are added
    to ``compile_seconds``."""
    if not self.uses_canvases:
      return 0
    todo = [tuple(int(v) for v in c) for c in (self.test_time.canvases if canvases is None else canvases)]
    todo = sorted(set(todo) - set(self._compiled))
    if not todo:
      return 0
    start = time.perf_counter()
    variables = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), self.variables)

    def compile_one(canvas):
      image = jax.ShapeDtypeStruct((1, *canvas, 3), jnp.float32)
      return canvas, self._canvas_net.lower(variables, image, jax.ShapeDtypeStruct((1, 2), jnp.int32)).compile()

    with concurrent.futures.ThreadPoolExecutor(max(1, min(threads, len(todo)))) as pool:
      self._compiled.update(pool.map(compile_one, todo))
    self.compile_seconds += time.perf_counter() - start
    return len(todo)

  def program_counts(self) -> Dict[str, Any]:
    """Programs compiled so far: ``network`` (canvas programs + per-size ones), ``resize``, and the network
    canvases' compile seconds (``compile_seconds``)."""
    per_size = self._logits_fn._cache_size()  # pylint: disable=protected-access
    return {"network": len(self._compiled) + per_size, "canvases": len(self._compiled),
            "per_size": per_size, "resize": self._resize_fn._cache_size(),  # pylint: disable=protected-access
            "compile_seconds": round(self.compile_seconds, 2)}

  def padded_size(self, view_hw: Sequence[int]) -> Tuple[int, int]:
    """A view's size rounded up to size_divisor (what whole inference feeds the network)."""
    return tuple(-(-int(s) // self.test_time.size_divisor) * self.test_time.size_divisor for s in view_hw[:2])

  def _canvas_logits(self, view: np.ndarray, canvas: Tuple[int, int], flip: bool) -> jnp.ndarray:
    """Logits (Hc, Wc, K) of a view (h, w, 3) placed in ``canvas`` (valid ``[:h, :w]``; the network sees the
    view zero-padded to ``padded_size``, as whole inference), the view flipped on the host with ``flip``."""
    h, w = view.shape[:2]
    size = self.padded_size(view.shape)
    placed = np.zeros((1, *canvas, 3), np.float32)
    placed[0, :h, :w] = view[:, ::-1] if flip else view
    return self._network(canvas)(self.variables, placed, np.asarray([size], np.int32))

  @staticmethod
  def _resize_scores(logits: jnp.ndarray, rows, cols, softmax: bool) -> jnp.ndarray:
    """``logits`` resized to the output canvas (Hp, Wp, K) (softmax scores with ``softmax``)."""
    scores = _gather_resize(logits, rows, cols)
    return jax.nn.softmax(scores, axis=-1) if softmax else scores

  def _canvas(self, size: Tuple[int, int]) -> Tuple[int, int]:
    m = self.output_multiple
    return tuple(-(-int(s) // m) * m for s in size)

  def predict_views(self, views: Sequence[np.ndarray], output_size: Tuple[int, int]) -> np.ndarray:
    """The class map (H, W) int32 at ``output_size`` from normalised views (h_i, w_i, 3) (one per ratio);
    each view is inferred as is (and flipped when ``test_time.flip``)."""
    height, width = int(output_size[0]), int(output_size[1])
    canvas = self._canvas((height, width))
    softmax = self.test_time.augmented
    total = None
    for view in views:
      rows = resize_indices(view.shape[0], height, canvas[0])
      cols = resize_indices(view.shape[1], width, canvas[1])
      view_canvas = self.canvas_for(self.padded_size(view.shape))
      for flip in ((False, True) if self.test_time.flip else (False,)):
        if view_canvas is not None:  # the flip is undone by reading the columns mirrored
          logits = self._canvas_logits(np.asarray(view, np.float32), view_canvas, flip)
          c0, c1, cw = cols
          view_cols = (view.shape[1] - 1 - c0, view.shape[1] - 1 - c1, cw) if flip else cols
          scores = self._resize_fn(logits, rows, view_cols, softmax=softmax)
        else:
          logits = self._logits_fn(self.variables, jnp.asarray(view, jnp.float32)[None], flip=flip)
          scores = self._resize_fn(logits, rows, cols, softmax=softmax)
        total = scores if total is None else total + scores
    return np.asarray(self._argmax(total))[:height, :width]

  def views_of(self, image: np.ndarray) -> Sequence[np.ndarray]:
    """The normalised AlignResized views of a uint8 RGB image, one per ratio."""
    tt = self.test_time
    return [align_resize(image, view_scale(tt.eval_scale, r), tt.size_divisor) for r in tt.ratios]

  def views_from_aligned(self, aligned: np.ndarray, original_size: Tuple[int, int]) -> Sequence[np.ndarray]:
    """Views from an already AlignResized, normalised image (the evaluation pipeline's input): ratio 1.0 is
    the image itself; other ratios are bilinear resizes of it to their AlignResize size of ``original_size``."""
    tt = self.test_time
    views = []
    for ratio in tt.ratios:
      size = align_size(*original_size, view_scale(tt.eval_scale, ratio), tt.size_divisor)
      if tuple(size) == tuple(aligned.shape[:2]):
        views.append(np.asarray(aligned, np.float32))
      else:
        views.append(np.asarray(jax.image.resize(jnp.asarray(aligned, jnp.float32), (*size, 3), "bilinear",
                                                 antialias=False)))
    return views

  def __call__(self, image: images_lib.ImageLike) -> np.ndarray:
    """(H, W) int32 class indices of an image (path, PIL image or array of any mode) at its own size."""
    rgb = images_lib.load_image(image)
    return self.predict_views(self.views_of(rgb), rgb.shape[:2])

  def describe(self) -> Dict[str, Any]:
    """The test-time settings, for logs and reports."""
    return dataclasses.asdict(self.test_time)
