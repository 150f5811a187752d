"""Official Mask R-CNN checkpoints (mmdet ``state_dict``: ``backbone.*``, ``neck.*``, ``rpn_head.*``,
``roi_head.*``) -> params of ``MaskRCNNModel``'s network, every key accounted for.

The key mapping is ``heads.official``'s (``PREFIX_CONVERTERS``; ``rpn_head`` / ``roi_head`` come from
``heads.detection.mask_rcnn_convert``); this module checks the result against the whole network, including
``bbox_head`` / ``mask_head``, which mmdet nests under ``roi_head``.
"""

from typing import Any, Dict, Mapping

import jax
import jax.numpy as jnp

from backbones.weights import tree
from heads import official

PREFIXES = ("backbone", "neck", "rpn_head", "roi_head")


def expected_variables(network: Any, image_size: int = 64) -> Dict[str, Any]:
  """The network's variable shapes via ``jax.eval_shape`` (nothing is computed)."""
  return jax.eval_shape(network.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))


def convert_official_mask_rcnn(state_dict: Mapping[str, Any], network: Any,
                               strict: bool = True) -> Dict[str, Any]:
  """Converts a whole official Mask R-CNN state dict for ``network`` (a ``MaskRCNN``).

  Raises ``ValueError`` naming the unexpected, mis-shaped or missing keys (with ``strict``).
  """
  expected = expected_variables(network)
  variables, _ = official.convert_state_dict(state_dict, expected, prefixes=PREFIXES, strict=strict)
  report = tree.compare_shapes(expected["params"], variables.get("params", {}))
  report.unexpected = []  # every key of the checkpoint was placed or refused by the conversion above
  if strict:
    report.raise_if_bad("the checkpoint")
  return variables
