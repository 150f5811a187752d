"""Exporting a model for fixed input shapes: serialized StableHLO (``jax.export``) and TF SavedModel.

CrossFormer's attention grouping depends on the input size (SDA/LDA group shapes, padding, the small-map
fallback), so an exported program serves exactly the shape it was exported for; export one per shape bucket.
The weights are baked into the program, so the artifact runs without this library's Python code:

    exported = export_stablehlo(module.apply, variables, [(1, 512, 512, 3), (1, 512, 704, 3)])
    save_stablehlo("model.jaxexport", exported)
    model = load_stablehlo("model.jaxexport")   # needs only jax
    outputs = model(images)                     # a shape that was not exported raises a ValueError

``save_saved_model`` writes a TensorFlow SavedModel (``jax2tf`` native serialization, one signature per shape)
for TF Serving; the weights are TF variables of the SavedModel.
"""

import json
import os
import pathlib
import tempfile
from typing import Any, Callable, Dict, List, Mapping, Sequence, Tuple, Union

import jax
import jax.numpy as jnp
import numpy as np

from backbones.weights.files import write_atomic

Shape = Tuple[int, ...]
PathLike = Union[str, os.PathLike]
FORMAT = "crossformer-jax-export/1"


def _shapes(input_shapes: Union[Shape, Sequence[Shape]]) -> List[Shape]:
  shapes = [input_shapes] if input_shapes and isinstance(input_shapes[0], int) else list(input_shapes)
  if not shapes or any(len(s) != 4 for s in shapes):
    raise ValueError(f"input shapes must be NHWC 4-tuples, got {input_shapes!r}")
  return [tuple(int(d) for d in s) for s in shapes]


def export_stablehlo(apply_fn: Callable[..., Any], variables: Mapping[str, Any],
                     input_shapes: Union[Shape, Sequence[Shape]], dtype: Any = jnp.float32,
                     platforms: Sequence[str] = ("cpu",)) -> Dict[Shape, "jax.export.Exported"]:
  """``{shape: Exported}`` of ``apply_fn(variables, x)`` for each NHWC input shape, weights baked in."""
  fn = jax.jit(lambda x: apply_fn(variables, x))
  return {shape: jax.export.export(fn, platforms=tuple(platforms))(jax.ShapeDtypeStruct(shape, dtype))
          for shape in _shapes(input_shapes)}


def save_stablehlo(path: PathLike, exported: Mapping[Shape, "jax.export.Exported"]) -> pathlib.Path:
  """Writes every exported shape into one file (a small JSON index + the serialized programs)."""
  path = pathlib.Path(path)
  blobs = [bytes(e.serialize()) for e in exported.values()]
  index = {"format": FORMAT, "shapes": [list(s) for s in exported], "sizes": [len(b) for b in blobs]}
  header = json.dumps(index).encode()
  write_atomic(path, len(header).to_bytes(8, "little") + header + b"".join(blobs))
  return path


class ExportedModel:
  """A loaded export: call it on an array of one of the exported shapes."""

  def __init__(self, programs: Mapping[Shape, "jax.export.Exported"], source: str = "exported model"):
    self.programs = dict(programs)
    self.source = source

  @property
  def shapes(self) -> List[Shape]:
    return list(self.programs)

  def __call__(self, inputs: Any) -> Any:
    shape = tuple(np.shape(inputs))
    if shape not in self.programs:
      raise ValueError(f"{self.source} was exported for input shapes {self.shapes}, not {shape}; resize or "
                       "pad the input to one of them, or export this shape too")
    program = self.programs[shape]
    return program.call(jnp.asarray(inputs, program.in_avals[0].dtype))


def load_stablehlo(path: PathLike) -> ExportedModel:
  """Reads a file written by :func:`save_stablehlo` (no model code needed)."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"exported model not found: {path}")
  data = path.read_bytes()
  try:
    size = int.from_bytes(data[:8], "little")
    index = json.loads(data[8:8 + size])
    assert index.get("format") == FORMAT
  except Exception:  # pylint: disable=broad-except
    raise ValueError(f"{path} is not an exported model written by backbones.export.save_stablehlo") from None
  programs, offset = {}, 8 + size
  for shape, n in zip(index["shapes"], index["sizes"]):
    programs[tuple(shape)] = jax.export.deserialize(bytearray(data[offset:offset + n]))
    offset += n
  return ExportedModel(programs, str(path))


def save_saved_model(directory: PathLike, apply_fn: Callable[..., Any], variables: Mapping[str, Any],
                     input_shapes: Union[Shape, Sequence[Shape]], dtype: Any = jnp.float32) -> pathlib.Path:
  """Writes a TF SavedModel with one serving signature per input shape (``serving_default`` = the first).

  Signature names are ``serve_<N>x<H>x<W>``; outputs keep the model's output names (a dict model returns a
  dict). The directory is written beside its final place and renamed into it.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from jax.experimental import jax2tf  # pylint: disable=g-import-not-at-top
  directory = pathlib.Path(directory)
  if directory.exists():
    raise FileExistsError(f"{directory} exists; choose a new directory for the SavedModel")
  tf_dtype = tf.as_dtype(np.dtype(dtype))
  module = tf.Module()
  module.params = tf.nest.map_structure(tf.Variable, jax.tree.map(np.asarray, dict(variables)))
  converted = jax2tf.convert(apply_fn, with_gradient=False)
  signatures = {}
  for shape in _shapes(input_shapes):
    fn = tf.function(lambda x: converted(module.params, x), autograph=False,
                     input_signature=[tf.TensorSpec(shape, tf_dtype, name="inputs")])
    name = "serve_" + "x".join(str(d) for d in shape[:3])
    setattr(module, name, fn)
    signatures[name] = fn.get_concrete_function()
    signatures.setdefault("serving_default", signatures[name])
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}."))
  try:
    tf.saved_model.save(module, str(tmp), signatures=signatures)
    os.replace(tmp, directory)
  except BaseException:
    import shutil  # pylint: disable=g-import-not-at-top
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return directory
