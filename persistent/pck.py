"""PCK, the percentage of correct keypoints (Yang & Ramanan): a keypoint is correct when its
predicted position lies within alpha * max(box width, box height) of the truth; only visible
keypoints are scored.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np


def normalised_errors(pred: np.ndarray, truth: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Distances (N, K) between pred and truth (N, K, 2), divided by max(w, h) of boxes (N, 4)."""
  pred, truth, boxes = (np.asarray(a, np.float64) for a in (pred, truth, boxes))
  if pred.shape != truth.shape or pred.ndim != 3 or pred.shape[2] != 2:
    raise ValueError(f"predictions {pred.shape} and ground truth {truth.shape} must both be (N, K, 2)")
  if boxes.shape != (pred.shape[0], 4):
    raise ValueError(f"boxes must be ({pred.shape[0]}, 4), got {boxes.shape}")
  scale = np.maximum(boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1])
  if np.any(scale <= 0):
    raise ValueError("boxes must have positive size")
  return np.linalg.norm(pred - truth, axis=-1) / scale[:, None]


def pck(errors: np.ndarray, visible: np.ndarray, alpha: float) -> float:
  """Fraction of visible keypoints whose normalised error is at most alpha (NaN if none)."""
  visible = np.asarray(visible, bool)
  n = int(visible.sum())
  return float((np.asarray(errors)[visible] <= alpha).sum() / n) if n else float("nan")


def pck_curve(errors: np.ndarray, visible: np.ndarray, alphas: Sequence[float]) -> np.ndarray:
  """PCK at each alpha (L,)."""
  e = np.asarray(errors)[np.asarray(visible, bool)]
  if e.size == 0:
    return np.full(len(alphas), np.nan)
  return np.array([(e <= a).mean() for a in alphas])
