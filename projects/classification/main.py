"""Image classification: ``python -m projects.classification.main --config configs/<name>.py --workdir DIR``.

Override any config key on the command line, e.g. ``--config.num_training_steps=100 --config.batch_size=64``.
``--multihost`` (or ``CROSSFORMER_MULTIHOST=1``) calls ``jax.distributed.initialize()`` first. Outputs
(``projects.classification.train``): checkpoints, TensorBoard summaries, ``config.json``, ``eval_results.json``
(top-1, top-5), ``per_class_accuracy.tsv`` and ``predictions.png`` in the workdir; a rerun with the same
workdir resumes from the latest checkpoint.
"""

from absl import app

from projects.classification import train
from projects.common import config_utils

config_utils.define_job_flags()
main = config_utils.job_main(
    train.run, lambda result: (f"final top-1: {result.eval_summary.get('top1', float('nan')):.4f}  "
                               f"top-5: {result.eval_summary.get('top5', float('nan')):.4f}"))

if __name__ == "__main__":
  app.run(main)
