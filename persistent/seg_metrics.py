"""Segmentation scores: per-class average precision of pixel scores, confusion-based IoU.

Pixels labelled VOID (255) are ignored everywhere. `Confusion` accumulates a C x C matrix
image by image (rows: ground truth, columns: prediction), so full-resolution scoring of any
number of images costs O(C^2) memory.
"""
from __future__ import annotations

import numpy as np

VOID = 255


def average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
  """AP of ranking by `scores` (higher = more confident) for the boolean `positive`.

  The area under the precision-recall step curve, sum_t (R_t - R_{t-1}) P_t over the distinct
  score thresholds t (tied scores enter together), as scikit-learn's average_precision_score.
  NaN when there is no positive.
  """
  scores = np.asarray(scores, np.float64).ravel()
  positive = np.asarray(positive, bool).ravel()
  if scores.shape != positive.shape:
    raise ValueError(f"scores {scores.shape} and labels {positive.shape} differ in size")
  num_pos = int(positive.sum())
  if num_pos == 0:
    return float("nan")
  order = np.argsort(-scores, kind="stable")
  s, p = scores[order], positive[order]
  last = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]  # end of each run of equal scores
  tp = np.cumsum(p)[last]
  precision = tp / (last + 1)
  recall = tp / num_pos
  return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def class_average_precisions(scores: np.ndarray, labels: np.ndarray) -> np.ndarray:
  """AP per class (C,) of pixel scores (n, C) against labels (n,); VOID pixels are dropped."""
  scores = np.asarray(scores)
  labels = np.asarray(labels).ravel()
  keep = labels != VOID
  scores, labels = scores.reshape(-1, scores.shape[-1])[keep], labels[keep]
  return np.array([average_precision(scores[:, c], labels == c) for c in range(scores.shape[1])])


class Confusion:
  """Streams (prediction, ground truth) label maps into a C x C count matrix."""

  def __init__(self, num_classes: int):
    self.num_classes = num_classes
    self.matrix = np.zeros((num_classes, num_classes), np.int64)

  def add(self, pred: np.ndarray, truth: np.ndarray) -> None:
    pred, truth = np.asarray(pred).ravel(), np.asarray(truth).ravel()
    if pred.shape != truth.shape:
      raise ValueError(f"prediction ({pred.size} pixels) and ground truth ({truth.size}) differ in size")
    keep = truth != VOID
    pred, truth = pred[keep].astype(np.int64), truth[keep].astype(np.int64)
    c = self.num_classes
    if truth.size and (truth.max() >= c or pred.min() < 0 or pred.max() >= c):
      raise ValueError(f"labels outside 0..{c - 1}")
    self.matrix += np.bincount(truth * c + pred, minlength=c * c).reshape(c, c)

  def iou(self) -> np.ndarray:
    """Per-class intersection over union; NaN for a class absent from both maps."""
    return iou(self.matrix)

  def pixel_accuracy(self) -> float:
    return pixel_accuracy(self.matrix)


def iou(matrix: np.ndarray) -> np.ndarray:
  m = np.asarray(matrix, np.float64)
  inter = np.diag(m)
  union = m.sum(0) + m.sum(1) - inter
  with np.errstate(invalid="ignore", divide="ignore"):
    return np.where(union > 0, inter / np.where(union > 0, union, 1), np.nan)


def pixel_accuracy(matrix: np.ndarray) -> float:
  m = np.asarray(matrix)
  total = m.sum()
  return float(np.trace(m) / total) if total else float("nan")


def nanmean(values: np.ndarray) -> float:
  values = np.asarray(values, np.float64)
  return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
