"""Official Mask R-CNN checkpoints (mmdet ``state_dict``: ``backbone.*``, ``neck.*``, ``rpn_head.*``,
``roi_head.*``) -> params of ``MaskRCNNModel``'s network, every key accounted for."""

from typing import Any, Dict, Mapping, Tuple

import flax
import jax
import jax.numpy as jnp
import numpy as np

from backbones.crossformer.convert import convert_state_dict
from heads.detection.mask_rcnn_convert import convert_mask_rcnn_heads

BACKBONE_PREFIX = "backbone."


def expected_shapes(network: Any, image_size: int = 64) -> Dict[Tuple[str, ...], Tuple[int, ...]]:
  """Flat ``{path: shape}`` of the network's params via ``jax.eval_shape`` (nothing is computed)."""
  variables = jax.eval_shape(network.init, jax.random.PRNGKey(0), jnp.zeros((1, image_size, image_size, 3)))
  return {p: tuple(v.shape) for p, v in flax.traverse_util.flatten_dict(variables["params"]).items()}


def convert_official_mask_rcnn(state_dict: Mapping[str, Any], network: Any,
                               strict: bool = True) -> Dict[str, Any]:
  """Converts a whole official Mask R-CNN state dict for ``network`` (a ``MaskRCNN``).

  Raises ``ValueError`` naming the missing, unexpected or mis-shaped keys (with ``strict``).
  """
  backbone_sd = {k[len(BACKBONE_PREFIX):]: v for k, v in state_dict.items() if k.startswith(BACKBONE_PREFIX)}
  head_sd = {k: v for k, v in state_dict.items() if not k.startswith(BACKBONE_PREFIX)}
  params, unexpected = convert_mask_rcnn_heads(head_sd)
  params["backbone"] = convert_state_dict(backbone_sd, network.backbone, strict=strict)["params"]
  flat = flax.traverse_util.flatten_dict(params)
  expected = expected_shapes(network)
  missing = ["/".join(p) for p in expected if p not in flat]
  extra = ["/".join(p) for p in flat if p not in expected]
  wrong = [f"{'/'.join(p)}: {tuple(v.shape)} vs model {expected[p]}" for p, v in flat.items()
           if p in expected and tuple(v.shape) != expected[p]]
  problems = [f"{t} ({len(x)}): {', '.join(x[:10])}" for t, x in
              (("unexpected keys", unexpected), ("missing params", missing), ("extra params", extra),
               ("shape mismatch", wrong)) if x]
  if problems and strict:
    raise ValueError("Mask R-CNN checkpoint does not fit the model: " + "; ".join(problems))
  return {"params": flax.traverse_util.unflatten_dict({p: np.asarray(v) for p, v in flat.items()})}
