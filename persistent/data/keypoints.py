"""Object keypoint sources: one example per annotated object.

Examples carry the full `image`, the object's `box` (x0, y0, x1, y1) in pixel-corner coordinates,
`keypoints` (K, 2) as (x, y), `visible` (K,) bool (False: not annotated or not visible; such a
keypoint's coordinates are meaningless), `class` (a name), `keypoint_names` (K names, fixed per
class) and `id`. Ids start with 'CLASS/' so that per-class subsets need no image decoding (see
`class_of`). Annotations are parsed when the source is opened, so a malformed file fails at once,
with its path in the message; images are decoded lazily.

- `voc_keypoints:ANNOTATIONS_DIR,JPEG_DIR[,list=FILE][,classes=a+b]`: the PASCAL VOC 2011 keypoint
  annotations of Bourdev & Malik (poselets): ANNOTATIONS_DIR/CLASS/IMAGEID_N.xml, each with
  `<image>`, `<category>`, `<visible_bounds xmin= ymin= width= height=>` (the object box) and
  `<keypoints><keypoint name= visible= x= y= z=/>...`. A class's keypoints are the union of the
  names in its files (sorted); a keypoint missing from a file, or with visible="0", is invisible.
  `list=FILE` keeps the images whose ids FILE lists (e.g. VOC's ImageSets/Main/train.txt);
  `classes=cat+dog` keeps some classes.
- `coco_keypoints:ANNOTATIONS.json,IMAGE_DIR[,min_v=1][,classes=a+b]`: COCO-style JSON with
  `images` (id, file_name[, width, height]), `annotations` (id, image_id, category_id, keypoints
  [x1, y1, v1, ...][, bbox [x, y, w, h]][, iscrowd]) and `categories` (id, name, keypoints: the
  names). v is 0 (not labelled: such a keypoint comes through as not visible), 1 (labelled but
  occluded) or 2 (visible); a keypoint is visible when v >= min_v (1, the default, takes every
  labelled point, as COCO's own evaluation does; 2 only the visible ones). Left out, counted and
  logged (`read_coco_keypoints` returns the counts): crowd annotations, objects without a visible
  keypoint, objects of other classes. The object box is the annotation's bbox; where it is absent
  or has no area, the extent of the visible keypoints widened on every side by 10% of its longer
  side (objects whose visible keypoints coincide, e.g. only one, have no box and are left out,
  counted). Where `images` gives width and height, the decoded image must have that size. Both
  COCO (`person_keypoints_val2017.json`, 17 keypoints) and LSPET converted to this format
  (14 joints, `LSP_JOINTS`) read this way.
- `synthetic_keypoints:n=N,seed=S,size=P`: the objects of the `synthetic` scenes (exact ground
  truth, offline). Rotationally symmetric shapes get a canonical order: keypoint 0 is the one
  nearest straight up from the centre, then clockwise (in image coordinates).

Images are read as stored, without EXIF rotation: keypoints refer to the stored pixel grid.
Malformed annotations raise `BadAnnotation` (a ValueError) naming the file and the field.
`flip_permutation(names)` gives the left/right permutation for horizontal flips, `flip_example`
mirrors an example (image, box, keypoints, with left and right exchanged), `image_of` the image
an object lies in (for splits that keep an image's objects together).
"""
from __future__ import annotations

import json
import logging
import math
import os
import re
import xml.etree.ElementTree as ET
from typing import Any, Callable, Sequence

import numpy as np

from persistent import data
from persistent.data import images as image_lib
from persistent.data import synthetic
from persistent.data.errors import BadAnnotation, read_text

COCO_PERSON_KEYPOINTS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "left_shoulder",
                         "right_shoulder", "left_elbow", "right_elbow", "left_wrist", "right_wrist",
                         "left_hip", "right_hip", "left_knee", "right_knee", "left_ankle", "right_ankle")
# The 14 joints of LSP / LSPET in their order (joints.mat), as named in COCO-style conversions.
LSP_JOINTS = ("right_ankle", "right_knee", "right_hip", "left_hip", "left_knee", "left_ankle",
              "right_wrist", "right_elbow", "right_shoulder", "left_shoulder", "left_elbow",
              "left_wrist", "neck", "head_top")
BOX_MARGIN = 0.1  # a box from keypoints: their extent plus this times its longer side, every side
_FLOAT32_MAX = float(np.finfo(np.float32).max)


def class_of(example_id: str) -> str:
  """The class name encoded in a keypoint example's id ('CLASS/...')."""
  cls, slash, _ = example_id.partition("/")
  if not slash:
    raise ValueError(f"keypoint example id {example_id!r} does not start with 'CLASS/'")
  return cls


def image_of(example_id: str) -> str:
  """The image of a keypoint example's id ('CLASS/IMAGE_N' of both readers -> 'IMAGE'), so that
  the objects of one image (of any class) can be kept on one side of a split."""
  return class_of(example_id) and example_id.partition("/")[2].rpartition("_")[0]


def _parse(fmt: str, paths: list[str], usage: str, defaults: dict[str, Any]
           ) -> tuple[str, str, str, dict[str, Any]]:
  """'FMT:A,B[,key=value...]' items -> (spec, A, B, options)."""
  spec = f"{fmt}:" + ",".join(paths)
  files = [p for p in paths if "=" not in p]
  if len(files) != 2:
    raise ValueError(f"{spec}: expected '{fmt}:{usage}'")
  return spec, files[0], files[1], data.parse_options([p for p in paths if "=" in p], defaults, spec)


def _records_source(spec: str, records: list[dict[str, Any]], image_path: Callable[[dict], str]
                    ) -> data.Source:
  """A source over parsed object records; images are read on access (checked against a record's
  `size`, (height, width), where it has one)."""
  def load(i: int) -> data.Example:
    r = dict(records[i])
    path, size = image_path(r), r.pop("size", None)
    image = image_lib.read_image(path, exif=False)
    if size is not None and image.shape[:2] != size:
      raise BadAnnotation(f"image {path} is {image.shape[1]}x{image.shape[0]} (WxH) but its annotation "
                          f"says {size[1]}x{size[0]}")
    return {**r, "image": image}
  return data.Source(spec, [r["id"] for r in records], load)


def _float_attr(node: ET.Element, name: str, path: str) -> float:
  value = node.get(name)
  if value is None:
    raise BadAnnotation(f"keypoint annotation {path}: <{node.tag}> lacks the attribute {name!r}")
  try:
    v = float(value)
  except ValueError:
    raise BadAnnotation(f"keypoint annotation {path}: <{node.tag} {name}={value!r}> is not a number") from None
  if not abs(v) <= _FLOAT32_MAX:
    raise BadAnnotation(f"keypoint annotation {path}: <{node.tag} {name}={value!r}> is not a finite float32")
  return v


def parse_voc_keypoint_xml(path: str) -> dict[str, Any]:
  """One Bourdev & Malik annotation file -> {image, class, box, points: {name: (x, y, visible)}}."""
  try:
    root = ET.parse(path).getroot()
  except (ET.ParseError, LookupError, UnicodeError) as e:  # LookupError: an unknown declared encoding
    raise BadAnnotation(f"keypoint annotation {path} is not valid XML: {e}") from None
  fields = {}
  for tag in ("image", "category"):
    node = root.find(tag)
    if node is None or not (node.text or "").strip():
      raise BadAnnotation(f"keypoint annotation {path} lacks the <{tag}> field")
    fields[tag] = node.text.strip()
  bounds = root.find("visible_bounds")
  if bounds is None:
    raise BadAnnotation(f"keypoint annotation {path} lacks the <visible_bounds> field (the object box)")
  x0, y0 = _float_attr(bounds, "xmin", path), _float_attr(bounds, "ymin", path)
  w, h = _float_attr(bounds, "width", path), _float_attr(bounds, "height", path)
  if not (w > 0 and h > 0):
    raise BadAnnotation(f"keypoint annotation {path}: empty <visible_bounds> {w}x{h}")
  kps = root.find("keypoints")
  if kps is None:
    raise BadAnnotation(f"keypoint annotation {path} lacks the <keypoints> field")
  points = {}
  for kp in kps.findall("keypoint"):
    name = kp.get("name")
    if not name:
      raise BadAnnotation(f"keypoint annotation {path}: a <keypoint> lacks its name")
    if name in points:
      raise BadAnnotation(f"keypoint annotation {path}: keypoint {name!r} appears twice")
    vis = kp.get("visible", "1").strip()
    if vis not in ("0", "1"):
      raise BadAnnotation(f"keypoint annotation {path}: keypoint {name!r} has visible={vis!r}, not 0 or 1")
    points[name] = (_float_attr(kp, "x", path), _float_attr(kp, "y", path), vis == "1")
  return {"image": fields["image"], "class": fields["category"], "box": (x0, y0, x0 + w, y0 + h),
          "points": points}


def _class_filter(value: str) -> set[str] | None:
  return set(value.split("+")) if value else None


@data.register("voc_keypoints")
def open_voc_keypoints(paths: list[str], **unused) -> data.Source:
  spec, annot_dir, jpeg_dir, opts = _parse("voc_keypoints", paths, "ANNOTATIONS_DIR,JPEG_DIR[,list=FILE][,classes=a+b]",
                                           {"list": "", "classes": ""})
  if not os.path.isdir(annot_dir):
    raise FileNotFoundError(f"{spec}: annotation folder {annot_dir} not found")
  keep_images = None
  if opts["list"]:
    keep_images = {line.split()[0] for line in read_text(opts["list"], "image list").splitlines() if line.strip()}
  keep_classes = _class_filter(opts["classes"])
  parsed = []
  for cls in sorted(os.listdir(annot_dir)):
    cdir = os.path.join(annot_dir, cls)
    if not os.path.isdir(cdir) or (keep_classes is not None and cls not in keep_classes):
      continue
    for name in sorted(os.listdir(cdir)):
      if not name.endswith(".xml"):
        continue
      path = os.path.join(cdir, name)
      ann = parse_voc_keypoint_xml(path)
      if ann["class"] != cls:
        raise BadAnnotation(f"keypoint annotation {path} has category {ann['class']!r} but lies in folder {cls!r}")
      if keep_images is not None and ann["image"] not in keep_images:
        continue
      parsed.append((cls, os.path.splitext(name)[0], path, ann))
  if not parsed:
    raise BadAnnotation(f"{spec}: no keypoint annotations found")
  names = {}
  for cls, _, _, ann in parsed:
    names.setdefault(cls, set()).update(ann["points"])
  names = {cls: tuple(sorted(n)) for cls, n in names.items()}
  records = []
  for cls, stem, path, ann in parsed:
    kn = names[cls]
    kp = np.zeros((len(kn), 2), np.float32)
    vis = np.zeros(len(kn), bool)
    for j, n in enumerate(kn):
      if n in ann["points"]:
        x, y, v = ann["points"][n]
        kp[j], vis[j] = (x, y), v
    records.append({"id": f"{cls}/{stem}", "class": cls, "box": np.asarray(ann["box"], np.float32),
                    "keypoints": kp, "visible": vis, "keypoint_names": kn, "file": ann["image"]})
  key = f"voc_keypoints:{os.path.abspath(annot_dir)},{os.path.abspath(jpeg_dir)},{opts['list']},{opts['classes']}"
  return _records_source(key, records, lambda r: os.path.join(jpeg_dir, r["file"] + ".jpg"))


def _scalar_id(value: Any) -> bool:
  return isinstance(value, (int, str)) and not isinstance(value, bool)


def _need(obj: Any, key: str, path: str, what: str, kind: type | None = None) -> Any:
  """obj[key], checked to exist (and be of `kind`); BadAnnotation naming file and field otherwise."""
  if not isinstance(obj, dict):
    raise BadAnnotation(f"keypoint annotations {path}: {what} is a {type(obj).__name__}, not an object")
  if key not in obj:
    raise BadAnnotation(f"keypoint annotations {path}: {what} lacks the field {key!r}")
  value = obj[key]
  if kind is not None and (not isinstance(value, kind) or (kind is int and isinstance(value, bool))):
    raise BadAnnotation(f"keypoint annotations {path}: {what} has {key} {_show(value)}, expected {kind.__name__}")
  return value


def _show(value: Any) -> str:
  text = repr(value)
  return text if len(text) <= 60 else text[:57] + "..."


def _numbers(value: Any, path: str, what: str, field: str) -> np.ndarray:
  """A JSON list of finite numbers -> float64 array; BadAnnotation otherwise."""
  if not isinstance(value, list) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
    raise BadAnnotation(f"keypoint annotations {path}: {what} has {field} {_show(value)}, expected a list of numbers")
  try:
    out = np.array(value, np.float64)
  except OverflowError:  # an integer beyond float64
    out = np.array([np.inf])
  if not (np.abs(out) <= _FLOAT32_MAX).all():
    raise BadAnnotation(f"keypoint annotations {path}: {what} has a non-finite or huge value in {field}")
  return out


def box_from_keypoints(points: np.ndarray, margin: float = BOX_MARGIN) -> np.ndarray | None:
  """(x0, y0, x1, y1): the extent of points (n, 2) widened by margin x its longer side on every
  side; None when the points coincide (no extent)."""
  lo, hi = points.min(0), points.max(0)
  side = float((hi - lo).max())
  if not side > 0:
    return None
  return np.concatenate([lo - margin * side, hi + margin * side]).astype(np.float32)


def _coco_images(doc: dict, path: str) -> dict[Any, dict[str, Any]]:
  out = {}
  for im in _need(doc, "images", path, "the file", list):
    iid = _need(im, "id", path, "an image")
    if not _scalar_id(iid):
      raise BadAnnotation(f"keypoint annotations {path}: image id {_show(iid)} is not an integer or string")
    what = f"image {iid}"
    if iid in out:
      raise BadAnnotation(f"keypoint annotations {path}: two images have id {iid!r}")
    name = _need(im, "file_name", path, what, str)
    if not name.strip() or "\0" in name:
      raise BadAnnotation(f"keypoint annotations {path}: {what} has file_name {_show(name)}")
    size = None
    if "width" in im or "height" in im:
      w, h = _need(im, "width", path, what, int), _need(im, "height", path, what, int)
      if not (w > 0 and h > 0):
        raise BadAnnotation(f"keypoint annotations {path}: {what} has size {w}x{h}")
      size = (h, w)
    out[iid] = {"file": name, "size": size}
  return out


def _coco_categories(doc: dict, path: str) -> dict[Any, tuple[str, tuple[str, ...]]]:
  out = {}
  for c in _need(doc, "categories", path, "the file", list):
    cid = _need(c, "id", path, "a category")
    if not _scalar_id(cid) or cid in out:
      raise BadAnnotation(f"keypoint annotations {path}: category id {_show(cid)} is not a unique integer or string")
    name = _need(c, "name", path, f"category {cid}", str)
    names = _need(c, "keypoints", path, f"category {cid}", list)
    if not name or "/" in name or not all(isinstance(n, str) and n for n in names) or len(set(names)) != len(names):
      raise BadAnnotation(f"keypoint annotations {path}: category {cid} needs a name without '/' and distinct, "
                          f"non-empty keypoint names; got {_show(name)}, {_show(names)}")
    out[cid] = (name, tuple(names))
  return out


def read_coco_keypoints(path: str, min_v: int = 1, classes: set[str] | None = None
                        ) -> tuple[list[dict[str, Any]], dict[str, int]]:
  """Parses a COCO keypoint file -> (object records, counts of the objects left out by kind).

  A record holds id 'CLASS/IMAGEID_ANNID', class, box, keypoints (K, 2) float32, visible (K,),
  keypoint_names, file (the image's file_name) and size ((height, width) or None).
  """
  if min_v not in (1, 2):
    raise ValueError(f"min_v must be 1 (labelled) or 2 (visible), got {min_v}")
  text = read_text(path, "keypoint annotation file")
  try:
    doc = json.loads(text)
  except ValueError as e:  # JSONDecodeError, or a number of over 4300 digits
    raise BadAnnotation(f"keypoint annotations {path} are not valid JSON: {e}") from None
  except RecursionError:
    raise BadAnnotation(f"keypoint annotations {path}: JSON nested too deeply") from None
  images, categories = _coco_images(doc, path), _coco_categories(doc, path)
  records, seen = [], set()
  left_out = {"crowd": 0, "no_visible_keypoints": 0, "no_box": 0, "other_class": 0}
  for n, a in enumerate(_need(doc, "annotations", path, "the file", list)):
    if not isinstance(a, dict):
      raise BadAnnotation(f"keypoint annotations {path}: annotation {n} is a {type(a).__name__}, not an object")
    aid = a.get("id", n)
    if not _scalar_id(aid):
      raise BadAnnotation(f"keypoint annotations {path}: annotation {n} has id {_show(aid)}")
    what = f"annotation {aid}"
    crowd = _need(a, "iscrowd", path, what, int) if "iscrowd" in a else 0
    if crowd not in (0, 1):
      raise BadAnnotation(f"keypoint annotations {path}: {what} has iscrowd {_show(crowd)}, not 0 or 1")
    cid, iid = _need(a, "category_id", path, what), _need(a, "image_id", path, what)
    if not _scalar_id(cid) or cid not in categories:
      raise BadAnnotation(f"keypoint annotations {path}: {what} has unknown category_id {_show(cid)}")
    if not _scalar_id(iid) or iid not in images:
      raise BadAnnotation(f"keypoint annotations {path}: {what} has unknown image_id {_show(iid)}")
    if crowd:
      left_out["crowd"] += 1
      continue
    cls, kn = categories[cid]
    if classes is not None and cls not in classes:
      left_out["other_class"] += 1
      continue
    flat = _numbers(_need(a, "keypoints", path, what), path, what, "keypoints")
    if flat.shape != (3 * len(kn),):
      raise BadAnnotation(f"keypoint annotations {path}: {what} has {flat.size} keypoint values, expected "
                          f"3 x {len(kn)} for category {cls!r}")
    triples = flat.reshape(-1, 3)
    if not np.isin(triples[:, 2], (0, 1, 2)).all():
      raise BadAnnotation(f"keypoint annotations {path}: {what} has visibility flags "
                          f"{sorted(set(triples[:, 2].tolist()) - {0, 1, 2})[:5]}, not 0, 1 or 2")
    vis = triples[:, 2] >= min_v
    if not vis.any():
      left_out["no_visible_keypoints"] += 1
      continue
    box = None
    if a.get("bbox") is not None:
      bbox = _numbers(a["bbox"], path, what, "bbox")
      if bbox.shape != (4,):
        raise BadAnnotation(f"keypoint annotations {path}: {what} has bbox {_show(a['bbox'])}, expected [x, y, w, h]")
      if bbox[2] > 0 and bbox[3] > 0:
        box = np.array([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]], np.float32)
    if box is None:
      box = box_from_keypoints(triples[vis, :2])
      if box is None:
        left_out["no_box"] += 1
        continue
    rid = f"{cls}/{iid}_{aid}"
    if rid in seen:
      raise BadAnnotation(f"keypoint annotations {path}: {what} of image {iid} appears twice")
    seen.add(rid)
    records.append({"id": rid, "class": cls, "box": box, "keypoints": triples[:, :2].astype(np.float32),
                    "visible": vis, "keypoint_names": kn, **images[iid]})
  return records, left_out


@data.register("coco_keypoints")
def open_coco_keypoints(paths: list[str], **unused) -> data.Source:
  spec, path, image_dir, opts = _parse("coco_keypoints", paths, "ANNOTATIONS.json,IMAGE_DIR[,min_v=1][,classes=a+b]",
                                       {"min_v": 1, "classes": ""})
  records, left_out = read_coco_keypoints(path, opts["min_v"], _class_filter(opts["classes"]))
  counts = ", ".join(f"{v} {k.replace('_', ' ')}" for k, v in left_out.items() if v)
  logging.info("%s: %d objects read%s", spec, len(records), f"; left out: {counts}" if counts else "")
  if not records:
    raise BadAnnotation(f"{spec}: no objects with visible keypoints" + (f" (left out: {counts})" if counts else ""))
  key = f"coco_keypoints:{os.path.abspath(path)},{os.path.abspath(image_dir)},{opts['min_v']},{opts['classes']}"
  return _records_source(key, records, lambda r: os.path.join(image_dir, r["file"]))


_SIDE = {"left": "right", "right": "left", "l": "r", "r": "l"}
_TOKENS = re.compile(r"([^A-Za-z0-9]+)")


def _mirror_token(token: str) -> str:
  low = token.lower()
  if low in _SIDE:
    other = _SIDE[low]
  else:
    prefix = next((p for p in ("left", "right") if low.startswith(p) and low[len(p):].isalpha()), None)
    if prefix is None:
      return token
    other = _SIDE[prefix] + low[len(prefix):]
  if token.isupper():
    return other.upper()
  return other.capitalize() if token[0].isupper() else other


def mirror_name(name: str) -> str:
  """The keypoint name with left and right swapped ('left_eye' <-> 'right_eye', 'L_F_Paw' <->
  'R_F_Paw', 'lefteye' <-> 'righteye'); names without a side are their own mirror."""
  return "".join(_mirror_token(t) if i % 2 == 0 else t for i, t in enumerate(_TOKENS.split(name)))


def flip_permutation(names: Sequence[str]) -> np.ndarray:
  """perm (K,) int: after a horizontal flip of the image (x -> width - x), keypoint k of the
  flipped object is the flipped keypoint perm[k] ('left_wrist' takes what was 'right_wrist').

  So `keypoints_flipped = flip_x(keypoints)[perm]`, `visible_flipped = visible[perm]`. Sides are
  read from the names (left/right or L/R as a word or a prefix, any case); a sided name whose
  mirror is missing raises ValueError. COCO_PERSON_KEYPOINTS and LSP_JOINTS name the keypoints
  of COCO people and of LSP/LSPET.
  """
  names = list(names)
  if len(set(names)) != len(names):
    raise ValueError(f"keypoint names must be distinct, got {names}")
  index = {n: k for k, n in enumerate(names)}
  perm = np.empty(len(names), np.int64)
  for k, n in enumerate(names):
    m = mirror_name(n)
    if m not in index:
      raise ValueError(f"keypoint {n!r} has a side but its mirror {m!r} is not among the names {names}")
    perm[k] = index[m]
  return perm


def flip_example(ex: data.Example) -> data.Example:
  """The example mirrored left to right: its image, its box and its keypoints (x -> width - x in
  pixel-corner coordinates), with each keypoint taking its mirror's place (`flip_permutation` of
  its `keypoint_names`: the flipped 'left_wrist' is where the mirrored right wrist is) and its
  visibility with it. The id gains '/flip'."""
  width = ex["image"].shape[1]
  perm = flip_permutation(ex["keypoint_names"])
  kp = np.array(ex["keypoints"], np.float32)
  kp[:, 0] = width - kp[:, 0]
  x0, y0, x1, y1 = np.asarray(ex["box"], np.float32)
  return {**ex, "image": np.ascontiguousarray(ex["image"][:, ::-1]), "keypoints": kp[perm],
          "visible": np.asarray(ex["visible"], bool)[perm],
          "box": np.array([width - x1, y0, width - x0, y1], np.float32), "id": f"{ex['id']}/flip"}


def canonical_order(points: np.ndarray, centre: np.ndarray) -> np.ndarray:
  """Indices ordering points clockwise (image coordinates) from the one nearest straight up."""
  angle = np.arctan2(points[:, 1] - centre[1], points[:, 0] - centre[0])  # up is -pi/2
  rel = np.mod(angle + math.pi / 2, 2 * math.pi)  # clockwise from straight up, in [0, 2 pi)
  order = np.argsort(rel, kind="stable")
  first = int(np.argmin(np.minimum(rel, 2 * math.pi - rel)[order]))
  return np.roll(order, -first)


def synthetic_object(obj: dict[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  """Keypoints (4, 2) and visibility of a synthetic object, symmetric shapes canonically ordered."""
  kp, vis = np.asarray(obj["keypoints"], np.float32), np.asarray(obj["visible"], bool)
  cls = obj["class"]
  if cls == 1:  # disks are drawn unrotated: right, bottom, left, top are already well defined
    return kp, vis
  k = 3 if cls == 3 else 4  # triangles: 3 vertices, the 4th entry is a repeat, never visible
  order = canonical_order(kp[:k], np.asarray(obj["centre"]))
  return np.concatenate([kp[:k][order], kp[k:]]), np.concatenate([vis[:k][order], vis[k:]])


@data.register("synthetic_keypoints")
def open_synthetic_keypoints(paths: list[str], **unused) -> data.Source:
  spec = "synthetic_keypoints:" + ",".join(paths)
  opts = data.parse_options(paths, synthetic.DEFAULTS, spec)
  scenes = data.open_source("synthetic:" + ",".join(f"{k}={v}" for k, v in opts.items()))
  index, ids = [], []  # (scene, object) of every object with a visible keypoint
  for s in range(len(scenes)):
    for o, obj in enumerate(scenes[s]["objects"]):
      if np.any(obj["visible"]):
        index.append((s, o))
        ids.append(f"{synthetic.CLASSES[obj['class']]}/{s}_{o}")
  names = tuple(f"kp{j}" for j in range(synthetic.NUM_KEYPOINTS))

  def load(i: int) -> data.Example:
    s, o = index[i]
    scene = scenes[s]
    obj = scene["objects"][o]
    kp, vis = synthetic_object(obj)
    cls = synthetic.CLASSES[obj["class"]]
    return {"image": scene["image"], "box": np.asarray(obj["box"], np.float32), "keypoints": kp,
            "visible": vis, "class": cls, "keypoint_names": names, "id": f"{cls}/{s}_{o}"}
  return data.Source(f"synthetic_keypoints:v1|{scenes.spec}", ids, load)
