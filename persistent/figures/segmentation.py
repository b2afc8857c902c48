"""Segmentation figures: per-class probability maps (the paper's Fig. 5) and label maps."""
from __future__ import annotations

from typing import Any, Sequence

import matplotlib.pyplot as plt
import numpy as np


def palette(num_classes: int) -> np.ndarray:
  """(256, 3) colours: classes from tab20, void (255) and unused ids black."""
  cmap = plt.get_cmap("tab20")
  colours = np.array([cmap(i % 20)[:3] for i in range(num_classes)])
  return np.concatenate([colours, np.zeros((256 - num_classes, 3))])


def probabilities(shown: Sequence[dict[str, Any]], names: Sequence[str]) -> plt.Figure:
  """Per example the image and every class's score map, on one intensity scale per example."""
  c = len(names)
  rows = max(1, len(shown))
  fig, axes = plt.subplots(rows, 1 + c, figsize=((1 + c) * 0.9, rows * 0.95), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for r, s in enumerate(shown):
    maps = np.clip(s["raw"], 0, None)
    vmax = max(float(maps.max()), 1e-6)
    axes[r, 0].imshow(s["image"])
    for k in range(c):
      axes[r, 1 + k].imshow(maps[..., k], cmap="gray", vmin=0, vmax=vmax)
      if r == 0:
        axes[r, 1 + k].set_title(names[k], fontsize=5)
  fig.tight_layout(pad=0.2)
  return fig


def labels(shown: Sequence[dict[str, Any]], num_classes: int,
           panels: Sequence[tuple[str, str]] = (("label", "ground truth"), ("pred", "ridge"),
                                                ("logistic", "logistic"), ("prior", "prior"))) -> plt.Figure:
  """Per example: the image, then each present label map of `panels` (key, title) in colour."""
  keys = [(k, t) for k, t in panels if shown and shown[0].get(k) is not None]
  rows = max(1, len(shown))
  fig, axes = plt.subplots(rows, 1 + len(keys), figsize=((1 + len(keys)) * 1.4, rows * 1.1), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  colours = palette(num_classes)
  for r, s in enumerate(shown):
    axes[r, 0].imshow(s["image"])
    for j, (k, title) in enumerate(keys):
      axes[r, 1 + j].imshow(colours[s[k]], interpolation="nearest")
      if r == 0:
        axes[r, 1 + j].set_title(title, fontsize=7)
  fig.tight_layout(pad=0.2)
  return fig
