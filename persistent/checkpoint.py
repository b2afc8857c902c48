"""Orbax checkpoints of fitted ridge probes, with what they were fitted on.

A checkpoint folder holds `fits/` (every field of every named `ridge.RidgeFit`) and
`metadata.json`: the probe's `identity` (task, backbone, weights, layer, preprocessing, training
data, ridge settings, target layout; see `probe.Pipeline.identity`) and the task's `state` (what
prediction needs besides the fits). Restoring refuses a checkpoint whose identity differs from the
running configuration's, naming the field and both values.
"""
from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from persistent import ridge


def _checkpointer() -> ocp.StandardCheckpointer:
  """This process alone (several processes save or restore on their own, never in lockstep)."""
  me = jax.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def save(directory: str, fits: dict[str, ridge.RidgeFit], metadata: dict[str, Any]) -> str:
  """Writes named fits (e.g. {'rgb': fit}) and JSON metadata to directory/ (replacing it)."""
  directory = os.path.abspath(directory)
  fields = [f.name for f in dataclasses.fields(ridge.RidgeFit)]
  tree = {name: {f: np.asarray(getattr(fit, f)) for f in fields} for name, fit in fits.items()}
  with _checkpointer() as ckpt:
    ckpt.save(os.path.join(directory, "fits"), tree, force=True)
    ckpt.wait_until_finished()
  with open(os.path.join(directory, "metadata.json"), "w") as f:
    json.dump(metadata, f, indent=2, sort_keys=True)
  return directory


def locate(path: str) -> str:
  """The checkpoint folder of a run: `path` itself or `path/checkpoint`."""
  path = os.path.abspath(os.path.expanduser(path))
  if os.path.exists(os.path.join(path, "metadata.json")):
    return path
  if os.path.exists(os.path.join(path, "checkpoint", "metadata.json")):
    return os.path.join(path, "checkpoint")
  raise FileNotFoundError(f"no probe checkpoint in {path} (neither {path}/metadata.json nor "
                          f"{path}/checkpoint/metadata.json exists)")


def restore(path: str) -> tuple[dict[str, ridge.RidgeFit], dict[str, Any]]:
  """Inverse of `save`; `path` is a run's workdir or its checkpoint folder."""
  directory = locate(path)
  with open(os.path.join(directory, "metadata.json")) as f:
    metadata = json.load(f)
  with _checkpointer() as ckpt:
    tree = ckpt.restore(os.path.join(directory, "fits"))
  fits = {name: ridge.RidgeFit(**{k: np.asarray(v) for k, v in leaves.items()})
          for name, leaves in tree.items()}
  return fits, metadata


def _canonical(value: Any) -> Any:
  """JSON's view of a value (tuples as lists, numbers as JSON numbers), for comparisons."""
  return json.loads(json.dumps(value, sort_keys=True, default=str))


def differences(saved: Any, running: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
  """(dotted field, saved value, running value) for every leaf where the two differ; below the
  top level, dicts with different keys differ as a whole."""
  saved, running = _canonical(saved), _canonical(running)
  if isinstance(saved, dict) and isinstance(running, dict) and (not prefix or set(saved) == set(running)):
    out = []
    for key in sorted(set(saved) | set(running)):
      name = f"{prefix}.{key}" if prefix else key
      if key not in saved or key not in running:
        out.append((name, saved.get(key, "<absent>"), running.get(key, "<absent>")))
      else:
        out += differences(saved[key], running[key], name)
    return out
  return [] if saved == running else [(prefix, saved, running)]


def check(saved: dict[str, Any], running: dict[str, Any], where: str) -> None:
  """Refuses a checkpoint fitted for something else than the running configuration."""
  diff = differences(saved, running)
  if diff:
    short = lambda v: r if len(r := repr(v)) <= 120 else r[:117] + "..."
    lines = "; ".join(f"{name}: checkpoint has {short(a)}, this run has {short(b)}" for name, a, b in diff[:8])
    more = f" (and {len(diff) - 8} more)" if len(diff) > 8 else ""
    raise ValueError(f"checkpoint {where} does not fit this run: {lines}{more}")
