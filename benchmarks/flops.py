"""FLOPs and parameters of the CrossFormer models from XLA's cost analysis, against the official figures.

    python -m benchmarks.flops                                   # the four classifiers at 224x224
    python -m benchmarks.flops --dense --sizes 512x512,800x1344   # the dense backbones at other sizes

XLA counts a multiply-add as 2 FLOPs; the official tables (and fvcore/mmcv's ``get_flops``) count
multiply-accumulates (MACs) and call them FLOPs, so the column compared with them is ``XLA / 2``. The cost
analysis is of the lowered inference program (``jit(apply).lower(...).cost_analysis()``, nothing is run);
it also counts the elementwise work (LayerNorm, GELU, softmax, the DPB MLP), which MAC counters omit, so
``GMACs`` is expected a few percent above the official figure.
"""

import argparse
from typing import Any, Dict, Optional, Sequence, Tuple

import jax
import jax.numpy as jnp

from backbones import create_model, list_models

# Official ImageNet classifiers at 224x224 (paper Table 3 / official README): (GFLOPs = GMACs, M params).
OFFICIAL_224 = {"crossformer_t": (2.9, 27.8), "crossformer_s": (4.9, 30.7),
                "crossformer_b": (9.2, 52.0), "crossformer_l": (16.1, 92.0)}


def _flops(cost: Any) -> float:
  if isinstance(cost, (list, tuple)):  # older jax: one dict per computation
    cost = cost[0]
  return float(cost["flops"])


def count(name: str, height: int, width: int, dense: bool = False) -> Dict[str, float]:
  """``{"xla_gflops", "gmacs", "params_m"}`` of variant ``name`` (classifier, or dense backbone) at HxW."""
  model = create_model(name, features_only=dense)
  x = jax.ShapeDtypeStruct((1, height, width, 3), jnp.float32)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), jnp.zeros((1, 64, 64, 3)))
  flops = _flops(jax.jit(model.apply).lower(variables, x).cost_analysis())
  params = sum(v.size for v in jax.tree.leaves(variables["params"]))
  return {"xla_gflops": flops / 1e9, "gmacs": flops / 2e9, "params_m": params / 1e6}


def table(names: Sequence[str], sizes: Sequence[Tuple[int, int]], dense: bool) -> str:
  """The printed table (markdown), with the official figures and ratios where they exist."""
  rows = ["| model | input | params (M) | XLA GFLOPs | GMACs (XLA / 2) | official GFLOPs (MACs) | ratio |",
          "|---|---|---|---|---|---|---|"]
  for name in names:
    for h, w in sizes:
      got = count(name, h, w, dense)
      official: Optional[Tuple[float, float]] = None
      if not dense and (h, w) == (224, 224):
        official = OFFICIAL_224.get(name)
      ref = f"{official[0]:.1f} ({official[1]:.1f} M params)" if official else "-"
      ratio = f"{got['gmacs'] / official[0]:.3f}" if official else "-"
      kind = "backbone" if dense else "classifier"
      rows.append(f"| {name} {kind} | {h}x{w} | {got['params_m']:.1f} | {got['xla_gflops']:.2f} | "
                  f"{got['gmacs']:.2f} | {ref} | {ratio} |")
  return "\n".join(rows)


def main(argv: Optional[Sequence[str]] = None) -> None:
  """Command-line entry point."""
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--variants", default=",".join([n for n in OFFICIAL_224 if n in list_models()]))
  parser.add_argument("--sizes", default="224x224", help="comma-separated HxW")
  parser.add_argument("--dense", action="store_true", help="the dense backbone (4 maps) instead of the classifier")
  args = parser.parse_args(argv)
  sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
  print(table(args.variants.split(","), sizes, args.dense), flush=True)


if __name__ == "__main__":
  main()
