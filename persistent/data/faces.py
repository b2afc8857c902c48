"""Face landmark sources: `300w:DIR[,DIR...]` and `helen:IMAGES_DIR,ANNOTATION_DIR`.

Every example is {'image': uint8 RGB, 'id': image path, 'landmarks': (L, 2) float32}, one face
per example. Landmarks are 0-based pixel coordinates (x, y): the integer k is the centre of pixel
column/row k, so `landmarks + 0.5` are positions in the pixel-corner convention that
`images.crop_resize` uses.

`300w:DIR[,DIR...]` pairs every image in each DIR (not recursive) with the `.pts` file of the same
stem: 300-W's format (`version: 1`, `n_points: 68`, `{`, one "x y" line per point, `}`) or plain
"x y" lines without header. Coordinates in `.pts` files are 1-based (Matlab) pixels and are
converted to 0-based. AFW-style multi-face images come as one `<id>_<n>` pair per face.

`helen:IMAGES_DIR,ANNOTATION_DIR` reads Helen's original 194-point annotation: one text file per
face whose first line is the image's name (without extension) and whose 194 further lines are
"x , y" with 0-based pixel coordinates (Helen's own convention; no conversion).

Options, given as `key=value` items among the paths (e.g. '300w:DIR,points=68,on_bad=skip'):
  points   the required number of landmarks (68 for 300w, 194 for helen; 0: the most common
           count, faces with another count are bad).
  on_bad   'raise' (default): a bad annotation raises BadAnnotation (a ValueError) naming the
           file; 'skip': bad faces are dropped, counted and logged with their files, and so are
           faces whose image fails to decode (`source.skipped` lists them). The same as
           `data.open_source(spec, on_bad='skip')`.

Bad annotations: a `.pts` without image or an image without `.pts`, a malformed file, a point
count other than `points` (or than its `n_points` header), non-finite coordinates, a degenerate
face box, a face box whose centre lies outside the image, or an image whose header cannot be
read. All checks run when the source is opened (annotations and image headers only), so a bad
file fails before any work; with on_bad=skip, `data.open_source` then also decodes every image
once and leaves out those that fail (see persistent/data/__init__.py).

Images are read as stored, without EXIF rotation: the landmarks refer to the stored pixel grid.
"""
from __future__ import annotations

import logging
import os
from typing import Any

import numpy as np

from persistent import data
from persistent.data import images
from persistent.data.errors import BadAnnotation, DataError, read_text

DEFAULTS_300W = {"points": 68, "on_bad": "raise"}
DEFAULTS_HELEN = {"points": 194, "on_bad": "raise"}
_COORD_MAX = 1e7  # pixels; beyond any image (and far inside float32)


def parse_pts(path: str, num_points: int = 0) -> np.ndarray:
  """Reads a .pts file to (L, 2) float32 0-based pixel coordinates (the file's are 1-based).

  Accepts the 300-W header form and plain "x y" lines; `num_points` > 0 enforces the count.
  """
  lines = [ln.strip() for ln in read_text(path, "landmark file").splitlines()]
  lines = [ln for ln in lines if ln and not ln.startswith("#")]
  declared = None
  if lines and "{" in lines:
    head, body = lines[:lines.index("{")], lines[lines.index("{") + 1:]
    if "}" not in body:
      raise BadAnnotation(f"{path}: '{{' without closing '}}'")
    if any(ln for ln in body[body.index("}") + 1:]):
      raise BadAnnotation(f"{path}: text after the closing '}}'")
    body = body[:body.index("}")]
    for ln in head:
      key, _, value = ln.partition(":")
      if key.strip().lower() == "n_points":
        try:
          declared = int(value)
        except ValueError:
          raise BadAnnotation(f"{path}: bad n_points header {ln!r}") from None
      elif key.strip().lower() != "version":
        raise BadAnnotation(f"{path}: unexpected header line {ln!r}")
  else:
    body = lines
  if declared is not None and declared != len(body):
    raise BadAnnotation(f"{path}: header says n_points {declared} but the file has {len(body)} points")
  return _points(body, path, num_points, "x y") - np.float32(1.0)


def _points(lines: list[str], path: str, num_points: int, form: str) -> np.ndarray:
  """(L, 2) float32 from "x y" or "x , y" lines, checked for count and finiteness."""
  points = []
  for k, ln in enumerate(lines):
    parts = ln.replace(",", " ").split()
    try:
      if len(parts) != 2:
        raise ValueError
      points.append((float(parts[0]), float(parts[1])))
    except ValueError:
      raise BadAnnotation(f"{path}: point {k + 1} is not '{form}': {ln!r}") from None
  pts = np.asarray(points, np.float64).reshape(-1, 2)
  if num_points and len(pts) != num_points:
    raise BadAnnotation(f"{path}: expected {num_points} points, found {len(pts)}")
  if not len(pts):
    raise BadAnnotation(f"{path}: no points")
  finite = (np.abs(pts) <= _COORD_MAX).all(1)  # also what would overflow float32
  if not finite.all():
    bad = int(np.flatnonzero(~finite)[0]) + 1
    raise BadAnnotation(f"{path}: non-finite or huge coordinate at point {bad}")
  return pts.astype(np.float32)


def parse_helen(path: str, num_points: int = 194) -> tuple[str, np.ndarray]:
  """Reads a Helen annotation file: (image name, (L, 2) float32 0-based coordinates)."""
  lines = [ln.strip() for ln in read_text(path, "Helen annotation file").splitlines() if ln.strip()]
  if not lines:
    raise BadAnnotation(f"{path}: empty annotation file")
  return lines[0], _points(lines[1:], path, num_points, "x , y")


def check_face(landmarks: np.ndarray, image_size: tuple[int, int], where: str) -> None:
  """Rejects degenerate face boxes and boxes centred outside the (width, height) image."""
  lo, hi = landmarks.min(0), landmarks.max(0)
  if not (hi - lo > 0).all():
    raise BadAnnotation(f"{where}: degenerate face box {lo.tolist()}..{hi.tolist()}")
  cx, cy = (lo + hi) / 2 + 0.5
  w, h = image_size
  if not (0 <= cx <= w and 0 <= cy <= h):
    raise BadAnnotation(f"{where}: face box centred at ({cx:.1f}, {cy:.1f}) lies outside the "
                        f"{w}x{h} image")


def _options(paths: list[str], defaults: dict[str, Any], spec: str,
             options: dict[str, Any]) -> tuple[list[str], dict[str, Any]]:
  dirs = [p for p in paths if "=" not in p]
  opts = data.parse_options([p for p in paths if "=" in p], defaults, spec)
  for k, v in options.items():
    if k not in defaults:
      raise ValueError(f"unknown option {k!r} for {spec!r}; options: {', '.join(defaults)}")
    opts[k] = type(defaults[k])(v)
  if opts["on_bad"] not in data.ON_BAD:
    raise ValueError(f"{spec}: on_bad must be 'raise' or 'skip', got {opts['on_bad']!r}")
  return dirs, opts


def _source(spec: str, fmt: str, dirs: list[str], faces: list[tuple[str, np.ndarray, str]], skipped: list[str],
            opts: dict[str, Any]) -> data.Source:
  if skipped:
    logging.warning("%s: skipped %d bad faces: %s", spec, len(skipped), "; ".join(skipped[:20]))
  if not faces:
    raise ValueError(f"{spec}: no usable faces" + (f" ({len(skipped)} skipped)" if skipped else ""))
  ids = [img for img, _, _ in faces]
  marks = [pts for _, pts, _ in faces]

  def load(i: int) -> data.Example:
    return {"image": images.read_image(ids[i], exif=False), "id": ids[i], "landmarks": marks[i].copy()}
  stamp = data.digest([(img, os.path.getsize(img), ann, os.path.getsize(ann)) for img, _, ann in faces])
  source = data.Source(f"{fmt}:{','.join(dirs)},points={opts['points']}@{stamp}", ids, load,
                       skipped=skipped, on_bad=opts["on_bad"])
  source.landmarks = np.stack(marks) if len({m.shape for m in marks}) == 1 else marks  # type: ignore[attr-defined]
  return source


def _gather(pairs: list[tuple[str, str]], read, opts: dict[str, Any]):
  faces, skipped = [], []
  for img, ann in pairs:
    try:
      pts = read(ann)
      check_face(pts, images.image_size(img), ann)
      faces.append((img, pts, ann))
    except DataError as e:
      if opts["on_bad"] == "raise":
        raise
      skipped.append(str(e))
  counts = [len(f[1]) for f in faces]
  if not opts["points"] and len(set(counts)) > 1:  # points=0: the most common count wins
    common = max(set(counts), key=counts.count)
    for img, pts, ann in faces:
      if len(pts) != common:
        msg = f"{ann}: {len(pts)} points where the other faces have {common}"
        if opts["on_bad"] == "raise":
          raise BadAnnotation(msg)
        skipped.append(msg)
    faces = [f for f in faces if len(f[1]) == common]
  return faces, skipped


@data.register("300w")
def open_300w(paths: list[str], **options: Any) -> data.Source:
  spec = "300w:" + ",".join(paths)
  dirs, opts = _options(paths, DEFAULTS_300W, spec, options)
  if not dirs:
    raise ValueError("300w needs a folder: '300w:DIR[,DIR...]'")
  pairs, skipped = [], []
  for d in dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f"300w folder does not exist: {d}")
    names = sorted(os.listdir(d))
    imgs = {os.path.splitext(n)[0]: os.path.join(d, n) for n in names
            if n.lower().endswith(images.IMAGE_EXTENSIONS)}
    ptss = {os.path.splitext(n)[0]: os.path.join(d, n) for n in names if n.lower().endswith(".pts")}
    for stem in sorted(set(imgs) | set(ptss)):
      if stem in imgs and stem in ptss:
        pairs.append((imgs[stem], ptss[stem]))
        continue
      msg = (f"{imgs[stem]}: image without annotation ({stem}.pts missing)" if stem in imgs else
             f"{ptss[stem]}: annotation without image")
      if opts["on_bad"] == "raise":
        raise BadAnnotation(msg)
      skipped.append(msg)
  faces, bad = _gather(pairs, lambda p: parse_pts(p, opts["points"]), opts)
  return _source(spec, "300w", dirs, faces, skipped + bad, opts)


@data.register("helen")
def open_helen(paths: list[str], **options: Any) -> data.Source:
  spec = "helen:" + ",".join(paths)
  dirs, opts = _options(paths, DEFAULTS_HELEN, spec, options)
  if len(dirs) != 2:
    raise ValueError(f"helen needs 'helen:IMAGES_DIR,ANNOTATION_DIR', got {spec!r}")
  image_dir, ann_dir = dirs
  for d in dirs:
    if not os.path.isdir(d):
      raise FileNotFoundError(f"helen folder does not exist: {d}")
  imgs = {os.path.splitext(n)[0]: os.path.join(image_dir, n) for n in sorted(os.listdir(image_dir))
          if n.lower().endswith(images.IMAGE_EXTENSIONS)}
  parsed, skipped, seen = {}, [], set()
  for n in sorted(os.listdir(ann_dir)):
    if not n.lower().endswith(".txt"):
      continue
    path = os.path.join(ann_dir, n)
    try:
      name, pts = parse_helen(path, opts["points"])
      if name not in imgs:
        raise BadAnnotation(f"{path}: annotation of {name!r} without image in {image_dir}")
      parsed[path] = (name, pts)
      seen.add(name)
    except BadAnnotation as e:
      if opts["on_bad"] == "raise":
        raise
      skipped.append(str(e))
  for stem, img in imgs.items():
    if stem not in seen:
      msg = f"{img}: image without annotation in {ann_dir}"
      if opts["on_bad"] == "raise":
        raise BadAnnotation(msg)
      skipped.append(msg)
  pairs = sorted((imgs[name], path) for path, (name, _) in parsed.items())
  faces, bad = _gather(pairs, lambda p: parsed[p][1], opts)
  return _source(spec, "helen", dirs, faces, skipped + bad, opts)
