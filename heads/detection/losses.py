"""Element-wise detection losses with mmdet 2.x definitions (reduce with weights and ``avg_factor``).

The functions return un-reduced losses; a caller multiplies by per-element weights, sums and divides by
mmdet's ``avg_factor`` (for RetinaNet: the number of positive anchors) with ``weighted_sum``.
"""

from typing import Optional

import jax
import jax.numpy as jnp


def sigmoid_focal_loss(logits: jnp.ndarray, targets: jnp.ndarray, gamma: float = 2.0,
                       alpha: float = 0.25) -> jnp.ndarray:
  """Sigmoid focal loss (Lin et al.; mmdet's ``FocalLoss(use_sigmoid=True)``), element-wise.

  ``FL = -alpha * (1 - p) ** gamma * log(p)`` for targets 1 and
  ``-(1 - alpha) * p ** gamma * log(1 - p)`` for targets 0, with ``p = sigmoid(logits)``; computed in
  float32 from log-sigmoids, so it is finite for any logit.

  Args:
    logits: ``[..., C]`` class logits.
    targets: ``[..., C]`` binary (one-hot; all zeros for background) targets, same shape.
    gamma: focusing parameter.
    alpha: weight of the positive term (``1 - alpha`` for the negative one).
  """
  if logits.shape != targets.shape:
    raise ValueError(f"logits {logits.shape} and targets {targets.shape} must have the same shape")
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  p = jax.nn.sigmoid(logits)
  ce = -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))
  p_t = p * targets + (1.0 - p) * (1.0 - targets)
  return ce * (1.0 - p_t) ** gamma * (alpha * targets + (1.0 - alpha) * (1.0 - targets))


def l1_loss(pred: jnp.ndarray, target: jnp.ndarray) -> jnp.ndarray:
  """``|pred - target|`` element-wise (mmdet's ``L1Loss``), in float32."""
  return jnp.abs(pred.astype(jnp.float32) - target.astype(jnp.float32))


def smooth_l1_loss(pred: jnp.ndarray, target: jnp.ndarray, beta: float = 1.0) -> jnp.ndarray:
  """mmdet's ``SmoothL1Loss`` element-wise: ``0.5 d^2 / beta`` if ``d < beta`` else ``d - 0.5 beta``."""
  if beta <= 0:
    raise ValueError(f"smooth-L1 beta must be positive, got {beta}; use l1_loss for beta = 0")
  diff = l1_loss(pred, target)
  return jnp.where(diff < beta, 0.5 * diff * diff / beta, diff - 0.5 * beta)


def weighted_sum(loss: jnp.ndarray, weights: Optional[jnp.ndarray] = None) -> jnp.ndarray:
  """``sum(loss * weights)`` with ``weights`` broadcast from the left-aligned leading dims of ``loss``.

  Zero-weight elements contribute exactly 0 even where ``loss`` is not finite.
  """
  if weights is None:
    return loss.sum()
  weights = weights.astype(loss.dtype).reshape(weights.shape + (1,) * (loss.ndim - weights.ndim))
  return jnp.where(weights != 0, loss * weights, 0.0).sum()


BOX_LOSS_TYPES = ("l1", "smooth_l1")


def box_regression_loss(pred: jnp.ndarray, target: jnp.ndarray, loss_type: str = "l1",
                        beta: float = 1.0) -> jnp.ndarray:
  """The element-wise regression loss named ``loss_type`` (``"l1"``, RetinaNet's, or ``"smooth_l1"``)."""
  if loss_type == "l1":
    return l1_loss(pred, target)
  if loss_type == "smooth_l1":
    return smooth_l1_loss(pred, target, beta)
  raise ValueError(f"unknown box loss {loss_type!r}; expected one of {BOX_LOSS_TYPES}")


def binary_cross_entropy_with_logits(logits: jnp.ndarray, targets: jnp.ndarray) -> jnp.ndarray:
  """``BCE-with-logits`` element-wise (mmdet's ``CrossEntropyLoss(use_sigmoid=True)`` / ``use_mask``), float32."""
  logits = logits.astype(jnp.float32)
  targets = targets.astype(jnp.float32)
  return -(targets * jax.nn.log_sigmoid(logits) + (1.0 - targets) * jax.nn.log_sigmoid(-logits))


def softmax_cross_entropy(logits: jnp.ndarray, labels: jnp.ndarray) -> jnp.ndarray:
  """Softmax cross-entropy ``[...]`` of ``[..., C]`` logits against int ``labels`` (mmdet's ``CrossEntropyLoss``)."""
  log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.take_along_axis(log_probs, labels[..., None].astype(jnp.int32), axis=-1)[..., 0]
