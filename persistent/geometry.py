"""Boxes, crops and the crop coordinate frame shared by every task, and landmark layouts.

One convention everywhere: points are 0-based pixel-centre coordinates (N.., L, 2), the centre of
pixel (row i, column j) at (j, i), as every annotation source delivers them; boxes are
(x0, y0, x1, y1) in the pixel-corner convention of `images.crop_resize` (pixel (i, j) covers
[j, j+1) x [i, i+1), so a point p lies at p + 0.5 in box coordinates). Crop-frame coordinates are
in units of the box: (0, 0) its top-left corner, (1, 1) its bottom-right one, so targets do not
depend on the crop's pixel size.
"""
from __future__ import annotations

import numpy as np

# 300-W / iBUG 68-point layout (0-based). Image left/right (the subject's right is image left).
# Six look-back groups as in the paper ("chin, each eye with its eyebrow, mouth and nose", six
# sets): the jaw contour is split at the chin into two halves so that its boxes stay tight.
GROUPS_68 = {
    "jaw_left": list(range(0, 9)),
    "jaw_right": list(range(9, 17)),
    "brow_eye_left": list(range(17, 22)) + list(range(36, 42)),
    "brow_eye_right": list(range(22, 27)) + list(range(42, 48)),
    "nose": list(range(27, 36)),
    "mouth": list(range(48, 68)),
}
# Helen's 194-point layout (0-based): contour 0-40, nose 41-57, outer lips 58-85, inner lips
# 86-113, eyes 114-133 and 134-153, brows 154-173 and 174-193. Eye/brow pairs follow the order
# of the annotation (first eye with first brow).
GROUPS_194 = {
    "jaw_left": list(range(0, 21)),
    "jaw_right": list(range(21, 41)),
    "brow_eye_1": list(range(114, 134)) + list(range(154, 174)),
    "brow_eye_2": list(range(134, 154)) + list(range(174, 194)),
    "nose": list(range(41, 58)),
    "mouth": list(range(58, 114)),
}


def default_groups(num_points: int) -> dict[str, list[int]]:
  if num_points == 68:
    return {k: list(v) for k, v in GROUPS_68.items()}
  if num_points == 194:
    return {k: list(v) for k, v in GROUPS_194.items()}
  raise ValueError(f"no default look-back groups for {num_points} landmarks; set "
                   "config.landmarks.groups to 'name:a-b,c;name2:...'")


def parse_groups(spec: str, num_points: int) -> dict[str, list[int]]:
  """'' -> the default groups; else 'jaw:0-16;eyes:36-47;rest:17-35,48-67' (0-based, inclusive).

  The groups must partition range(num_points): every point in exactly one group.
  """
  if not spec:
    groups = default_groups(num_points)
  else:
    groups = {}
    for part in spec.split(";"):
      name, colon, ranges = part.partition(":")
      if not colon or not name.strip() or not ranges.strip():
        raise ValueError(f"bad look-back group {part!r} in {spec!r}; expected 'name:a-b,c'")
      idx = []
      for r in ranges.split(","):
        lo, dash, hi = r.strip().partition("-")
        try:
          idx += list(range(int(lo), int(hi) + 1)) if dash else [int(lo)]
        except ValueError:
          raise ValueError(f"bad index range {r!r} in look-back groups {spec!r}") from None
      groups[name.strip()] = idx
  every = sorted(i for g in groups.values() for i in g)
  if every != list(range(num_points)):
    raise ValueError(f"look-back groups must partition the {num_points} landmarks exactly once; "
                     f"got {len(every)} indices, missing {sorted(set(range(num_points)) - set(every))[:10]}, "
                     f"repeated {sorted({i for i in every if every.count(i) > 1})[:10]}")
  return groups


def square_box(lo: np.ndarray, hi: np.ndarray, pad: np.ndarray | float = 0.0) -> np.ndarray:
  """Square corner-convention boxes (N, 4) around point extents lo, hi (N, 2) of 0-based points.

  The side is the larger extent plus 2 * pad (pad in pixels, per box or scalar), centred on the
  extent's centre.
  """
  lo, hi = np.atleast_2d(lo).astype(np.float64), np.atleast_2d(hi).astype(np.float64)
  centre = (lo + hi) / 2 + 0.5
  half = (hi - lo).max(1) / 2 + np.asarray(pad, np.float64)
  half = np.maximum(half, 0.5)
  return np.stack([centre[:, 0] - half, centre[:, 1] - half, centre[:, 0] + half, centre[:, 1] + half], 1)


def face_boxes(landmarks: np.ndarray, margin: float) -> np.ndarray:
  """The ground-truth face box protocol: the landmarks' bounding box made square (its longer
  side) and enlarged by `margin` (a fraction of that side) on every side. (N, L, 2) -> (N, 4)."""
  lo, hi = landmarks.min(1), landmarks.max(1)
  side = (hi - lo).max(1)
  return square_box(lo, hi, margin * side)


def jitter_boxes(boxes: np.ndarray, rng: np.random.Generator, shift: float, scale: float) -> np.ndarray:
  """Random square boxes: centre moved by U(-shift, shift) * side per axis, side multiplied by
  exp(U(-log(1 + scale), log(1 + scale)))."""
  boxes = np.asarray(boxes, np.float64)
  side = boxes[:, 2] - boxes[:, 0]
  centre = (boxes[:, :2] + boxes[:, 2:]) / 2 + rng.uniform(-shift, shift, (len(boxes), 2)) * side[:, None]
  side = side * np.exp(rng.uniform(-np.log1p(scale), np.log1p(scale), len(boxes)))
  return np.concatenate([centre - side[:, None] / 2, centre + side[:, None] / 2], 1)


def to_crop(points: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """0-based image points (N, L, 2) -> crop-frame coordinates of boxes (N, 4)."""
  boxes = np.asarray(boxes, np.float64)
  side = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
  return (np.asarray(points, np.float64) + 0.5 - boxes[:, None, :2]) / side


def from_crop(coords: np.ndarray, boxes: np.ndarray) -> np.ndarray:
  """Inverse of `to_crop`: crop-frame coordinates (N, L, 2) -> 0-based image points."""
  boxes = np.asarray(boxes, np.float64)
  side = (boxes[:, 2:] - boxes[:, :2])[:, None, :]
  return np.asarray(coords, np.float64) * side + boxes[:, None, :2] - 0.5


def context_boxes(boxes: np.ndarray, context: float) -> np.ndarray:
  """Boxes (N, 4) widened by `context` times their width and height on every side."""
  boxes = np.asarray(boxes, np.float64).reshape(-1, 4)
  pad = (boxes[:, 2:] - boxes[:, :2]) * context
  return np.concatenate([boxes[:, :2] - pad, boxes[:, 2:] + pad], 1)


def group_boxes(pred: np.ndarray, pad: np.ndarray | float) -> np.ndarray:
  """Look-back boxes (N, 4) around predicted group points (N, Lg, 2), padded by pad pixels."""
  return square_box(pred.min(1), pred.max(1), pad)
