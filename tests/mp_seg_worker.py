"""One process of the multi-process test (``tests/test_job_guards.py``): the tiny segmentation job, recorded.

python tests/mp_seg_worker.py RECORD.jsonl --workdir W --data_dir D --num_processes 2 --process_id 0 --port P
    [--die_at_step 3] [--reference]

Records, one JSON line each: ``{"step", "loss"}`` per train step, ``{"batch_step", "digest"}`` (sha1 of the
``inputs`` this process's train iterator yielded) and ``{"wrote": path}`` for every file this process opened
for writing in the workdir outside ``checkpoints/`` (a Python audit hook). ``--die_at_step N`` SIGKILLs the
process after step N once the step-2 checkpoint is complete; ``--reference`` runs one process whose batches
are the concatenated shares of a two-process run (the same global batches).
"""

import argparse
import hashlib
import json
import os
import re
import signal
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main() -> None:
  parser = argparse.ArgumentParser()
  parser.add_argument("record")
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data_dir", required=True)
  parser.add_argument("--num_processes", type=int, default=1)
  parser.add_argument("--process_id", type=int, default=0)
  parser.add_argument("--port", type=int, default=0)
  parser.add_argument("--steps", type=int, default=4)
  parser.add_argument("--die_at_step", type=int, default=0)
  parser.add_argument("--reference", action="store_true")
  args = parser.parse_args()

  import jax  # pylint: disable=import-outside-toplevel
  if args.num_processes > 1:
    jax.distributed.initialize(f"127.0.0.1:{args.port}", num_processes=args.num_processes,
                               process_id=args.process_id, initialization_timeout=120)
    # Set up the gloo context now, while both processes are in step: it is created at the first
    # cross-process computation and each side waits 30 s at most for the other (a loaded machine compiles
    # the train step at different speeds in the two processes).
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    multihost_utils.sync_global_devices("gloo_warm_up")
  import numpy as np  # pylint: disable=import-outside-toplevel
  from projects.common import config_utils  # pylint: disable=import-outside-toplevel
  from projects.common import dataset as dataset_lib  # pylint: disable=import-outside-toplevel
  from projects.common import sharding  # pylint: disable=import-outside-toplevel
  from projects.segmentation import train  # pylint: disable=import-outside-toplevel
  from projects.segmentation.data import pipeline  # pylint: disable=import-outside-toplevel

  record = open(args.record, "a")

  def write(entry):
    record.write(json.dumps(entry) + "\n")
    record.flush()

  workdir = os.path.abspath(args.workdir)
  checkpoints = os.path.join(workdir, "checkpoints")

  def audit(event, event_args):
    path = None
    if event == "open" and isinstance(event_args[0], str):
      mode, flags = event_args[1], event_args[2]
      if (mode and any(c in mode for c in "wax+")) or (mode is None and flags & (os.O_WRONLY | os.O_RDWR)):
        path = event_args[0]  # open() for writing, or os.open (mkstemp) of an atomic write's temp file
    elif event == "os.rename" and isinstance(event_args[1], str):
      path = event_args[1]  # os.replace of an atomic write: its destination
    if path is not None:
      path = os.path.abspath(path)
      if path.startswith(workdir + os.sep) and not path.startswith(checkpoints + os.sep):
        write({"wrote": re.sub(r"\.tmp-\d+$", "", os.path.relpath(path, workdir))})
  sys.addaudithook(audit)

  config = config_utils.load_config(os.path.join(REPO, "configs", "tiny_ade20k.py"), {
      "num_training_steps": args.steps, "log_summary_steps": 1, "log_eval_steps": 0, "checkpoint_steps": 2,
      "max_checkpoint_keep": 3, "progress_bar": False, "lr_configs.warmup_steps": 0,
      "synthetic_data.num_train": 24, "synthetic_data.num_val": 4, "dataset.data_dir": args.data_dir,
      "dataset.eval_buckets": ((256, 256),), "steps_per_eval": 1})

  def recorded(train_iter_fn):
    def fn(start_step=0):
      for step, batch in enumerate(train_iter_fn(start_step), start=start_step + 1):
        write({"batch_step": step, "digest": hashlib.sha1(np.ascontiguousarray(batch["inputs"])).hexdigest()})
        yield batch
    return fn

  def build_dataset(cfg):
    if not args.reference:
      dataset = pipeline.get_dataset(cfg)
      return dataset_lib.Dataset(recorded(dataset.train_iter_fn), dataset.eval_iter_fn, dataset.meta_data)
    shares = [pipeline.get_dataset(cfg, process_index=i, process_count=2) for i in range(2)]

    def concatenated(start_step=0):
      for batches in zip(*(share.train_iter_fn(start_step) for share in shares)):
        for i, batch in enumerate(batches):  # the digest each process of a 2-process run would record
          write({"share": i, "digest": hashlib.sha1(np.ascontiguousarray(batch["inputs"])).hexdigest()})
        yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}

    def eval_concatenated():
      for batches in zip(*(share.eval_iter_fn() for share in shares)):
        yield {k: np.concatenate([b[k] for b in batches]) for k in batches[0]}
    return dataset_lib.Dataset(concatenated, eval_concatenated, shares[0].meta_data)
  train.build_dataset = build_dataset

  def hook(step, state, metrics):
    write({"step": step, "loss": float(sharding.to_host(metrics["loss"][0]))})
    if step == args.die_at_step:
      deadline = time.time() + 300
      while not os.path.isdir(os.path.join(checkpoints, "2")) and time.time() < deadline:
        time.sleep(0.1)
      os.kill(os.getpid(), signal.SIGKILL)

  train.run(config, workdir, hooks=[hook])
  record.close()


if __name__ == "__main__":
  main()
