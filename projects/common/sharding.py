"""Data-parallel device placement: the mesh, the shardings, multi-host start-up and global batches.

One 1-D mesh axis (``"data"``) spans every device of every process. Batches are split along their leading
axis over that axis; parameters, optimizer state and the other train-state leaves are replicated. Because the
train step is jitted over *global* arrays, reductions over the batch (the mean loss, BatchNorm statistics,
metric sums) are global: BatchNorm behaves like PyTorch's SyncBN without any ``pmean``.
"""

import os
from typing import Any, Callable, Iterable, Iterator, Optional, Sequence

from absl import logging
import jax
from jax.experimental import multihost_utils
from jax.sharding import Mesh, NamedSharding, PartitionSpec
import numpy as np

DATA_AXIS = "data"
MULTIHOST_ENV = "CROSSFORMER_MULTIHOST"


def maybe_initialize_distributed(multihost: Optional[bool] = None) -> bool:
  """Calls ``jax.distributed.initialize()`` for a multi-host job; returns whether it did.

  Args:
    multihost: ``True`` to initialise, ``False`` not to; ``None`` reads the ``CROSSFORMER_MULTIHOST``
      environment variable ("1"/"true" to initialise). The coordinator address, process count and id come
      from JAX's own auto-detection (Cloud TPU, SLURM, ...) or the ``JAX_COORDINATOR_ADDRESS``,
      ``JAX_NUM_PROCESSES`` and ``JAX_PROCESS_ID`` environment variables.
  """
  if multihost is None:
    multihost = os.environ.get(MULTIHOST_ENV, "").lower() in ("1", "true", "yes")
  if not multihost:
    return False
  jax.distributed.initialize()
  logging.info("jax.distributed initialised: process %d of %d, %d local / %d global devices",
               jax.process_index(), jax.process_count(), jax.local_device_count(), jax.device_count())
  return True


def create_mesh(devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
  """Returns a 1-D data-parallel mesh (axis ``"data"``) over ``devices`` (default: ``jax.devices()``)."""
  devices = list(jax.devices() if devices is None else devices)
  if not devices:
    raise ValueError("create_mesh needs at least one device")
  return Mesh(np.asarray(devices), (DATA_AXIS,))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a batch leaf: the leading (batch) axis split over the data axis, the rest replicated."""
  return NamedSharding(mesh, PartitionSpec(DATA_AXIS))


def replicated_sharding(mesh: Mesh) -> NamedSharding:
  """Sharding of a fully replicated leaf (params, optimizer state, step, rng, metrics)."""
  return NamedSharding(mesh, PartitionSpec())


def process_batch_size(global_batch_size: int, mesh: Mesh) -> int:
  """The per-process share of ``global_batch_size``; raises if it does not split over the devices."""
  num_devices = mesh.devices.size
  if global_batch_size % num_devices:
    raise ValueError(f"batch size {global_batch_size} is not divisible by the number of devices "
                     f"{num_devices}; choose a multiple of {num_devices}")
  return global_batch_size // jax.process_count()


def shard_batch(batch: Any, mesh: Mesh) -> Any:
  """Turns this process's numpy batch (a pytree) into global ``jax.Array``s split along the batch axis.

  Each process passes its own share (``global_batch / process_count`` examples); the result is the global
  batch, of which this process holds the addressable shards.
  """
  sharding = batch_sharding(mesh)
  num_devices = mesh.devices.size

  def put(x):
    x = np.asarray(x)
    if x.ndim == 0:
      raise ValueError("batch leaves need a leading batch axis; got a scalar")
    global_rows = x.shape[0] * jax.process_count()
    if global_rows % num_devices:
      raise ValueError(f"global batch of {global_rows} examples (leaf shape {x.shape}) does not split "
                       f"over {num_devices} devices")
    return jax.make_array_from_process_local_data(sharding, x)

  return jax.tree.map(put, batch)


def replicate(tree: Any, mesh: Mesh) -> Any:
  """Places every leaf of ``tree`` replicated on all devices of ``mesh``."""
  return jax.device_put(tree, replicated_sharding(mesh))


def prefetch_to_mesh(iterator: Iterable[Any], mesh: Mesh, size: int = 2) -> Iterator[Any]:
  """Yields the batches of ``iterator`` as global arrays, keeping ``size`` transfers in flight."""
  queue = []
  it = iter(iterator)
  for batch in it:
    queue.append(shard_batch(batch, mesh))
    if len(queue) > size:
      yield queue.pop(0)
  while queue:
    yield queue.pop(0)


def to_host(tree: Any) -> Any:
  """Returns the full (global) value of every array in ``tree`` as numpy, on every process."""
  def fetch(x):
    if not isinstance(x, jax.Array) or x.is_fully_addressable:
      return np.asarray(jax.device_get(x))
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return jax.tree.map(fetch, tree)


def run_on_first_process(fn: Callable[[], Any], barrier_name: str) -> None:
  """Runs ``fn`` (e.g. preparing a dataset on a shared disk) on process 0 only; every process waits for it."""
  if jax.process_index() == 0:
    fn()
  if jax.process_count() > 1:
    multihost_utils.sync_global_devices(barrier_name)
