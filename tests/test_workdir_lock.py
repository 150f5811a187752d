"""One job per workdir: a second job is refused in one line; a dead holder's lock is taken over."""

import json
import os
import socket
import subprocess
import sys

import pytest

from projects.common import workdir_lock


def test_a_second_job_on_the_workdir_is_refused_and_the_lock_goes_at_the_end(tmp_path):
  workdir = str(tmp_path / "run")
  with workdir_lock.hold(workdir):
    with pytest.raises(workdir_lock.JobLockedError, match=r"in use by another job \(process \d+ on .*--workdir"):
      with workdir_lock.hold(workdir):
        pass
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))
  with pytest.raises(RuntimeError):
    with workdir_lock.hold(workdir):
      raise RuntimeError("the job failed")
  assert not os.path.exists(os.path.join(workdir, workdir_lock.LOCK_NAME))  # released on failure too


def test_a_lock_of_a_process_that_is_gone_is_taken_over(tmp_path):
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
  path = tmp_path / workdir_lock.LOCK_NAME
  path.write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname(), "started": 0}))
  with workdir_lock.hold(str(tmp_path)):
    assert json.loads(path.read_text())["pid"] == os.getpid()
  path.write_text(json.dumps({"pid": 1, "host": "another-host", "started": 0}))  # another host: never stale
  with pytest.raises(workdir_lock.JobLockedError, match="another-host"):
    workdir_lock.acquire(str(tmp_path))
