"""ADE20K semantic segmentation: ``python -m projects.segmentation.main --config configs/<name>.py --workdir DIR``.

Override any config key on the command line, e.g. ``--config.num_training_steps=100 --config.batch_size=8``.
``--multihost`` (or ``CROSSFORMER_MULTIHOST=1``) calls ``jax.distributed.initialize()`` first. Outputs
(``projects.segmentation.train``): checkpoints, TensorBoard summaries, ``config.json``, ``eval_results.json``,
``per_class_iou.tsv`` and ``predictions.png`` in the workdir; a rerun with the same workdir resumes from the
latest checkpoint.
"""

from absl import app

from projects.common import config_utils
from projects.segmentation import train

config_utils.define_job_flags()
main = config_utils.job_main(
    train.run, lambda result: f"final mIoU: {result.eval_summary.get('mIoU', float('nan')):.4f}")

if __name__ == "__main__":
  app.run(main)
