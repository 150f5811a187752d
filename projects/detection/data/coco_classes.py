"""The 80 COCO detection classes in mmdet order, and their COCO category ids (contiguous index -> id).

Used when a model is converted without a prepared dataset at hand (``projects.common.model_io``); a prepared
COCO dataset gives the same values through ``coco_source.dataset_meta_data``.
"""

from typing import Tuple

CLASS_NAMES: Tuple[str, ...] = (
    "person", "bicycle", "car", "motorcycle", "airplane", "bus", "train", "truck", "boat", "traffic light",
    "fire hydrant", "stop sign", "parking meter", "bench", "bird", "cat", "dog", "horse", "sheep", "cow",
    "elephant", "bear", "zebra", "giraffe", "backpack", "umbrella", "handbag", "tie", "suitcase", "frisbee",
    "skis", "snowboard", "sports ball", "kite", "baseball bat", "baseball glove", "skateboard", "surfboard",
    "tennis racket", "bottle", "wine glass", "cup", "fork", "knife", "spoon", "bowl", "banana", "apple",
    "sandwich", "orange", "broccoli", "carrot", "hot dog", "pizza", "donut", "cake", "chair", "couch",
    "potted plant", "bed", "dining table", "toilet", "tv", "laptop", "mouse", "remote", "keyboard",
    "cell phone", "microwave", "oven", "toaster", "sink", "refrigerator", "book", "clock", "vase",
    "scissors", "teddy bear", "hair drier", "toothbrush",
)

# COCO 2017 category ids of CLASS_NAMES (ids 12, 26, 29, 30, 45, 66, 68, 69, 71, 83 are unused).
CATEGORY_IDS: Tuple[int, ...] = tuple(i for i in range(1, 91) if i not in (12, 26, 29, 30, 45, 66, 68, 69, 71, 83))

assert len(CLASS_NAMES) == len(CATEGORY_IDS) == 80
