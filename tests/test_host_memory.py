"""Releasing the compiler's freed heap: the watcher fires exactly when a jitted function compiled anew."""

import jax
import jax.numpy as jnp

from projects.common import host_memory


def test_release_after_compile_fires_on_new_shapes_only(monkeypatch):
  calls = []
  monkeypatch.setattr(host_memory, "release_free_heap", lambda: calls.append(1) or True)
  f = jax.jit(lambda x: x * 2)
  watch = host_memory.ReleaseAfterCompile(f)
  f(jnp.ones(3))
  assert watch() and len(calls) == 1          # first compilation
  f(jnp.ones(3))
  assert not watch() and len(calls) == 1      # served from the cache: nothing to release
  f(jnp.ones(4))
  assert watch() and len(calls) == 2          # a new shape compiled


def test_release_free_heap_runs_here():
  assert host_memory.release_free_heap() in (True, False)
  assert host_memory.release_free_heap() is (host_memory._malloc_trim() is not None)  # pylint: disable=protected-access
