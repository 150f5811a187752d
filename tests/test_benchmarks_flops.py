"""The FLOPs counter (XLA cost analysis) against the official CrossFormer figures."""

import pytest

from benchmarks import flops


def test_crossformer_t_flops_and_params_match_the_official_table():
  got = flops.count("crossformer_t", 224, 224)
  official_gmacs, official_params = flops.OFFICIAL_224["crossformer_t"]
  assert got["xla_gflops"] == pytest.approx(2 * got["gmacs"])
  # XLA also counts norms, GELU, softmax and the DPB MLP, which the official MAC count leaves out.
  assert official_gmacs <= got["gmacs"] <= 1.06 * official_gmacs
  assert got["params_m"] == pytest.approx(official_params, abs=0.05)
  dense = flops.count("crossformer_t", 224, 224, dense=True)
  assert dense["gmacs"] < got["gmacs"] and dense["params_m"] < got["params_m"]  # no head, no final norm
