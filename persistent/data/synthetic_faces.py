"""`synthetic_faces:n=N,seed=S,size=P`: seeded cartoon faces with 68 landmarks (iBUG layout).

Each image shows one face drawn with Pillow on a textured two-colour background: a skin-coloured
head (jaw contour plus a forehead arc, with hair), eyebrows, eyes with irises, a nose and a mouth
that may be open. The 68 landmarks follow the 300-W / iBUG numbering (0-based here): jaw 0-16
(image left to right through the chin), brows 17-21 and 22-26, nose bridge 27-30, nostrils 31-35,
eyes 36-41 and 42-47 (outer corners 36 and 45), outer lips 48-59, inner lips 60-67. So the
default look-back groups and the inter-ocular normaliser of the real data apply unchanged.

Shape (eye and mouth size, mouth opening, brow height), pose (in-plane rotation, a yaw-like shift
of the inner features), scale, position and all colours vary with (seed, index), so sources of
any length agree on their common prefix. Landmarks are 0-based pixel coordinates as in
`persistent.data.faces`.
"""
from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

from persistent import data

DEFAULTS = {"n": 400, "seed": 0, "size": 128}
NUM_POINTS = 68
_SUPERSAMPLE = 2


def canonical_shape(rng: np.random.Generator) -> np.ndarray:
  """(68, 2) landmarks in face coordinates: x right, y down, face half-width about 1."""
  p = np.zeros((NUM_POINTS, 2))
  jaw_w, jaw_h = rng.uniform(0.85, 1.05), rng.uniform(1.0, 1.25)
  phi = np.pi - np.arange(17) * np.pi / 16
  p[0:17] = np.stack([jaw_w * np.cos(phi), -0.15 + jaw_h * np.sin(phi)], 1)
  yaw = rng.uniform(-1, 1) * 0.18  # inner features shift sideways, as in a turned head
  brow_y, arch = -0.5 - rng.uniform(0, 0.12), rng.uniform(0.03, 0.12)
  t = np.linspace(0, 1, 5)
  for side, sl in ((-1, slice(17, 22)), (1, slice(22, 27))):
    xs = np.linspace(-0.78, -0.18, 5) if side < 0 else np.linspace(0.18, 0.78, 5)
    p[sl] = np.stack([xs, brow_y - arch * np.sin(np.pi * t)], 1)
  ew, eh, ey = rng.uniform(0.15, 0.21), rng.uniform(0.04, 0.1), -0.25
  # Each eye: corner at image left, two upper-lid points, corner at image right, two lower-lid
  # points; so 36 and 45 are the outer corners and 39, 42 the inner ones.
  eye = np.array([(-ew, 0), (-ew / 3, -eh), (ew / 3, -eh), (ew, 0), (ew / 3, eh), (-ew / 3, eh)])
  p[36:42], p[42:48] = eye + (-0.42, ey), eye + (0.42, ey)
  p[27:31] = np.stack([np.zeros(4), np.linspace(-0.2, 0.2, 4)], 1)
  nw = rng.uniform(0.13, 0.2)
  p[31:36] = np.stack([np.linspace(-nw, nw, 5), 0.3 + np.array([0, 0.03, 0.05, 0.03, 0])], 1)
  p[27:36, 0] += 0.6 * yaw * np.linspace(0.6, 1.0, 9)
  mw, my = rng.uniform(0.28, 0.42), 0.62 + rng.uniform(-0.04, 0.04)
  up, low, gap = rng.uniform(0.05, 0.1), rng.uniform(0.06, 0.12), rng.uniform(0, 0.14)
  smile = rng.uniform(-0.05, 0.06)
  xs = np.array([-2, -1, 0, 1, 2]) / 3 * mw
  p[48] = (-mw, -smile)
  p[49:54] = np.stack([xs, -up * np.array([0.7, 1, 0.8, 1, 0.7])], 1)
  p[54] = (mw, -smile)
  p[55:60] = np.stack([xs[::-1], gap + low * np.array([0.7, 0.95, 1, 0.95, 0.7])], 1)
  p[60] = (-0.8 * mw, -smile / 2)
  p[61:64] = np.stack([xs[1:4], np.full(3, -0.01)], 1)
  p[64] = (0.8 * mw, -smile / 2)
  p[65:68] = np.stack([xs[3:0:-1], np.full(3, gap)], 1)
  p[48:68, 1] += my
  p[17:68, 0] += yaw
  return p


def render(seed: int, index: int, size: int = 128) -> data.Example:
  """Draws example `index` of the stream `seed`."""
  rng = np.random.default_rng([seed, index, 68])
  s = size * _SUPERSAMPLE
  c0, c1 = rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
  theta = rng.uniform(0, 2 * np.pi)
  yy, xx = np.mgrid[0:s, 0:s] / s
  t = np.clip(0.5 + (xx - 0.5) * math.cos(theta) + (yy - 0.5) * math.sin(theta), 0, 1)[..., None]
  noise = rng.normal(0, 1, (10, 10)).astype(np.float32)
  noise = np.asarray(Image.fromarray(noise).resize((s, s), Image.BICUBIC))
  bg = c0 * (1 - t) + c1 * t + 15 * noise[..., None]
  canvas = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
  draw = ImageDraw.Draw(canvas)

  shape = canonical_shape(rng)
  scale = size * rng.uniform(0.17, 0.3)
  angle = rng.uniform(-25, 25) * np.pi / 180
  centre = size / 2 + rng.uniform(-0.15, 0.15, 2) * size
  rot = np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
  to_image = lambda q: (np.asarray(q) @ rot.T) * scale + centre  # corner-convention positions
  poly = lambda q: [tuple(v) for v in to_image(q) * _SUPERSAMPLE]

  skin = rng.uniform([120, 70, 40], [255, 220, 190])
  hair = rng.uniform(0, 140, 3)
  jaw = shape[0:17]
  top = np.stack([np.cos(np.linspace(0, np.pi, 24)) * jaw[16, 0],
                  -0.15 - 1.2 * np.sin(np.linspace(0, np.pi, 24))], 1)
  hair_top = top * [1.12, 1.18] + [0, -0.05]
  draw.polygon(poly(np.concatenate([hair_top, jaw[[0]] + [-0.1, 0.3]])), fill=tuple(int(c) for c in hair))
  draw.polygon(poly(np.concatenate([jaw, top])), fill=tuple(int(c) for c in skin))
  dark = tuple(int(c) for c in skin * rng.uniform(0.35, 0.6))
  width = max(1, int(round(scale * 0.07 * _SUPERSAMPLE)))
  for sl in (slice(17, 22), slice(22, 27)):
    draw.line(poly(shape[sl]), fill=tuple(int(c) for c in hair * 0.8), width=width)
  iris = tuple(int(c) for c in rng.uniform(0, 160, 3))
  for sl in (slice(36, 42), slice(42, 48)):
    eye = shape[sl]
    draw.polygon(poly(eye), fill=(245, 245, 240), outline=dark)
    c, r = eye.mean(0), 0.8 * (eye[:, 1].max() - eye[:, 1].min()) / 2
    draw.ellipse([tuple(v) for v in (to_image(np.stack([c - r, c + r])) * _SUPERSAMPLE)], fill=iris)
  draw.line(poly(shape[27:31]), fill=dark, width=max(1, width // 2))
  draw.line(poly(shape[31:36]), fill=dark, width=max(1, width // 2))
  lips = tuple(int(c) for c in rng.uniform([120, 20, 30], [230, 110, 120]))
  draw.polygon(poly(shape[48:60]), fill=lips)
  draw.polygon(poly(shape[60:68]), fill=(40, 10, 15))
  image = canvas.filter(ImageFilter.GaussianBlur(0.7)).resize((size, size), Image.BOX)
  landmarks = (to_image(shape) - 0.5).astype(np.float32)  # corner convention -> 0-based pixels
  return {"image": np.asarray(image), "landmarks": landmarks, "id": f"synthetic_faces:{seed}:{index}"}


@data.register("synthetic_faces")
def open_synthetic_faces(paths: list[str], **unused) -> data.Source:
  spec = "synthetic_faces:" + ",".join(paths)
  opts = data.parse_options(paths, DEFAULTS, spec)
  if opts["n"] <= 0 or opts["size"] < 32:
    raise ValueError(f"{spec}: need n > 0 and size >= 32")
  ids = [f"synthetic_faces:{opts['seed']}:{i}" for i in range(opts["n"])]
  key = f"synthetic_faces:v1,seed={opts['seed']},size={opts['size']},n={opts['n']}"
  return data.Source(key, ids, lambda i: render(opts["seed"], i, opts["size"]))
