"""The persistent compilation cache every command turns on (jobs, predict, evaluate, extract, export).

``enable()``: JAX's persistent cache in ``$JAX_COMPILATION_CACHE_DIR``, else ``~/.cache/crossformer_jax/xla``;
programs compiling for over a second are kept, so a rerun, a resumed job or a second evaluation skips
recompiling its shapes. It lives in the lowest layer so that feature extraction (``backbones``) and the
``projects`` commands share it.
"""

import os

import jax


def enable() -> str:
  """Turns the cache on; returns its folder."""
  path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or os.path.join(
      os.path.expanduser("~"), ".cache", "crossformer_jax", "xla")
  jax.config.update("jax_compilation_cache_dir", path)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)
  return path
