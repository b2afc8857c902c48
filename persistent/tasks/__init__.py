"""Task registry: each task is `run(config, workdir) -> metrics dict`.

`SUMMARIES` names each task's main metric (a '/'-separated path into its metrics), whether lower is
better, and its baselines: what depth curves and run comparisons plot.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable

import ml_collections

from persistent.registry import Registry

TASKS: Registry[Callable[[ml_collections.ConfigDict, str], dict[str, Any]]] = Registry("task")
register = TASKS.register
get = TASKS.get


@dataclasses.dataclass(frozen=True)
class Summary:
  main: str  # path of the main metric in the metrics, e.g. 'nme/convnet_ridge'
  label: str
  lower_is_better: bool
  curves: dict[str, str] = dataclasses.field(default_factory=dict)  # more per-layer curves
  baselines: dict[str, str] = dataclasses.field(default_factory=dict)  # layer-independent lines


SUMMARIES = {
    "rgb": Summary("mae", "RGB MAE", True, baselines={"mean image": "mae_mean_image"}),
    "landmarks": Summary("nme/convnet_ridge", "landmark NME", True, curves={"look-back": "nme/lookback"},
                         baselines={"dataset bias": "nme/dataset_bias", "RGB + ridge": "nme/rgb_ridge"}),
    "segmentation": Summary("miou", "segmentation mIoU", False, curves={"mean AP": "mean_ap"},
                            baselines={"prior (mIoU)": "miou_prior"}),
    "keypoints": Summary("pck@0.1", "PCK@0.1", False, baselines={"mean shape": "pck@0.1_mean_shape"}),
    "directions": Summary("mean_direction_cv_r2", "direction CV r^2", False),
}


def summary(task: str) -> Summary:
  """The task's summary; unknown tasks are summarised by their 'mae' or first number."""
  return SUMMARIES.get(task, Summary("mae", "MAE", True))


def lookup(metrics: dict[str, Any], path: str) -> float | None:
  """The number at a path of a metrics dict ('nme/lookback'), None where absent."""
  node: Any = metrics
  for key in path.split("/"):
    if not isinstance(node, dict) or key not in node:
      return None
    node = node[key]
  return float(node) if isinstance(node, (int, float)) and node is not None else None

# Importing the modules registers their tasks.
from persistent.tasks import rgb  # noqa: E402,F401
from persistent.tasks import keypoints  # noqa: E402,F401
from persistent.tasks import segmentation  # noqa: E402,F401
from persistent.tasks import landmarks  # noqa: E402,F401
from persistent.tasks import directions  # noqa: E402,F401
