"""Landmark error measures: inter-ocular normalised mean error (NME), per group, and CED curves.

NME of one face = mean over its landmarks of ||prediction - truth|| / inter-ocular distance;
a method's NME is the mean over faces (Table 1 of the paper). The inter-ocular distance is the
distance between the outer eye corners of the ground truth: points 37 and 46 in the 1-based
68-point numbering (36 and 45 here). For Helen's 194 points, whose eye contours (114-133,
134-153) have no documented corner index, each eye's outer corner is its contour point farthest
from the other eye's centroid.
"""
from __future__ import annotations

import numpy as np

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
