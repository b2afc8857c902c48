"""`synthetic:n=N,seed=S,size=P`: seeded scenes of coloured shapes with exact ground truth.

Each image shows one to three objects (disk, square, triangle, cross) of random colour, position,
size and rotation on a two-colour gradient background with mild texture, so that colour, layout
and class vary enough for probing to be meaningful. Every example carries its ground truth:
`label` (H, W) class map (0 = background), `classes` (their names), `objects` (class, colour, centre, size, angle, box,
keypoints with visibility) and scalar `attributes` of the first object. Example i depends only on
(seed, i), so sources of any length agree on their common prefix.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from persistent import data

CLASSES = ("background", "disk", "square", "triangle", "cross")
NUM_KEYPOINTS = 4  # per object; triangles repeat their apex as the 4th, marked invisible
DEFAULTS = {"n": 1000, "seed": 0, "size": 96, "max_objects": 3}
_SUPERSAMPLE = 2


def _outline(cls: int, cx: float, cy: float, r: float, angle: float) -> np.ndarray:
  """Polygon vertices (M, 2) of a shape of class cls; disks are 64-gons."""
  if cls == 1:
    t = angle + np.linspace(0, 2 * np.pi, 64, endpoint=False)
  elif cls == 2:
    t = angle + np.pi / 4 + np.arange(4) * np.pi / 2
  elif cls == 3:
    t = angle - np.pi / 2 + np.arange(3) * 2 * np.pi / 3
  else:  # cross: 12-gon from two bars of half-width r/3
    w = r / 3
    pts = np.array([(w, -r), (w, -w), (r, -w), (r, w), (w, w), (w, r), (-w, r), (-w, w), (-r, w),
                    (-r, -w), (-w, -w), (-w, -r)])
    c, s = math.cos(angle), math.sin(angle)
    return np.stack([cx + c * pts[:, 0] - s * pts[:, 1], cy + s * pts[:, 0] + c * pts[:, 1]], 1)
  return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


def _keypoints(cls: int, cx: float, cy: float, r: float, angle: float) -> tuple[np.ndarray, np.ndarray]:
  """NUM_KEYPOINTS named points per class: rim points, corners, vertices, arm ends."""
  if cls == 3:
    v = _outline(3, cx, cy, r, angle)
    return np.concatenate([v, v[:1]]), np.array([True, True, True, False])
  base = {1: 0.0, 2: np.pi / 4, 4: -np.pi / 2}[cls]
  t = angle + base + np.arange(4) * np.pi / 2
  return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1), np.ones(4, bool)


def render(seed: int, index: int, size: int = 96, max_objects: int = 3) -> data.Example:
  """Draws example `index` of the stream `seed`."""
  rng = np.random.default_rng([seed, index])
  s = size * _SUPERSAMPLE
  # Background: gradient between two colours along a random direction, plus smooth texture.
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  theta = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:s, 0:s] / s
  t = np.clip(0.5 + (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta), 0, 1)[..., None]
  noise = rng.normal(0, 1, (8, 8, 1))
  noise = np.asarray(Image.fromarray(noise[..., 0].astype(np.float32)).resize((s, s), Image.BICUBIC))
  bg = c0 * (1 - t) + c1 * t + 12 * noise[..., None]
  canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
  label = Image.new("L", (size, size), 0)
  draw, ldraw = ImageDraw.Draw(canvas), ImageDraw.Draw(label)

  objects = []
  for _ in range(int(rng.integers(1, max_objects + 1))):
    cls = int(rng.integers(1, len(CLASSES)))
    r = float(rng.uniform(0.1, 0.28) * size)
    cx, cy = (float(v) for v in rng.uniform(0.15 * size, 0.85 * size, 2))
    angle = float(rng.uniform(0, 2 * np.pi)) if cls != 1 else 0.0
    colour = rng.uniform(0, 255, 3)
    poly = _outline(cls, cx, cy, r, angle)
    draw.polygon([tuple(p) for p in poly * _SUPERSAMPLE], fill=tuple(int(c) for c in colour))
    ldraw.polygon([tuple(p - 0.5) for p in poly], fill=cls)
    kp, vis = _keypoints(cls, cx, cy, r, angle)
    vis = vis & (kp >= 0).all(1) & (kp < size).all(1)
    objects.append({
        "class": cls, "colour": colour / 255.0, "centre": np.array([cx, cy]), "radius": r,
        "angle": angle, "box": np.array([*poly.min(0), *poly.max(0)]).clip(0, size),
        "keypoints": kp, "visible": vis})
  image = canvas.filter(ImageFilter.GaussianBlur(0.6)).resize((size, size), Image.BOX)
  first = objects[0]
  attributes = {"x": first["centre"][0] / size, "y": first["centre"][1] / size,
                "radius": first["radius"] / size, "red": first["colour"][0],
                "green": first["colour"][1], "blue": first["colour"][2]}
  return {"image": np.asarray(image), "label": np.asarray(label), "classes": CLASSES, "objects": objects,
          "attributes": attributes, "id": f"synthetic:{seed}:{index}"}


@data.register("synthetic")
def open_synthetic(paths: list[str], **unused) -> data.Source:
  spec = "synthetic:" + ",".join(paths)
  opts = data.parse_options(paths, DEFAULTS, spec)
  if opts["n"] <= 0 or opts["size"] < 16 or opts["max_objects"] < 1:
    raise ValueError(f"{spec}: need n > 0, size >= 16 and max_objects >= 1")
  ids = [f"synthetic:{opts['seed']}:{i}" for i in range(opts["n"])]
  key = f"synthetic:v1,seed={opts['seed']},size={opts['size']},max_objects={opts['max_objects']},n={opts['n']}"
  return data.Source(key, ids, lambda i: render(opts["seed"], i, opts["size"], opts["max_objects"]))
