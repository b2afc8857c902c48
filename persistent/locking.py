"""Exclusive file locks that die with their process: a work directory in use, a cache entry being written.

A lock is `fcntl.flock` on an open lock file holding the owner's pid. The kernel drops it when the
process ends, however it ends (SIGKILL included), so a lock is never stale: a lock file a dead
process left on disk is simply taken by the next process. The owner removes the file when it lets
go; a waiter that locked a file just removed retries on the new one (checked by inode), so two
processes never both hold a lock. flock works across hosts on local file systems and NFSv4 (Linux
emulates it with POSIX locks there), not on every network file system.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
from typing import Iterator


class Busy(RuntimeError):
  """The lock is held by another live process."""


class FileLock:
  """An exclusive lock on `path` (created as needed); `acquire` then `release`, or `with`."""

  def __init__(self, path: str):
    self.path, self.fd = path, None

  def acquire(self, blocking: bool = True) -> bool:
    """Takes the lock (waiting for it when `blocking`); False if it is held and not blocking."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
      except BlockingIOError:
        os.close(fd)
        return False
      except BaseException:
        os.close(fd)
        raise
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:  # not a file its last owner removed while we waited
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return True
      os.close(fd)

  def owner(self) -> str:
    """The pid written by the lock's current owner ('' if unknown)."""
    try:
      with open(self.path) as f:
        return f.read().strip()
    except OSError:
      return ""

  def release(self) -> None:
    if self.fd is not None:
      with contextlib.suppress(FileNotFoundError):
        os.remove(self.path)
      os.close(self.fd)  # closing the last descriptor drops the flock
      self.fd = None

  def __enter__(self) -> "FileLock":
    self.acquire()
    return self

  def __exit__(self, *exc) -> None:
    self.release()


@contextlib.contextmanager
def workdir(path: str) -> Iterator[FileLock]:
  """Holds `path/.lock` for a run: a second run in the same work directory fails at once while the
  first lives (Busy, naming the directory and the first run's pid) and proceeds once it is gone."""
  lock = FileLock(os.path.join(path, ".lock"))
  if not lock.acquire(blocking=False):
    raise Busy(f"workdir {path} is in use by another run (pid {lock.owner() or 'unknown'}, lock file "
               f"{lock.path}); wait for it to finish or pass another --workdir")
  try:
    yield lock
  finally:
    lock.release()
