"""Content hashes of files: the one helper the project keys caches and weights identities by."""
from __future__ import annotations

import hashlib
import os

CHUNK = 1 << 20


def file_digest(path: str | os.PathLike) -> str:
  """sha1 of a file's bytes as 40 hex digits, read in 1 MiB chunks (weights files are large)."""
  h = hashlib.sha1()
  with open(path, "rb") as f:
    while block := f.read(CHUNK):
      h.update(block)
  return h.hexdigest()
