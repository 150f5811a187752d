"""The detection post-processing versions (which mmdetection release's inference selection to reproduce), and the
default, for RetinaNet (``retinanet_postprocess``) and the Mask R-CNN RPN (``proposals``) alike.

* ``"mmdet2"``: mmdetection 2.8, the official CrossFormer repository's (the default: the released numbers).
* ``"mmdet3"``: mmdetection >= 2.18 / 3.x.
"""

MMDET2 = "mmdet2"
MMDET3 = "mmdet3"
VERSIONS = (MMDET2, MMDET3)
DEFAULT_VERSION = MMDET2


def check_version(version: str, key: str) -> None:
  """Raises a one-line ``ValueError`` naming ``key`` unless ``version`` is one of ``VERSIONS``."""
  if version not in VERSIONS:
    raise ValueError(f"{key} must be one of {VERSIONS}, got {version!r}")
