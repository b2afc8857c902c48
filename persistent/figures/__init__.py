"""Paper-style figures (matplotlib, Agg) saved as PNG: `save` and image pairs (Fig. 4) here, one
module per task beside it (landmarks, keypoints, segmentation, directions)."""
from __future__ import annotations

import os
from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def save(fig: "plt.Figure", path: str) -> str:
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  fig.savefig(path, dpi=150, bbox_inches="tight")
  plt.close(fig)
  return path


def image_pairs(left: Sequence[np.ndarray], right: Sequence[np.ndarray], titles=("original", "reconstruction"),
                cols: int = 4) -> "plt.Figure":
  """Pairs of images side by side (as the paper's Fig. 4): left[i] | right[i]."""
  n = len(left)
  rows = int(np.ceil(n / cols))
  fig, axes = plt.subplots(rows, 2 * cols, figsize=(2 * cols * 1.3, rows * 1.45), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  for i in range(n):
    r, c = divmod(i, cols)
    for j, (img, title) in enumerate(zip((left[i], right[i]), titles)):
      ax = axes[r, 2 * c + j]
      ax.imshow(np.clip(img, 0, 1), interpolation="nearest")
      if r == 0:
        ax.set_title(title, fontsize=7)
  fig.tight_layout(pad=0.3)
  return fig
