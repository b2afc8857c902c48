"""Runs one configured experiment in a work directory: logs, config, task, metrics."""
from __future__ import annotations

import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from persistent import distributed, tasks


def _write_json_atomic(path: str, obj: Any) -> None:
  tmp = f"{path}.tmp"
  with open(tmp, "w") as f:
    json.dump(obj, f, indent=2, sort_keys=True)
  os.replace(tmp, path)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs config.task; metrics.json appears only when the task completed.

  With several processes, process 0 writes to workdir and process i > 0 to workdir/process_i,
  so that hosts sharing a file system never write the same files.
  """
  if config.ridge.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  distributed.initialize(config)  # several hosts: before anything touches a device
  if jax.process_index() > 0:
    workdir = os.path.join(workdir, f"process_{jax.process_index()}")
  os.makedirs(workdir, exist_ok=True)
  metrics_path = os.path.join(workdir, "metrics.json")
  if os.path.exists(metrics_path):  # never leave an old result beside a new, failed run
    os.remove(metrics_path)
  handler = logging.FileHandler(os.path.join(workdir, "log.txt"))
  handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
  root = logging.getLogger()
  root.addHandler(handler)
  root.setLevel(logging.INFO)
  try:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=2, sort_keys=True))
    logging.info("task %s on %s, workdir %s", config.task, jax.devices()[0].platform, workdir)
    task = tasks.get(config.task)
    t0 = time.time()
    metrics = task(config, workdir)
    metrics["seconds"] = round(time.time() - t0, 2)
    _write_json_atomic(metrics_path, metrics)
    logging.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return metrics
  finally:
    root.removeHandler(handler)
    handler.close()
