"""COCO object detection: ``python -m projects.detection.main --config configs/<name>.py --workdir DIR``.

Override any config key on the command line, e.g. ``--config.num_epochs=0 --config.num_training_steps=100
--config.batch_size=8``. ``--multihost`` (or ``CROSSFORMER_MULTIHOST=1``) calls ``jax.distributed.initialize()``
first. Outputs (``projects.detection.train``): checkpoints, TensorBoard summaries, ``config.json``,
``coco_bbox_detections.json``, ``eval_results.json`` and ``detections.png`` in the workdir; a rerun with the
same workdir resumes from the latest checkpoint.
"""

from absl import app
from absl import flags
from absl import logging
import jax

from projects.common import config_utils
from projects.common import sharding
from projects.detection import train

config_utils.define_job_flags()
FLAGS = flags.FLAGS


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  if FLAGS.config is None or FLAGS.workdir is None:
    raise app.UsageError("--config and --workdir are required")
  sharding.maybe_initialize_distributed(FLAGS.multihost)
  logging.info("JAX process %d of %d, devices: %s", jax.process_index(), jax.process_count(), jax.devices())
  result = train.run(FLAGS.config, FLAGS.workdir)
  if jax.process_index() == 0 and result.eval_summary:
    summary = "  ".join(f"{name} {result.eval_summary.get(name, float('nan')):.4f}"
                        for name in ("AP", "AP50", "AP75", "APs", "APm", "APl"))
    print(f"final COCO box {summary}  (step {int(jax.device_get(result.state.step))}, results in "
          f"{FLAGS.workdir})")


if __name__ == "__main__":
  app.run(main)
