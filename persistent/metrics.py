"""Every score the tasks report, in one place.

Landmarks: inter-ocular normalised mean error (NME) per face, method and group, CED curves and
their area. NME of one face = mean over its landmarks of ||prediction - truth|| / inter-ocular
distance; a method's NME is the mean over faces (Table 1 of the paper). The inter-ocular distance
is the distance between the outer eye corners of the ground truth: points 37 and 46 in the 1-based
68-point numbering (36 and 45 here). For Helen's 194 points, whose eye contours (114-133,
134-153) have no documented corner index, each eye's outer corner is its contour point farthest
from the other eye's centroid.

Keypoints: PCK, the percentage of correct keypoints (Yang & Ramanan): a keypoint is correct when
its predicted position lies within alpha * max(box width, box height) of the truth; only visible
keypoints are scored.

Segmentation: per-class average precision of pixel scores and confusion-based IoU; pixels
labelled VOID (255) are ignored everywhere. `Confusion` accumulates a C x C matrix image by image
(rows: ground truth, columns: prediction), so full-resolution scoring costs O(C^2) memory.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from persistent.data.segmentation import VOID


def mean_absolute_error(pred: np.ndarray, truth: np.ndarray) -> float:
  """Mean |pred - truth| over every value (the paper's RGB reconstruction error)."""
  pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
  if pred.shape != truth.shape:
    raise ValueError(f"predictions {pred.shape} and ground truth {truth.shape} differ in shape")
  return float(np.abs(pred - truth).mean())


def pearson(a: np.ndarray, b: np.ndarray) -> float:
  """Pearson correlation of two vectors; 0 where either is constant."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  a, b = a - a.mean(), b - b.mean()
  den = np.sqrt((a * a).sum() * (b * b).sum())
  return float((a * b).sum() / den) if den > 0 else 0.0


def roc_auc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve: the probability that a random positive outscores a random
  negative (ties count one half), from the rank-sum statistic. NaN without both classes."""
  scores, positive = np.asarray(scores, np.float64).ravel(), np.asarray(positive, bool).ravel()
  n_pos, n_neg = int(positive.sum()), int((~positive).sum())
  if not n_pos or not n_neg:
    return float("nan")
  order = np.argsort(scores, kind="stable")
  ranks = np.empty(scores.size)
  s = scores[order]
  starts = np.r_[0, np.flatnonzero(np.diff(s)) + 1]
  ends = np.r_[starts[1:], s.size]
  ranks[order] = np.repeat((starts + ends + 1) / 2.0, ends - starts)  # average ranks of ties
  return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


# ----------------------------------------------------------------------------------------------
# Landmarks

OUTER_EYE_CORNERS_68 = (36, 45)
EYES_194 = (range(114, 134), range(134, 154))


def interocular(truth: np.ndarray) -> np.ndarray:
  """Outer-eye-corner distance (N,) of ground-truth landmarks (N, L, 2)."""
  truth = np.asarray(truth, np.float64)
  n_points = truth.shape[1]
  if n_points == 68:
    a, b = truth[:, OUTER_EYE_CORNERS_68[0]], truth[:, OUTER_EYE_CORNERS_68[1]]
  elif n_points == 194:
    e1, e2 = truth[:, list(EYES_194[0])], truth[:, list(EYES_194[1])]
    def outer(eye, other):
      far = np.linalg.norm(eye - other.mean(1, keepdims=True), axis=-1).argmax(1)
      return eye[np.arange(len(eye)), far]
    a, b = outer(e1, e2), outer(e2, e1)
  else:
    raise ValueError(f"no inter-ocular definition for {n_points} landmarks (68 or 194)")
  d = np.linalg.norm(a - b, axis=-1)
  if not (d > 0).all():
    raise ValueError(f"zero inter-ocular distance for faces {np.flatnonzero(~(d > 0)).tolist()}")
  return d


def point_errors(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  """Per-point errors (N, L) normalised by each face's inter-ocular distance."""
  pred, truth = np.asarray(pred, np.float64), np.asarray(truth, np.float64)
  if pred.shape != truth.shape:
    raise ValueError(f"predictions {pred.shape} and ground truth {truth.shape} differ in shape")
  return np.linalg.norm(pred - truth, axis=-1) / interocular(truth)[:, None]


def nme_per_face(pred: np.ndarray, truth: np.ndarray) -> np.ndarray:
  return point_errors(pred, truth).mean(1)


def nme(pred: np.ndarray, truth: np.ndarray) -> float:
  return float(nme_per_face(pred, truth).mean())


def nme_per_group(pred: np.ndarray, truth: np.ndarray, groups: dict[str, list[int]]) -> dict[str, float]:
  err = point_errors(pred, truth)
  return {name: float(err[:, idx].mean()) for name, idx in groups.items()}


def ced(per_face: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
  """Cumulative error distribution: the fraction of faces with NME <= t for each threshold."""
  per_face = np.sort(np.asarray(per_face))
  return np.searchsorted(per_face, thresholds, side="right") / len(per_face)


def auc(per_face: np.ndarray, limit: float = 0.1, steps: int = 1001) -> float:
  """Area under the CED curve up to `limit`, divided by `limit` (1 = every face perfect)."""
  t = np.linspace(0, limit, steps)
  c = ced(per_face, t)
  return float(np.sum((c[1:] + c[:-1]) / 2 * np.diff(t)) / limit)


# ----------------------------------------------------------------------------------------------
# Keypoints

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


# ----------------------------------------------------------------------------------------------
# Segmentation



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


def _interp_matrix(out: int, inp: int) -> np.ndarray:
  """(out, inp) bilinear weights with pixel centres aligned (half-pixel convention)."""
  pos = np.clip((np.arange(out) + 0.5) * inp / out - 0.5, 0, inp - 1)
  lo = np.floor(pos).astype(np.int64)
  hi = np.minimum(lo + 1, inp - 1)
  t = (pos - lo).astype(np.float32)
  m = np.zeros((out, inp), np.float32)
  np.add.at(m, (np.arange(out), lo), 1 - t)
  np.add.at(m, (np.arange(out), hi), t)
  return m


def upsample(scores: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """Bilinear resize of (S1, S2, C) cell scores to (H, W, C)."""
  ry, rx = _interp_matrix(shape[0], scores.shape[0]), _interp_matrix(shape[1], scores.shape[1])
  return np.matmul(rx, np.tensordot(ry, scores.astype(np.float32), axes=(1, 0)))


def nearest_cells(cells: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
  """A (S, S) map of cell values blown up to (H, W): pixel (i, j) takes cell (i*S//H, j*S//W)."""
  s = cells.shape[0]
  return cells[((np.arange(shape[0]) * s) // shape[0])][:, ((np.arange(shape[1]) * s) // shape[1])]


class SegmentationScores:
  """Scores of one predictor over many images: a full-resolution confusion matrix and a pixel
  sample (every `ap_stride`-th pixel in each direction) of class scores for per-class AP.
  `score` gives one image's contribution; `add` merges contributions (from any process)."""

  def __init__(self, num_classes: int, ap_stride: int = 0):
    self.confusion = Confusion(num_classes)
    self.stride = ap_stride
    self.scores: list[np.ndarray] = []
    self.labels: list[np.ndarray] = []

  def score(self, label: np.ndarray, cell_scores: np.ndarray | None = None, pred: np.ndarray | None = None
            ) -> tuple[np.ndarray, dict[str, Any]]:
    """(the label map predicted, the image's contribution) from (S, S, C) cell scores, upsampled
    bilinearly and arg-maxed, or from a given label map `pred`."""
    part: dict[str, Any] = {}
    if cell_scores is not None:
      full = upsample(cell_scores, label.shape)
      pred = full.argmax(-1)
      if self.stride:
        s = self.stride
        part["scores"] = full[s // 2::s, s // 2::s].reshape(-1, full.shape[-1]).astype(np.float32)
        part["labels"] = label[s // 2::s, s // 2::s].ravel()
    c = Confusion(self.confusion.num_classes)
    c.add(pred, label)
    part["confusion"] = c.matrix
    return pred, part

  def add(self, part: dict[str, Any]) -> None:
    self.confusion.matrix += part["confusion"]
    if "scores" in part:
      self.scores.append(part["scores"])
      self.labels.append(part["labels"])

  def summary(self, names: Sequence[str]) -> dict[str, Any]:
    named = lambda v: {n: (None if not np.isfinite(x) else float(x)) for n, x in zip(names, v)}
    iou_ = self.confusion.iou()
    out = {"miou": nanmean(iou_), "pixel_acc": self.confusion.pixel_accuracy(), "iou_per_class": named(iou_)}
    if self.scores:
      ap = class_average_precisions(np.concatenate(self.scores), np.concatenate(self.labels))
      out.update(mean_ap=nanmean(ap), ap_per_class=named(ap))
    return out
