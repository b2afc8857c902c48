"""File locks between real processes: exclusive while the owner lives, free once it is killed."""
import os
import signal
import subprocess
import sys
import time

import pytest

from persistent import locking

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def hold(path, workdir=False):
  """A process that takes the lock on `path` (or the workdir lock of folder `path`) and sleeps."""
  take = (f"held = locking.workdir({path!r}); held.__enter__()" if workdir
          else f"held = locking.FileLock({path!r}); held.acquire()")
  proc = subprocess.Popen([sys.executable, "-c", f"import time\nfrom persistent import locking\n{take}\n"
                           "print('held', flush=True)\ntime.sleep(120)"],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
  assert proc.stdout.readline().strip() == "held"
  return proc


def kill(proc):
  proc.send_signal(signal.SIGKILL)
  proc.wait()


def test_lock_is_exclusive_and_dies_with_its_process(tmp_path):
  path = str(tmp_path / "x.lock")
  owner = hold(path)
  try:
    lock = locking.FileLock(path)
    assert not lock.acquire(blocking=False)
    assert lock.owner() == str(owner.pid)
  finally:
    kill(owner)
  assert os.path.exists(path)  # left behind by the killed owner: stale, taken at once
  with locking.FileLock(path) as lock:
    assert lock.owner() == str(os.getpid())
  assert not os.path.exists(path)  # removed by its owner when let go


def test_waiter_gets_the_lock_when_the_owner_lets_go(tmp_path):
  path = str(tmp_path / "x.lock")
  first = locking.FileLock(path)
  first.acquire()
  proc = subprocess.Popen([sys.executable, "-c", "import time\nfrom persistent import locking\n"
                           f"l = locking.FileLock({path!r}); l.acquire(); print(l.owner(), flush=True)"],
                          cwd=ROOT, stdout=subprocess.PIPE, text=True)
  time.sleep(1.0)
  assert proc.poll() is None  # still waiting
  first.release()  # removes the file it held: the waiter must retry on a new one
  assert proc.communicate(timeout=30)[0].strip() == str(proc.pid)


def test_workdir_in_use_is_refused_then_free_after_a_kill(tmp_path):
  owner = hold(str(tmp_path), workdir=True)
  try:
    with pytest.raises(locking.Busy, match=f"workdir {tmp_path} is in use by another run \\(pid {owner.pid}"):
      with locking.workdir(str(tmp_path)):
        pass
  finally:
    kill(owner)
  with locking.workdir(str(tmp_path)):
    assert os.path.exists(tmp_path / ".lock")
  assert not os.path.exists(tmp_path / ".lock")
