"""Puts several runs of one task side by side: their depth curves on one figure and a table.

    python -m persistent.tools.compare WORKDIR [WORKDIR ...] [--out compare.png] [--metric PATH]

Each WORKDIR is a finished run (metrics.json, config.json), usually of several layers
(`--config.backbone.layer=all`); its random-weights control (`--config.control=random`) is a run
of its own here. Runs of one backbone share the x axis of its layers; runs of different backbones
are drawn against relative depth (first layer 0, last 1). The table (Markdown, on stdout) has a
row per layer and a column per run; the metric defaults to the task's main one.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any


def load(workdir: str) -> tuple[dict[str, Any], dict[str, Any]]:
  """(metrics, config) of a finished run, with errors naming what is missing."""
  paths = [os.path.join(workdir, name) for name in ("metrics.json", "config.json")]
  for p in paths:
    if not os.path.exists(p):
      raise FileNotFoundError(f"{p} not found: {workdir} is not a finished run")
  with open(paths[0]) as f, open(paths[1]) as g:
    return json.load(f), json.load(g)


def runs(workdirs: list[str]) -> tuple[str, dict[str, dict[str, dict[str, Any]]], dict[str, Any]]:
  """(task, {run label: {layer: metrics}}, metrics of the first run) of the workdirs."""
  out: dict[str, dict[str, dict[str, Any]]] = {}
  task, first = None, None
  for w in workdirs:
    metrics, config = load(w)
    if task not in (None, config["task"]):
      raise ValueError(f"{w} is a {config['task']!r} run, the others {task!r}: compare runs of one task")
    task, first = config["task"], first or metrics
    b = config["backbone"]
    label = f"{b['name']} ({b['weights'] or 'default weights'})"
    label = label if label not in out else f"{label} [{w}]"
    order = metrics.get("layer_order") or list(metrics.get("layers", {}))
    out[label] = {l: metrics["layers"][l] for l in order} if "layers" in metrics else {b["layer"]: metrics}
    for name, per in metrics.get("control", {}).items():
      out[f"{b['name']} ({name} weights, seed {config['seed']})"] = {l: per[l] for l in order if l in per}
  return task, out, first


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m persistent.tools.compare", description=__doc__.split("\n\n")[0])
  parser.add_argument("workdirs", nargs="+")
  parser.add_argument("--out", default="compare.png", help="the figure (PNG)")
  parser.add_argument("--metric", default="", help="a '/'-separated metric path (default: the task's main one)")
  args = parser.parse_args(argv)
  from persistent import experiment, figures, tasks
  from persistent.figures import depth
  task, per_run, first = runs(args.workdirs)
  summary = tasks.summary(task)
  if args.metric:
    summary = tasks.Summary(args.metric, args.metric, summary.lower_is_better)
  layer_lists = [list(p) for p in per_run.values()]
  shared = all(l == layer_lists[0] for l in layer_lists)
  order = list(dict.fromkeys(l for layers in layer_lists for l in layers))
  print(experiment.depth_table(order, per_run, summary))
  curves = {run: [tasks.lookup(m, summary.main) for m in per.values()] for run, per in per_run.items()}
  baselines = {label: tasks.lookup(first, path) for label, path in summary.baselines.items()}
  figures.save(depth.depth_curves(order if shared else None, curves, summary.label, baselines,
                                  summary.lower_is_better), args.out)
  print(f"wrote {args.out}", file=sys.stderr)
  return 0


if __name__ == "__main__":
  sys.exit(main())
