"""Runs one configured experiment in a work directory: logs, config, task, metrics."""
from __future__ import annotations

import contextlib
import copy
import json
import logging
import os
import time
from typing import Any

import jax
import ml_collections

from persistent import distributed, figures, locking, probe, sweep, tasks
from persistent.figures import depth as depth_figures


def _write_json_atomic(path: str, obj: Any) -> None:
  """The whole file or none (a full disk removes the partial file and names `path`)."""
  tmp = f"{path}.tmp"
  try:
    with open(tmp, "w") as f:
      json.dump(obj, f, indent=2, sort_keys=True)
    os.replace(tmp, path)
  except OSError as e:
    with contextlib.suppress(OSError):
      os.remove(tmp)
    raise OSError(e.errno, f"cannot write {os.path.basename(path)} ({e.strerror or e})", path) from e


def requested_layers(config: ml_collections.ConfigDict, backbone=None) -> list[str]:
  """backbone.layer as a list: 'fc6', 'conv5,fc6,fc7' or 'all' (every tap, network order)."""
  spec = config.backbone.layer
  if spec == "all":
    return list((backbone or probe.backbone_from_config(config)).layers)
  layers = [l.strip() for l in spec.split(",") if l.strip()]
  if not layers or len(set(layers)) != len(layers):
    raise ValueError(f"backbone.layer must name distinct layers ('a,b,c' or 'all'), got {spec!r}")
  return layers


def _sweep(config: ml_collections.ConfigDict, workdir: str, layers: list[str], backbone) -> dict[str, Any]:
  """The task once per layer (in lockstep, passes shared): {layer: metrics}; each layer's
  figures and checkpoint in workdir/layers/LAYER."""
  jobs = []
  for layer in layers:
    c = copy.deepcopy(config)
    c.backbone.layer = layer
    c.control = ""
    if config.restore:
      c.restore = os.path.join(config.restore, "layers", layer)
    where = os.path.join(workdir, "layers", layer)
    os.makedirs(where, exist_ok=True)
    jobs.append(lambda c=c, where=where: tasks.get(config.task)(c, where))
  return dict(zip(layers, sweep.Sweep(backbone).run(jobs)))


def run_layers(config: ml_collections.ConfigDict, workdir: str, layers: list[str]) -> dict[str, Any]:
  """Several layers (and the random-weights control): the first layer's metrics, plus
  `layers: {layer: metrics}` (and `control: {random: {layer: metrics}}`), a table in the log and
  depth.png."""
  backbone = probe.backbone_from_config(config)
  layers = requested_layers(config, backbone) if config.backbone.layer == "all" else layers
  per_layer = _sweep(config, workdir, layers, backbone)
  # layer_order: metrics.json is written with sorted keys, so network order is kept as a list
  metrics = {**per_layer[layers[0]], "layers": per_layer, "layer_order": layers}
  runs = {f"{config.backbone.name} ({config.backbone.weights or 'default weights'})": per_layer}
  if config.get("control"):
    if config.control != "random":
      raise ValueError(f"config.control must be '' or 'random', got {config.control!r}")
    control = copy.deepcopy(config)
    control.backbone.weights, control.restore = "random", ""
    random_net = probe.backbone_from_config(control)
    metrics["control"] = {"random": _sweep(control, os.path.join(workdir, "control_random"), layers, random_net)}
    runs[f"{config.backbone.name} (random weights, seed {config.seed})"] = metrics["control"]["random"]
  summary = tasks.summary(config.task)
  logging.info("%s by layer:\n%s", summary.label, depth_table(layers, runs, summary))
  curves = {f"{run}{'' if not extra else ', ' + extra}": [tasks.lookup(m, path) for m in per.values()]
            for run, per in runs.items() for extra, path in [("", summary.main), *summary.curves.items()]}
  baselines = {label: tasks.lookup(metrics, path) for label, path in summary.baselines.items()}
  figures.save(depth_figures.depth_curves(layers, curves, summary.label, baselines, summary.lower_is_better),
               os.path.join(workdir, "depth.png"))
  return metrics


def depth_table(layers: list[str], runs: dict[str, dict[str, Any]], summary: tasks.Summary) -> str:
  """A Markdown table of the main metric: a row per layer, a column per run."""
  fmt = lambda v: "" if v is None else f"{v:.4g}"
  lines = ["| layer | " + " | ".join(runs) + " |", "| --- |" + " --- |" * len(runs)]
  for layer in layers:
    lines.append(f"| {layer} | " + " | ".join(fmt(tasks.lookup(per.get(layer, {}), summary.main))
                                             for per in runs.values()) + " |")
  return "\n".join(lines)


def run(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
  """Runs config.task; metrics.json appears only when the task completed.

  With several processes, process 0 writes to workdir and process i > 0 to workdir/process_i,
  so that hosts sharing a file system never write the same files. A workdir is locked while a run
  uses it (`workdir/.lock`): a second run there fails at once with `locking.Busy`.
  """
  if config.ridge.dtype == "float64":
    jax.config.update("jax_enable_x64", True)
  distributed.initialize(config)  # several hosts: before anything touches a device
  if jax.process_index() > 0:
    workdir = os.path.join(workdir, f"process_{jax.process_index()}")
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise OSError(e.errno, f"cannot create the workdir ({e.strerror})", workdir) from e
  with locking.workdir(workdir):  # a second run in this workdir fails at once while this one lives
    return _run_in(config, workdir)


def _run_in(config: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
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
    t0 = time.time()
    layers = requested_layers(config)
    if len(layers) == 1 and not config.get("control"):
      metrics = tasks.get(config.task)(config, workdir)
    else:
      metrics = run_layers(config, workdir, layers)
    metrics["seconds"] = round(time.time() - t0, 2)
    _write_json_atomic(metrics_path, metrics)
    logging.info("metrics: %s", json.dumps(metrics, sort_keys=True))
    return metrics
  finally:
    root.removeHandler(handler)
    handler.close()
