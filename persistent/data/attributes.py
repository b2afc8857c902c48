"""Images with scalar attributes: LFW with Kumar et al.'s attribute file, and a generic table.

`lfw_attributes:LFW_DIR,ATTR_FILE` -- LFW images at LFW_DIR/<Person_Name>/<Person_Name>_<NNNN>.jpg
and the attribute file of Kumar et al. (`lfw_attributes.txt`): a comment line, then the
tab-separated header `#  person  imagenum  Male  Asian ...` (73 attribute scores; names may hold
spaces, e.g. 'Middle Aged'), then one row per image: `Aaron Eckhart  1  1.568  ...`. The rows
define the examples (the published file covers 13,143 of LFW's 13,233 images); a row whose image
file is missing is an error naming it.

`attributes:IMAGE_DIR,TABLE` -- every image under IMAGE_DIR with a row of TABLE (CSV or TSV with a
header line): the first column is the image path relative to IMAGE_DIR, the others numeric
attributes. Images without a row and rows without an image are errors naming them.

Examples carry `attributes` ({name: float}); `values(examples, names)` turns them into an array
and names the examples or attributes that are missing.
"""
from __future__ import annotations

import csv
import io
import math
import os
from typing import Sequence

import numpy as np

from persistent import data
from persistent.data import images
from persistent.data.errors import BadAnnotation, read_text
from persistent.data.imagefolder import list_images

_SHOW = 5  # how many offending names an error message lists
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def _names(items: Sequence[str], what: str) -> str:
  items = list(items)
  more = f" (and {len(items) - _SHOW} more)" if len(items) > _SHOW else ""
  return f"{len(items)} {what}: {', '.join(repr(i) for i in items[:_SHOW])}{more}"


def _file_digest(path: str) -> str:
  import hashlib
  with open(path, "rb") as f:
    return hashlib.sha1(f.read()).hexdigest()[:16]


def _float(value: str, path: str, line: int, column: str) -> float:
  try:
    v = float(value)
  except ValueError:
    raise BadAnnotation(f"{path}:{line}: attribute {column!r} is not a number: {value!r}") from None
  if not math.isfinite(v):
    raise BadAnnotation(f"{path}:{line}: attribute {column!r} is not finite: {value!r}")
  if abs(v) > _FLOAT32_MAX:  # would become inf as float32
    raise BadAnnotation(f"{path}:{line}: attribute {column!r} is out of the float32 range: {value!r}")
  return v


# --- LFW (Kumar et al.) -------------------------------------------------------------------------

def read_lfw_attributes(path: str) -> tuple[list[str], list[tuple[str, int, np.ndarray]]]:
  """Parses lfw_attributes.txt -> (attribute names, [(person, imagenum, scores (k,))])."""
  lines = read_text(path, "LFW attribute file").splitlines()
  header_at = next((i for i, line in enumerate(lines[:10]) if line.startswith("#")
                    and [c.strip() for c in line.lstrip("#").split("\t") if c.strip()][:2] == ["person", "imagenum"]),
                   None)
  if header_at is None:
    raise BadAnnotation(f"{path}: no header line '#<TAB>person<TAB>imagenum<TAB>...' among the first lines; "
                        "is this the LFW attribute file of Kumar et al.?")
  columns = [c.strip() for c in lines[header_at].lstrip("#").split("\t") if c.strip()]
  names = columns[2:]
  if not names or len(set(names)) != len(names):
    raise BadAnnotation(f"{path}:{header_at + 1}: attribute names must be present and distinct")
  rows, seen = [], set()
  for lineno, line in enumerate(lines[header_at + 1:], header_at + 2):
    if not line.strip() or line.startswith("#"):
      continue
    fields = line.rstrip("\n").split("\t")
    if len(fields) != len(columns):
      raise BadAnnotation(f"{path}:{lineno}: {len(fields)} tab-separated fields, header has {len(columns)}")
    person = fields[0].strip()
    try:
      num = int(fields[1])
    except ValueError:
      raise BadAnnotation(f"{path}:{lineno}: imagenum {fields[1]!r} is not an integer") from None
    if (person, num) in seen:
      raise BadAnnotation(f"{path}:{lineno}: duplicate row for {person!r} image {num}")
    seen.add((person, num))
    scores = np.array([_float(v, path, lineno, c) for v, c in zip(fields[2:], names)], np.float32)
    rows.append((person, num, scores))
  if not rows:
    raise BadAnnotation(f"{path}: no attribute rows")
  return names, rows


def lfw_image_path(lfw_dir: str, person: str, num: int) -> str:
  folder = person.replace(" ", "_")
  return os.path.join(lfw_dir, folder, f"{folder}_{num:04d}.jpg")


@data.register("lfw_attributes")
def open_lfw_attributes(paths: list[str], **unused) -> data.Source:
  if len(paths) != 2:
    raise ValueError("lfw_attributes needs 'lfw_attributes:LFW_DIR,ATTR_FILE' (the LFW image folder and "
                     f"lfw_attributes.txt), got {paths}")
  lfw_dir, attr_file = paths
  if not os.path.isdir(lfw_dir):
    raise FileNotFoundError(f"LFW image folder does not exist: {lfw_dir}")
  names, rows = read_lfw_attributes(attr_file)
  files = [lfw_image_path(lfw_dir, p, n) for p, n, _ in rows]
  missing = [f for f in files if not os.path.isfile(f)]
  if missing:
    raise BadAnnotation(f"{attr_file}: attribute rows without an image under {lfw_dir}: "
                        + _names([os.path.relpath(f, lfw_dir) for f in missing], "missing files"))

  def load(i: int) -> data.Example:
    person, num, scores = rows[i]
    return {"image": images.read_image(files[i]), "id": files[i], "person": person, "imagenum": num,
            "attributes": dict(zip(names, scores.tolist()))}
  stamp = data.digest([_file_digest(attr_file), len(files)])
  return data.Source(f"lfw_attributes:{lfw_dir},{attr_file}@{stamp}", files, load)


# --- A generic attribute table ------------------------------------------------------------------

def read_table(path: str) -> tuple[list[str], dict[str, np.ndarray]]:
  """A CSV/TSV attribute table -> (attribute names, {first-column key: values (k,)})."""
  text = read_text(path, "attribute table")
  delimiter = "\t" if "\t" in text.partition("\n")[0] else ","
  reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter)
  rows = []  # (line number, fields); a quoted field may span lines
  try:
    for fields in reader:
      rows.append((reader.line_num, fields))
  except csv.Error as e:
    kind = "TSV" if delimiter == "\t" else "CSV"
    raise BadAnnotation(f"{path}:{reader.line_num}: not a {kind} table: {e}") from None
  header = rows[0][1] if rows else None
  if not header or len(header) < 2:
    raise BadAnnotation(f"{path}: needs a header line 'image{delimiter}attribute[{delimiter}...]'")
  names = [h.strip() for h in header[1:]]
  if len(set(names)) != len(names) or not all(names):
    raise BadAnnotation(f"{path}:1: attribute names must be non-empty and distinct, got {names}")
  table: dict[str, np.ndarray] = {}
  for lineno, fields in rows[1:]:
    if not fields or not "".join(fields).strip():
      continue
    if len(fields) != len(header):
      raise BadAnnotation(f"{path}:{lineno}: {len(fields)} fields, header has {len(header)}")
    key = os.path.normpath(fields[0].strip())
    if key in table:
      raise BadAnnotation(f"{path}:{lineno}: duplicate row for {key!r}")
    table[key] = np.array([_float(v, path, lineno, c) for v, c in zip(fields[1:], names)], np.float32)
  if not table:
    raise BadAnnotation(f"{path}: no attribute rows")
  return names, table


@data.register("attributes")
def open_attribute_table(paths: list[str], **unused) -> data.Source:
  if len(paths) != 2:
    raise ValueError(f"attributes needs 'attributes:IMAGE_DIR,TABLE', got {paths}")
  image_dir, table_path = paths
  names, table = read_table(table_path)
  files = list_images(image_dir)
  keys = [os.path.normpath(os.path.relpath(f, image_dir)) for f in files]
  without = [k for k in keys if k not in table]
  if without:
    raise BadAnnotation(f"{table_path}: no attribute row for " + _names(without, f"images under {image_dir}"))
  orphans = sorted(set(table) - set(keys))
  if orphans:
    raise BadAnnotation(f"{table_path}: attribute rows without an image under {image_dir}: "
                        + _names(orphans, "rows"))

  def load(i: int) -> data.Example:
    return {"image": images.read_image(files[i]), "id": files[i],
            "attributes": dict(zip(names, table[keys[i]].tolist()))}
  stamp = data.digest([_file_digest(table_path),
                        [(f, os.path.getsize(f)) for f in files]])
  return data.Source(f"attributes:{image_dir},{table_path}@{stamp}", files, load)


# --- Using attributes ---------------------------------------------------------------------------

def values(examples: Sequence[data.Example], names: Sequence[str]) -> np.ndarray:
  """(B, len(names)) float32 attribute values; names the examples or attributes that are missing."""
  without = [ex.get("id", "?") for ex in examples if not isinstance(ex.get("attributes"), dict)]
  if without:
    raise ValueError("examples without attributes (use an attribute source such as "
                     "lfw_attributes:, attributes:, tfds:celeb_a or synthetic:): " + _names(without, "images"))
  out = np.empty((len(examples), len(names)), np.float32)
  for i, ex in enumerate(examples):
    attrs = ex["attributes"]
    unknown = [n for n in names if n not in attrs]
    if unknown:
      raise ValueError(f"unknown attribute names {unknown} for example {ex.get('id', '?')!r}; "
                       f"it has: {', '.join(sorted(attrs))}")
    out[i] = [float(attrs[n]) for n in names]
  if not np.isfinite(out).all():
    bad = sorted({examples[i].get("id", "?") for i in np.flatnonzero(~np.isfinite(out).all(1))})
    raise ValueError("non-finite attribute values in " + _names(bad, "examples"))
  return out


LANDMARKS_5 = ("left_eye", "right_eye", "nose", "left_mouth", "right_mouth")


def pose_from_landmarks5(landmarks: np.ndarray) -> dict[str, float]:
  """Head pose proxies from five landmarks (x, y) ordered as LANDMARKS_5 (CelebA's order).

  yaw: the nose's horizontal offset from the midpoint of the eyes, in units of the inter-ocular
  distance (positive: nose towards the image's right). roll: the angle of the eye line in radians
  (positive: the right-hand eye lower in the image). Pitch: the nose's vertical position between
  the eye line and the mouth line, 0.5 centred. Degenerate landmarks (eyes coincide) give NaN.
  """
  lm = np.asarray(landmarks, np.float64).reshape(5, 2)
  le, re, nose, lmo, rmo = lm
  eye_mid, mouth_mid = (le + re) / 2, (lmo + rmo) / 2
  iod = np.linalg.norm(re - le)
  if not iod > 0:  # eyes coincide: no pose (values() names such examples as non-finite)
    return {"yaw": math.nan, "roll": math.nan, "pitch": math.nan}
  axis = (re - le) / iod
  down = mouth_mid - eye_mid
  span = float(np.dot(down, np.array([-axis[1], axis[0]])))
  yaw = float(np.dot(nose - eye_mid, axis) / iod)
  roll = float(math.atan2(re[1] - le[1], re[0] - le[0]))
  pitch = float(np.dot(nose - eye_mid, np.array([-axis[1], axis[0]])) / span) if span else math.nan
  return {"yaw": yaw, "roll": roll, "pitch": pitch}
