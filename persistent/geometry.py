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
# Helen's 194-point layout (0-based), verified on the 870 development faces (mean shape in an
# eye-centred frame, x to image right): jaw 0-40 from image left through the chin (20) to image
# right; nose 41-57 from the left of the bridge down round the nostrils to its right (49 the tip
# region); outer lips 58-71 (upper lip, left corner to right corner) and 72-85 (lower lip, right
# corner back to left); inner lips 86-113 a closed contour, left corner 86, upper lip to the right
# corner 100, lower lip back; eyes 114-133 (image RIGHT eye) and 134-153 (image left), each from
# its inner corner over the upper lid to the outer corner (124 / 144) and back under the lower lid;
# brows 154-173 (image right) and 174-193 (image left), each from its inner end. Eye/brow pairs
# follow the annotation's order (first eye with first brow, both on the image right).
GROUPS_194 = {
    "jaw_left": list(range(0, 21)),
    "jaw_right": list(range(21, 41)),
    "brow_eye_1": list(range(114, 134)) + list(range(154, 174)),
    "brow_eye_2": list(range(134, 154)) + list(range(174, 194)),
    "nose": list(range(41, 58)),
    "mouth": list(range(58, 114)),
}

# Anatomical parts for per-part errors (the paper's Fig. 2a): jaw, brows, eyes, nose, outer and
# inner mouth; both layouts.
PARTS_68 = {
    "jaw": list(range(0, 17)), "brows": list(range(17, 27)), "eyes": list(range(36, 48)),
    "nose": list(range(27, 36)), "mouth_outer": list(range(48, 60)), "mouth_inner": list(range(60, 68)),
}
PARTS_194 = {
    "jaw": list(range(0, 41)), "brows": list(range(154, 194)), "eyes": list(range(114, 154)),
    "nose": list(range(41, 58)), "mouth_outer": list(range(58, 86)), "mouth_inner": list(range(86, 114)),
}


def _mirror_68() -> np.ndarray:
  """Landmark j of a horizontally flipped face is landmark perm[j] of the original (300-W pairs)."""
  pairs = [(i, 16 - i) for i in range(8)]  # jaw
  pairs += [(17 + i, 26 - i) for i in range(5)]  # brows
  pairs += [(31, 35), (32, 34)]  # nostrils; bridge 27-30 and 33 stay
  pairs += [(36, 45), (37, 44), (38, 43), (39, 42), (40, 47), (41, 46)]  # eyes
  pairs += [(48, 54), (49, 53), (50, 52), (55, 59), (56, 58)]  # outer lips; 51, 57 stay
  pairs += [(60, 64), (61, 63), (65, 67)]  # inner lips; 62, 66 stay
  perm = np.arange(68)
  for a, b in pairs:
    perm[a], perm[b] = b, a
  return perm


def _mirror_194() -> np.ndarray:
  """The flip permutation of Helen's 194 points, from the contour order documented above."""
  perm = np.arange(194)
  perm[0:41] = 40 - np.arange(41)  # jaw reversed about the chin
  perm[41:58] = 98 - np.arange(41, 58)  # nose reversed
  k = np.arange(14)
  perm[58:72], perm[72:86] = 71 - k, 85 - k  # each outer lip reversed
  k = np.arange(28)
  perm[86:114] = 86 + (14 - k) % 28  # inner contour: left corner 86 <-> right corner 100
  k = np.arange(20)  # eyes and brows: same position on the other side's contour
  perm[114:134], perm[134:154], perm[154:174], perm[174:194] = 134 + k, 114 + k, 174 + k, 154 + k
  return perm


MIRROR = {68: _mirror_68(), 194: _mirror_194()}
PARTS = {68: PARTS_68, 194: PARTS_194}


def mirror_permutation(num_points: int) -> np.ndarray:
  """perm (L,): landmark j of the horizontally flipped face is landmark perm[j] of the original."""
  if num_points not in MIRROR:
    raise ValueError(f"no flip permutation for {num_points} landmarks (68 or 194); set landmarks.flips=False")
  return MIRROR[num_points].copy()


def flip_points(points: np.ndarray, width: float, perm: np.ndarray) -> np.ndarray:
  """The landmarks (N.., L, 2) of an image of `width` pixels flipped left-right: 0-based x ->
  width - 1 - x, relabelled by the layout's mirror permutation."""
  out = np.array(points, np.float64)[..., perm, :]
  out[..., 0] = width - 1 - out[..., 0]
  return out


def flip_crop(coords: np.ndarray, perm: np.ndarray) -> np.ndarray:
  """Crop-frame coordinates (N.., L, 2) of a crop flipped left-right: u -> 1 - u, relabelled."""
  out = np.array(coords, np.float64)[..., perm, :]
  out[..., 0] = 1 - out[..., 0]
  return out


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
