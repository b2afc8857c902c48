"""Semantic-direction figures: an image decoded along each direction (the paper's Fig. 6)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np


def strips(rows: Sequence[tuple[str, np.ndarray, Sequence[np.ndarray]]], column_titles: Sequence[str]
           ) -> plt.Figure:
  """One row per (label, original image, images decoded along the sweep), values in [0, 1]."""
  ncols = 1 + len(column_titles)
  fig, axes = plt.subplots(len(rows), ncols, figsize=(ncols * 1.1, len(rows) * 1.2), squeeze=False)
  for r, (label, original, strip) in enumerate(rows):
    for c, img in enumerate([original, *strip]):
      ax = axes[r, c]
      ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
      ax.set_xticks([]), ax.set_yticks([])
      if r == 0:
        ax.set_title("input" if c == 0 else column_titles[c - 1], fontsize=6)
    axes[r, 0].set_ylabel(label, fontsize=6)
  fig.tight_layout(pad=0.2)
  return fig
