"""Dense detection components with mmdet 2.x semantics: anchors, box coding, assignment, losses, NMS, heads."""

from heads.detection.anchors import AnchorGenerator, anchor_inside_flags, padded_image_shape
from heads.detection.assigner import AssignResult, MaxIoUAssigner
from heads.detection.box_coder import DeltaXYWHBBoxCoder
from heads.detection.nms import NmsResult, batched_nms
from heads.detection.retinanet_head import RetinaHead

__all__ = [
    "AnchorGenerator", "AssignResult", "DeltaXYWHBBoxCoder", "MaxIoUAssigner", "NmsResult", "RetinaHead",
    "anchor_inside_flags", "batched_nms", "padded_image_shape",
]
