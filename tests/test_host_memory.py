"""Releasing the compiler's freed heap: the watcher fires exactly when a jitted function compiled anew."""

import platform

import jax
import jax.numpy as jnp
import pytest

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


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_release_free_heap_trims_on_glibc_and_reports_when_it_cannot(monkeypatch):
  assert host_memory._malloc_trim() is not None  # pylint: disable=protected-access
  assert host_memory.release_free_heap() is True
  monkeypatch.setattr(host_memory, "_malloc_trim", lambda: None)  # a libc without malloc_trim
  assert host_memory.release_free_heap() is False
