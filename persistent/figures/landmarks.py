"""Landmark figures: CED curves, per-group errors (the paper's Fig. 2a), look-back triplets (Fig. 3)."""
from __future__ import annotations

from typing import Sequence

import matplotlib.pyplot as plt
import numpy as np

from persistent import geometry, metrics
from persistent.data import images as image_lib

LABELS = {"dataset_bias": "dataset bias", "rgb_ridge": "RGB + ridge", "convnet_ridge": "ConvNet + ridge",
          "lookback": "ConvNet + look-back"}


def ced(per_face: dict[str, np.ndarray], limit: float) -> plt.Figure:
  """Cumulative error distribution of every method, with its mean NME in the legend."""
  t = np.linspace(0, limit, 201)
  fig, ax = plt.subplots(figsize=(4.5, 3.5))
  for m, v in per_face.items():
    ax.plot(t, metrics.ced(v, t), label=f"{LABELS.get(m, m)} ({v.mean():.3f})")
  ax.set(xlabel="NME (inter-ocular)", ylabel="fraction of test faces", ylim=(0, 1))
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7, loc="lower right")
  return fig


def errors_per_group(per_group: dict[str, dict[str, float]]) -> plt.Figure:
  """Bars of each method's NME per landmark group (Fig. 2a)."""
  names = list(next(iter(per_group.values())))
  fig, ax = plt.subplots(figsize=(1.1 * len(names) + 2, 3.2))
  width = 0.8 / len(per_group)
  for j, (m, errs) in enumerate(per_group.items()):
    ax.bar(np.arange(len(names)) + (j - (len(per_group) - 1) / 2) * width, [errs[g] for g in names],
           width, label=LABELS.get(m, m))
  ax.set_xticks(np.arange(len(names)), names, rotation=20, fontsize=7)
  ax.set_ylabel("NME")
  ax.legend(fontsize=7)
  return fig


def lookback_triplets(images: Sequence[np.ndarray], face_boxes: np.ndarray, truth: np.ndarray,
                      first: np.ndarray, final: np.ndarray, group_boxes: dict[str, np.ndarray] | None,
                      cols: int = 2, px: int = 160) -> plt.Figure:
  """Fig. 3: per face, ground truth | ConvNet + ridge with the look-back boxes | look-back."""
  k = len(images)
  rows = max(1, int(np.ceil(k / cols)))
  fig, axes = plt.subplots(rows, 3 * cols, figsize=(3 * cols * 1.6, rows * 1.7), squeeze=False)
  for ax in axes.flat:
    ax.axis("off")
  side = face_boxes[:, 2] - face_boxes[:, 0]
  view = face_boxes + np.stack([-0.1 * side, -0.1 * side, 0.1 * side, 0.1 * side], 1)  # some context
  for i in range(k):
    crop = image_lib.crop_resize(images[i], view[i], (px, px))
    to_px = lambda p: geometry.to_crop(p[None], view[i:i + 1])[0] * px - 0.5
    r, c = divmod(i, cols)
    panels = [(truth[i], "ground truth", "lime", None), (first[i], "ConvNet + ridge", "yellow", group_boxes),
              (final[i], "look-back", "cyan", None)]
    for j, (pts, title, colour, boxes) in enumerate(panels):
      ax = axes[r, 3 * c + j]
      ax.imshow(crop)
      q = to_px(pts)
      ax.scatter(q[:, 0], q[:, 1], s=2, c=colour, linewidths=0)
      for b in (boxes or {}).values():
        corners = to_px(np.array([[b[i, 0] - 0.5, b[i, 1] - 0.5], [b[i, 2] - 0.5, b[i, 3] - 0.5]]))
        ax.add_patch(plt.Rectangle(corners[0], *(corners[1] - corners[0]), fill=False, lw=0.6, ec="red"))
      ax.set_xlim(0, px)
      ax.set_ylim(px, 0)
      if r == 0:
        ax.set_title(title, fontsize=7)
  fig.tight_layout(pad=0.3)
  return fig
