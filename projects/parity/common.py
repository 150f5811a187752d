"""What the segmentation and detection runners share: the given pyramid as a backbone, case inputs, layouts."""

import re
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from heads import official


class GivenPyramid(nn.Module):
  """A parameter-free stand-in backbone: zero maps of the given widths at strides 4, 8, 16, 32 of the input.

  It lets the real task models be built (and their parameter shapes derived) while the fixtures feed the
  recorded pyramid directly to the neck/heads.
  """
  channels: Tuple[int, ...]

  def __call__(self, images: jnp.ndarray, train: bool = False) -> Tuple[jnp.ndarray, ...]:
    b, h, w = images.shape[:3]
    return tuple(jnp.zeros((b, h // 2 ** (i + 2), w // 2 ** (i + 2), c), images.dtype)
                 for i, c in enumerate(self.channels))


def cases(arrays: Mapping[str, np.ndarray], meta: Mapping[str, Any]) -> List[str]:
  """Case names: the JSON's ``cases``, which must all have inputs."""
  names = sorted(meta.get("cases") or {})
  if not names:
    names = sorted({k.split("/")[1] for k in arrays if k.startswith("in/")})
  return names


def pyramid(arrays: Mapping[str, np.ndarray], case: str) -> List[np.ndarray]:
  """``in/<case>/feat{i}`` as NHWC float32 arrays, in level order."""
  levels = sorted((int(m[1]), k) for k in arrays if (m := re.fullmatch(rf"in/{re.escape(case)}/feat(\d+)", k)))
  if not levels:
    raise ValueError(f"case {case!r} has no in/{case}/feat* inputs")
  return [np.transpose(arrays[k], (0, 2, 3, 1)).astype(np.float32) for _, k in levels]


def state_dict(arrays: Mapping[str, np.ndarray]) -> Dict[str, np.ndarray]:
  """The fixture's official weights (``sd/<key>``)."""
  return {k[3:]: v for k, v in arrays.items() if k.startswith("sd/")}


def outputs_of(arrays: Mapping[str, np.ndarray], case: str) -> List[str]:
  """Every stored output key of a case (``out/<case>/...`` and ``dbg/<case>/...``), sorted."""
  return sorted(k for k in arrays if k.startswith((f"out/{case}/", f"dbg/{case}/")))


def nchw(x: Any) -> np.ndarray:
  """NHWC -> NCHW numpy."""
  return np.transpose(np.asarray(x), (0, 3, 1, 2))


def convert_weights(arrays: Mapping[str, np.ndarray], expected: Mapping[str, Any], report: Any,
                    cases_run: Sequence[str]) -> Optional[Dict[str, Any]]:
  """The fixture's ``sd/`` converted with the checkpoint converter's mapping; problems are report failures.
  ``None`` when it does not fit: every output of ``cases_run`` is then failed as not run."""
  variables, conversion = official.convert_state_dict(state_dict(arrays), expected, strict=False)
  for key in conversion.unexpected:
    report.fail(f"sd/{key}", "official key with no place in the model built from mm_config")
  for item in conversion.mismatched:
    report.fail(f"sd/{item.split(' ')[0]}", f"shape mismatch: {item}")
  for path in conversion.missing:
    report.fail(f"param {path}", "model parameter missing from sd/")
  if not conversion.ok:
    for case in cases_run:
      for key in outputs_of(arrays, case):
        report.fail(key, "not run: the sd/ weights do not fit the model built from mm_config")
    return None
  return variables
