"""Parity of our necks, heads and post-processing with mmsegmentation / mmdetection fixtures.

``python -m projects.parity FIXTURE.npz [...]`` reads each fixture's JSON sidecar (``shared/docs/fixtures.md``
format), dispatches on its ``kind`` to the runner that rebuilds the model from the recorded ``mm_config``
(``official_config.model_config_from_mm``), converts its ``sd/`` weights, runs every case and compares every
stored output it can. Runners live in the modules named by ``RUNNERS`` and have the signature
``run(arrays, meta, report)``. The public fixtures, smaller derived copies, ship in ``tests/fixtures/heads``.
"""

from projects.parity.report import Report, load_fixture

# fixture kind -> "module:function" (imported lazily: a runner's dependencies load only when it is used).
RUNNERS = {
    "semantic_fpn": "projects.parity.segmentation:run",
    "upernet": "projects.parity.segmentation:run",
    "retinanet": "projects.parity.retinanet:run",
    "mask_rcnn": "projects.parity.mask_rcnn:run",
}

__all__ = ["RUNNERS", "Report", "load_fixture"]
