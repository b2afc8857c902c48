"""A feature extraction in its own process, for the kill and concurrency tests of test_features.py.

python tests/extract_worker.py CACHE_DIR OUT.npy DELAY CHUNK_BYTES [BARRIER]: extracts the tiny backbone's
flattened map of `synthetic:n=48,size=32` (batches of 4) into CACHE_DIR ('' for no cache), sleeping
DELAY seconds per batch as a slow consumer would, logging to stderr, and saves the features to OUT.
With BARRIER (a folder), it writes BARRIER/ready.PID once started and extracts once BARRIER/go exists.
"""
import logging
import os
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.dirname(HERE)]  # the tests, the repository
from test_features import tiny_backbone  # noqa: E402

from persistent import data, features  # noqa: E402

SOURCE = "synthetic:n=48,size=32"


def main(cache_dir: str, out: str, delay: str, chunk_bytes: str, barrier: str = "") -> None:
  logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(message)s")
  source = data.open_source(SOURCE)
  if barrier:
    open(os.path.join(barrier, f"ready.{os.getpid()}"), "w").close()
    while not os.path.exists(os.path.join(barrier, "go")):
      time.sleep(0.01)
  rows = []
  for _, f in features.iterate(tiny_backbone(), "map", source, batch_size=4,
                               cache_dir=cache_dir or None, progress=False, reduce="flatten",
                               chunk_bytes=int(chunk_bytes)):
    rows.append(f)
    time.sleep(float(delay))
  np.save(out, np.concatenate(rows))


if __name__ == "__main__":
  main(*sys.argv[1:])
