"""Train-step time, images/s, compile time and peak memory: ours vs the official PyTorch code, side by side.

    python -m benchmarks.train_step --official /path/to/CrossFormer          # every work item, 2 rounds
    python -m benchmarks.train_step --work bb_train_512,bb_train_800 --rounds 3 --remat

Every (work item, implementation) is measured in a fresh subprocess, ours and official interleaved and
repeated ``--rounds`` times, so both see the same machine load and peak memory is per configuration.
Work items: the CrossFormer-S dense backbone (v1 LDA, drop-path 0.2, train mode) — a train step is the
forward and backward of the mean of the four pyramid maps, w.r.t. all parameters — at 512² and 800x1344,
its forward at 512² with batch 1 and 4, and the trainer's full train step (loss, backward, AdamW update)
of UperNet-S (150 classes, FCN aux head) and Semantic FPN-S at 512² batch 2, and RetinaNet-S at 800x1344
(ours only so far). Official: float32, ``torch.set_num_threads(--threads)``; the segmentation steps are the
official backbone + mmsegmentation's heads and losses (``benchmarks.official_heads``); ``--official-python``
names an interpreter with torch + mmseg for that column (a separate venv, see RESULTS.md). The column is
skipped when ``--official`` / ``$CROSSFORMER_OFFICIAL`` or torch is missing. Ours: jitted, compilation timed
apart and excluded.
Memory: the process's peak RSS during the timed steps (``VmHWM`` after resetting it via
``/proc/self/clear_refs`` once warm; includes the runtime, ~0.3 GB for each side) and, for ours, XLA's
``compile().memory_analysis()`` (temporaries + arguments + outputs). Ours hands the compiler's freed heap
back once warm (``projects.common.host_memory``), as the trainer does after every new compilation.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# name: (kind, height, width, batch, official counterpart exists)
WORK = {
    "bb_train_512": ("backbone_train", 512, 512, 1, True),
    "bb_train_800": ("backbone_train", 800, 1344, 1, True),
    "bb_fwd_512_b1": ("backbone_forward", 512, 512, 1, True),
    "bb_fwd_512_b4": ("backbone_forward", 512, 512, 4, True),
    "upernet_train_512": ("upernet_train", 512, 512, 2, True),
    "fpn_train_512": ("fpn_train", 512, 512, 2, True),
    "retinanet_train_800": ("retinanet_train", 800, 1344, 1, False),
}


def _reset_peak_rss() -> bool:
  """Resets the kernel's peak-RSS mark of this process (Linux); False where unsupported."""
  try:
    with open("/proc/self/clear_refs", "w") as f:
      f.write("5")
    return True
  except OSError:
    return False


def _peak_rss_gib() -> float:
  """Peak RSS since the last reset (``VmHWM``), else since the start (``ru_maxrss``), in GiB."""
  try:
    with open("/proc/self/status") as f:
      for line in f:
        if line.startswith("VmHWM:"):
          return int(line.split()[1]) / 2 ** 20
  except OSError:
    pass
  import resource  # pylint: disable=g-import-not-at-top
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20


def _release_free_heap() -> None:
  """What the measured checkout's trainer does once a step has compiled (nothing before it had this)."""
  try:
    from projects.common import host_memory  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  host_memory.release_free_heap()


def _time(fn, steps: int) -> Dict[str, float]:
  """Median wall seconds of ``steps`` calls, and the process CPU seconds per call (all threads)."""
  times = []
  cpu_start = time.process_time()
  for _ in range(steps):
    start = time.perf_counter()
    fn()
    times.append(time.perf_counter() - start)
  return {"step_s": statistics.median(times), "cpu_s": (time.process_time() - cpu_start) / steps}


def _ours_backbone(kind: str, h: int, w: int, batch: int, steps: int, remat: Any) -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from backbones import create_model  # pylint: disable=g-import-not-at-top
  model = create_model("crossformer_s", drop_path_rate=0.2, lda_mode="v1", remat=remat)
  params = jax.jit(model.init)(jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))["params"]
  x = jax.random.normal(jax.random.PRNGKey(1), (batch, h, w, 3))
  rng = jax.random.PRNGKey(2)
  if kind == "backbone_train":
    def loss(params, x, rng):
      feats = model.apply({"params": params}, x, train=True, rngs={"dropout": rng})
      return sum(jnp.mean(f) for f in feats.values())
    fn, args = jax.grad(loss), (params, x, rng)
  else:
    fn, args = (lambda params, x: model.apply({"params": params}, x, train=False)), (params, x)
  start = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - start
  mem = compiled.memory_analysis()
  run = lambda: jax.block_until_ready(compiled(*args))
  run()
  _release_free_heap()
  _reset_peak_rss()
  return {**_time(run, steps), "compile_s": compile_s, "peak_rss_gib": _peak_rss_gib(),
          "xla_gib": _xla_gib(mem)}


def _xla_gib(mem) -> Optional[float]:
  if mem is None:
    return None
  return (mem.temp_size_in_bytes + mem.argument_size_in_bytes + mem.output_size_in_bytes) / 2 ** 30


def _ours_task(kind: str, h: int, w: int, batch: int, steps: int, remat: Any) -> Dict[str, Any]:
  import jax  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top
  from projects.common import config_utils, optim, sharding, trainer  # pylint: disable=g-import-not-at-top
  if kind in ("upernet_train", "fpn_train"):
    from projects.segmentation.models.encoder_decoder import SegmentationModel  # pylint: disable=g-import-not-at-top
    name = "upernet_crossformer_s_ade20k.py" if kind == "upernet_train" else "fpn_crossformer_s_ade20k.py"
    config = config_utils.load_config(os.path.join(REPO, "configs", name))
    model_cls, meta = SegmentationModel, {"num_classes": 150}
    rng = np.random.default_rng(0)
    host = {"inputs": rng.normal(size=(batch, h, w, 3)).astype(np.float32),
            "label": rng.integers(-1, 150, size=(batch, h, w)).astype(np.int32),
            "batch_mask": np.ones((batch,), np.float32)}
  else:
    from benchmarks.detection_speed import NUM_CLASSES, random_batch  # pylint: disable=g-import-not-at-top
    from projects.detection.models.retinanet import RetinaNetModel  # pylint: disable=g-import-not-at-top
    config = config_utils.load_config(os.path.join(REPO, "configs", "retinanet_crossformer_s_coco.py"))
    model_cls, meta, host = RetinaNetModel, {"num_classes": NUM_CLASSES}, random_batch(batch, h, w)
  with config.unlocked():
    config.init_input_shape = (1, 256, 256, 3)
    config.batch_size = batch
    config.init_from.checkpoint_path = None
    if remat:
      config.model.backbone.remat = remat
  mesh = sharding.create_mesh(jax.devices()[:1])
  model = model_cls(config, meta)
  schedule = optim.create_lr_schedule(config.lr_configs, 1000)
  tx = optim.create_optimizer(config, schedule)
  state = trainer.initialize_state(model, config, None, tx, mesh, load_pretrained=False)
  data = sharding.shard_batch(host, mesh)
  step_fn = trainer.jit_train_step(model, tx, schedule, trainer.compute_dtype(config), mesh)
  start = time.perf_counter()
  compiled = step_fn.lower(state, data).compile()
  compile_s = time.perf_counter() - start
  holder = {"state": state}

  def run():
    holder["state"], metrics = compiled(holder["state"], data)
    jax.block_until_ready(metrics)

  run()
  _release_free_heap()
  _reset_peak_rss()
  return {**_time(run, steps), "compile_s": compile_s, "peak_rss_gib": _peak_rss_gib(),
          "xla_gib": _xla_gib(compiled.memory_analysis())}


def _official_backbone(kind: str, h: int, w: int, batch: int, steps: int, root: str,
                       threads: int) -> Dict[str, Any]:
  import torch  # pylint: disable=g-import-not-at-top
  from benchmarks import official  # pylint: disable=g-import-not-at-top
  torch.set_num_threads(threads)
  torch.manual_seed(0)
  if kind in ("upernet_train", "fpn_train"):
    from benchmarks import official_heads  # pylint: disable=g-import-not-at-top
    run = official_heads.segmentation_train_step(root, kind, h, w, batch)
    run()
    _reset_peak_rss()
    return {**_time(run, steps), "compile_s": None, "peak_rss_gib": _peak_rss_gib(), "xla_gib": None}
  model = official.crossformer_s(root, (h, w))
  x = torch.randn(batch, 3, h, w)
  if kind == "backbone_train":
    model.train()

    def run():
      model.zero_grad(set_to_none=True)
      sum(f.mean() for f in model(x)).backward()
  else:
    model.eval()

    def run():
      with torch.no_grad():
        model(x)
  run()
  _reset_peak_rss()
  return {**_time(run, steps), "compile_s": None, "peak_rss_gib": _peak_rss_gib(), "xla_gib": None}


def worker(spec: Dict[str, Any]) -> Dict[str, Any]:
  """Measures one (work item, implementation) in this process; returns the figures."""
  kind, h, w, batch, _ = WORK[spec["work"]]
  h, w = spec.get("hw") or (h, w)
  if spec["impl"] == "official":
    return _official_backbone(kind, h, w, batch, spec["steps"], spec["official"], spec["threads"])
  remat = spec.get("remat") or False
  if kind.startswith("backbone"):
    return _ours_backbone(kind, h, w, batch, spec["steps"], remat)
  return _ours_task(kind, h, w, batch, spec["steps"], remat)


def _run_child(spec: Dict[str, Any], root: str, python: str) -> Optional[Dict[str, Any]]:
  """Runs one measurement in a fresh ``python`` process importing the library from ``root``."""
  env = dict(os.environ, PYTHONPATH=os.pathsep.join([root, REPO]))
  cmd = [python, os.path.abspath(__file__), "--worker", json.dumps(spec)]
  proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True, check=False, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith("{")]
  if proc.returncode != 0 or not lines:
    print(f"  {spec['impl']} {spec['work']} failed (rc {proc.returncode}): {proc.stderr[-800:]}",
          file=sys.stderr, flush=True)
    return None
  return json.loads(lines[-1])


def _fmt(value: Optional[float], spec: str) -> str:
  return "-" if value is None else format(value, spec)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--work", default=",".join(WORK), help=f"comma-separated, from {sorted(WORK)}")
  parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every item")
  parser.add_argument("--steps", type=int, default=3, help="timed steps per process (median reported)")
  parser.add_argument("--official", default=None,
                      help="official checkout (default: $CROSSFORMER_OFFICIAL)")
  parser.add_argument("--official-python", default=sys.executable,
                      help="interpreter of the official column (needs torch; mmseg for the segmentation steps)")
  parser.add_argument("--threads", type=int, default=2, help="torch threads of the official side")
  parser.add_argument("--remat", default="", help="ours: backbone remat policy (see README), '' = off")
  parser.add_argument("--baseline", default=None,
                      help="another checkout of this library, measured as 'before' (before/after tables)")
  parser.add_argument("--impls", default="ours,before,official", help="which columns to measure")
  parser.add_argument("--hw", default="", help="'H,W': override every item's image size (quick runs on a busy CPU)")
  parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
  args = parser.parse_args(argv)
  if args.worker:
    print(json.dumps(worker(json.loads(args.worker))), flush=True)
    return
  from benchmarks import official  # pylint: disable=g-import-not-at-top
  root = official.official_root(args.official, check_torch=args.official_python == sys.executable)
  names = [n for n in args.work.split(",") if n]
  unknown = [n for n in names if n not in WORK]
  if unknown:
    raise SystemExit(f"unknown --work {unknown}; choose from {sorted(WORK)}")
  print(f"official: {root or 'absent (pass --official or set $CROSSFORMER_OFFICIAL; needs torch)'}; "
        f"remat: {args.remat or 'off'}; {os.cpu_count()} CPUs; size {args.hw or 'per item'}", flush=True)
  results: Dict[tuple, List[Dict[str, Any]]] = {}
  for _ in range(args.rounds):
    for name in names:
      wanted = args.impls.split(",")
      impls = [i for i in ("before", "ours") if i in wanted and (i == "ours" or args.baseline)]
      impls += ["official"] if "official" in wanted and root and WORK[name][4] else []
      for impl in impls:
        spec = dict(work=name, impl=impl, steps=args.steps, official=root, threads=args.threads,
                    remat=args.remat, hw=[int(v) for v in args.hw.split(",")] if args.hw else None)
        out = _run_child(spec, args.baseline if impl == "before" else REPO,
                         args.official_python if impl == "official" else sys.executable)
        if out:
          results.setdefault((name, impl), []).append(out)
          print(f"  {name} {impl}: " + ", ".join(f"{k} {v:.3f}" for k, v in out.items() if v is not None),
                flush=True)
  print(f"load average at the end: {os.getloadavg()[0]:.1f} (CPU s: process CPU time per step, all threads)")
  header = (f"{'work':<20}{'impl':<9}{'step ms':>9}{'CPU s':>7}{'img/s':>7}{'compile s':>10}{'RSS GiB':>8}"
            f"{'XLA GiB':>8}{'time ratio':>11}{'RSS ratio':>10}  step s min-max (runs)")
  print(header)
  print("-" * len(header))
  for name in names:
    ref = results.get((name, "official"))
    for impl in ("before", "ours", "official"):
      runs = results.get((name, impl))
      if not runs:
        continue
      med = lambda key: (statistics.median(r[key] for r in runs) if runs[0][key] is not None else None)
      step_s, rss = med("step_s"), med("peak_rss_gib")
      ratio_t = ratio_m = None
      if impl != "official" and ref:
        ratio_t = step_s / statistics.median(r["step_s"] for r in ref)
        ratio_m = rss / statistics.median(r["peak_rss_gib"] for r in ref)
      print(f"{name:<20}{impl:<9}{step_s * 1e3:>9.0f}{med('cpu_s'):>7.1f}{WORK[name][3] / step_s:>7.2f}"
            f"{_fmt(med('compile_s'), '.1f'):>10}{rss:>8.2f}{_fmt(med('xla_gib'), '.2f'):>8}"
            f"{_fmt(ratio_t, '.2f'):>11}{_fmt(ratio_m, '.2f'):>10}  "
            f"{min(r['step_s'] for r in runs):.2f}-{max(r['step_s'] for r in runs):.2f} ({len(runs)})", flush=True)


if __name__ == "__main__":
  main()
