"""COCO object detection and instance segmentation: ``python -m projects.detection.main --config
configs/<name>.py --workdir DIR`` (the model is ``config.model_name``: RetinaNet or Mask R-CNN).

Override any config key on the command line, e.g. ``--config.num_training_epochs=0 --config.num_training_steps=100
--config.batch_size=8``. ``--multihost`` (or ``CROSSFORMER_MULTIHOST=1``) calls ``jax.distributed.initialize()``
first. Outputs (``projects.detection.train``): checkpoints, TensorBoard summaries, ``config.json``,
``coco_bbox_detections.json`` (Mask R-CNN: also ``coco_segm_detections.json``), ``eval_results.json`` and
``detections.png`` in the workdir; a rerun with the
same workdir resumes from the latest checkpoint.
"""

from absl import app

from projects.common import config_utils
from projects.detection import train

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def summarize(result) -> str:
  """The final COCO box (and mask) metrics on one line."""
  summary = result.eval_summary
  line = "final COCO box " + "  ".join(f"{name} {summary.get(name, float('nan')):.4f}" for name in _METRICS)
  if "mask_AP" in summary:
    line += " | mask " + "  ".join(f"{name} {summary[f'mask_{name}']:.4f}" for name in _METRICS)
  return line


config_utils.define_job_flags()
main = config_utils.job_main(train.run, summarize)

if __name__ == "__main__":
  app.run(main)
