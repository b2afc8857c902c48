"""Where spatial information persists: a task's main metric against depth, one curve per run."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def depth_curves(layers: Sequence[str] | None, curves: dict[str, Sequence[float | None]], ylabel: str,
                 baselines: dict[str, float | None] | None = None, lower_is_better: bool = True) -> plt.Figure:
  """Curves {label: value per layer (None: absent)} over `layers` in network order, with
  layer-independent baselines as horizontal lines. `layers=None`: runs of different networks,
  each curve spread over relative depth 0 (its first layer) .. 1 (its last)."""
  width = max(4.5, 0.32 * len(layers) + 2.5) if layers else 5.5
  fig, ax = plt.subplots(figsize=(width, 3.6))
  for label, values in curves.items():
    y = np.array([np.nan if v is None else v for v in values], np.float64)
    x = np.arange(len(y)) if layers else (np.linspace(0, 1, len(y)) if len(y) > 1 else np.zeros(1))
    ax.plot(x, y, marker="o", ms=3, lw=1.5, label=label)
  styles = iter(["--", ":", "-.", (0, (5, 1))])
  for label, value in (baselines or {}).items():
    if value is not None and np.isfinite(value):
      ax.axhline(value, color="grey", lw=1, ls=next(styles, "--"), label=label)
  if layers:
    ax.set_xticks(np.arange(len(layers)), layers, rotation=60, ha="right", fontsize=7)
    ax.set_xlabel("layer (network order)")
  else:
    ax.set_xlabel("relative depth (first layer probed = 0, last = 1)")
  ax.set_ylabel(ylabel + (" (lower is better)" if lower_is_better else " (higher is better)"))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  return fig
