"""One job per workdir: a lock file that a second job started on the same workdir is refused by.

``hold(workdir)`` is a context manager: it creates ``<workdir>/.job.lock`` atomically (``O_CREAT | O_EXCL``)
holding the holder's process id, host and start time, and removes it when the job ends (normally or by an
exception). A lock whose holder is gone (same host, no such process) is stale: it is taken over with a log
line. Any other existing lock raises ``JobLockedError`` naming the workdir, the holder and what to do. In a
multi-host job only process 0 takes it.
"""

import contextlib
import json
import os
import socket
import time
from typing import Iterator

from absl import logging

from projects.common import guards

LOCK_NAME = ".job.lock"


class JobLockedError(guards.JobError):
  """Another job holds the workdir."""


def _alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by someone else
    return True
  return True


def _create(path: str) -> None:
  fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
  with os.fdopen(fd, "w") as f:
    json.dump({"pid": os.getpid(), "host": socket.gethostname(), "started": time.time()}, f)


def acquire(workdir: str) -> str:
  """Takes the lock of ``workdir`` (created if missing); returns the lock file's path."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, LOCK_NAME)
  for _ in range(2):
    try:
      _create(path)
      return path
    except FileExistsError:
      try:
        with open(path) as f:
          holder = json.load(f)
      except (OSError, ValueError):
        holder = {}
      host, pid = holder.get("host"), holder.get("pid")
      if host == socket.gethostname() and isinstance(pid, int) and not _alive(pid):
        logging.warning("taking over the stale lock of %s (process %d on %s is gone)", workdir, pid, host)
        with contextlib.suppress(FileNotFoundError):
          os.remove(path)
        continue
      since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(holder.get("started", 0)))
      raise JobLockedError(f"{workdir} is in use by another job (process {pid} on {host}, since {since}); "
                           f"wait for it, use another --workdir, or delete {path} if that job is gone") from None
  raise JobLockedError(f"cannot take the lock {path}; delete it if no job runs on {workdir}")


@contextlib.contextmanager
def hold(workdir: str, take: bool = True) -> Iterator[None]:
  """Holds the lock of ``workdir`` for the duration of the block (nothing when ``take`` is False)."""
  if not take:
    yield
    return
  path = acquire(workdir)
  try:
    yield
  finally:
    with contextlib.suppress(FileNotFoundError):
      os.remove(path)
