"""Keypoint figures: PCK against alpha per class (the paper's Fig. 2b) and predictions on crops."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def pck_curves(alphas: np.ndarray, curves: dict[str, np.ndarray], mean: np.ndarray,
               baseline: np.ndarray) -> plt.Figure:
  """PCK vs alpha for every class, with the mean over classes and the mean-shape baseline."""
  fig, ax = plt.subplots(figsize=(5.5, 4))
  cmap = plt.get_cmap("tab20")
  for i, (cls, c) in enumerate(sorted(curves.items())):
    ax.plot(alphas, c, color=cmap(i % 20), lw=1, label=cls)
  ax.plot(alphas, mean, "k", lw=2, label="mean")
  ax.plot(alphas, baseline, "k--", lw=1, label="mean shape")
  ax.set(xlabel="alpha", ylabel="PCK", xlim=(0, 1), ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=6, ncol=2, loc="lower right")
  return fig


def predictions(crops: Sequence[np.ndarray], truth: np.ndarray, pred: np.ndarray, visible: np.ndarray,
                titles: Sequence[str]) -> plt.Figure:
  """Crops with true (green) and predicted (red) visible keypoints, given in crop pixels."""
  n = max(1, len(crops))
  fig, axes = plt.subplots(1, n, figsize=(1.6 * n, 1.9), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for ax, crop, t, p, v, title in zip(axes.flat, crops, truth, pred, visible, titles):
    ax.imshow(crop)
    ax.scatter(*t[v].T, c="g", s=10)
    ax.scatter(*p[v].T, c="r", s=10, marker="x")
    for a, b in zip(t[v], p[v]):
      ax.plot([a[0], b[0]], [a[1], b[1]], "r-", lw=0.5)
    ax.set_title(title, fontsize=7)
  fig.tight_layout(pad=0.3)
  return fig
