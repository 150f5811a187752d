"""COCO object detection: ``python -m projects.detection.main --config configs/<name>.py --workdir DIR``.

Override any config key on the command line, e.g. ``--config.num_training_epochs=0 --config.num_training_steps=100
--config.batch_size=8``. ``--multihost`` (or ``CROSSFORMER_MULTIHOST=1``) calls ``jax.distributed.initialize()``
first. Outputs (``projects.detection.train``): checkpoints, TensorBoard summaries, ``config.json``,
``coco_bbox_detections.json``, ``eval_results.json`` and ``detections.png`` in the workdir; a rerun with the
same workdir resumes from the latest checkpoint.
"""

from absl import app

from projects.common import config_utils
from projects.detection import train

_METRICS = ("AP", "AP50", "AP75", "APs", "APm", "APl")


def summarize(result) -> str:
  """The final COCO box metrics on one line."""
  return "final COCO box " + "  ".join(
      f"{name} {result.eval_summary.get(name, float('nan')):.4f}" for name in _METRICS)


config_utils.define_job_flags()
main = config_utils.job_main(train.run, summarize)

if __name__ == "__main__":
  app.run(main)
