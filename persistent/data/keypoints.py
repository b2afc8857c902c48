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
  `images` (id, file_name), `annotations` (image_id, category_id, bbox [x, y, w, h], keypoints
  [x1, y1, v1, ...], iscrowd) and `categories` (id, name, keypoints: the names). A keypoint is
  visible when v >= min_v (COCO: 0 unlabelled, 1 labelled but occluded, 2 visible; the default 1
  takes every labelled point, as COCO's own evaluation does). Crowd annotations and objects
  without visible keypoints are skipped.
- `synthetic_keypoints:n=N,seed=S,size=P`: the objects of the `synthetic` scenes (exact ground
  truth, offline). Rotationally symmetric shapes get a canonical order: keypoint 0 is the one
  nearest straight up from the centre, then clockwise (in image coordinates).
"""
from __future__ import annotations

import json
import math
import os
import xml.etree.ElementTree as ET
from typing import Any, Callable

import numpy as np

from persistent import data
from persistent.data import images as image_lib
from persistent.data import synthetic


def class_of(example_id: str) -> str:
  """The class name encoded in a keypoint example's id ('CLASS/...')."""
  cls, slash, _ = example_id.partition("/")
  if not slash:
    raise ValueError(f"keypoint example id {example_id!r} does not start with 'CLASS/'")
  return cls


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
  """A source over parsed object records; images are read on access."""
  def load(i: int) -> data.Example:
    r = records[i]
    return {**r, "image": image_lib.read_image(image_path(r), exif=False)}
  return data.Source(spec, [r["id"] for r in records], load)


def _float_attr(node: ET.Element, name: str, path: str) -> float:
  value = node.get(name)
  if value is None:
    raise ValueError(f"keypoint annotation {path}: <{node.tag}> lacks the attribute {name!r}")
  try:
    return float(value)
  except ValueError:
    raise ValueError(f"keypoint annotation {path}: <{node.tag} {name}={value!r}> is not a number") from None


def parse_voc_keypoint_xml(path: str) -> dict[str, Any]:
  """One Bourdev & Malik annotation file -> {image, class, box, points: {name: (x, y, visible)}}."""
  try:
    root = ET.parse(path).getroot()
  except ET.ParseError as e:
    raise ValueError(f"keypoint annotation {path} is not valid XML: {e}") from None
  fields = {}
  for tag in ("image", "category"):
    node = root.find(tag)
    if node is None or not (node.text or "").strip():
      raise ValueError(f"keypoint annotation {path} lacks the <{tag}> field")
    fields[tag] = node.text.strip()
  bounds = root.find("visible_bounds")
  if bounds is None:
    raise ValueError(f"keypoint annotation {path} lacks the <visible_bounds> field (the object box)")
  x0, y0 = _float_attr(bounds, "xmin", path), _float_attr(bounds, "ymin", path)
  w, h = _float_attr(bounds, "width", path), _float_attr(bounds, "height", path)
  if not (w > 0 and h > 0):
    raise ValueError(f"keypoint annotation {path}: empty <visible_bounds> {w}x{h}")
  kps = root.find("keypoints")
  if kps is None:
    raise ValueError(f"keypoint annotation {path} lacks the <keypoints> field")
  points = {}
  for kp in kps.findall("keypoint"):
    name = kp.get("name")
    if not name:
      raise ValueError(f"keypoint annotation {path}: a <keypoint> lacks its name")
    vis = kp.get("visible", "1").strip()
    if vis not in ("0", "1"):
      raise ValueError(f"keypoint annotation {path}: keypoint {name!r} has visible={vis!r}, not 0 or 1")
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
    with open(opts["list"]) as f:
      keep_images = {line.split()[0] for line in f if line.strip()}
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
        raise ValueError(f"keypoint annotation {path} has category {ann['class']!r} but lies in folder {cls!r}")
      if keep_images is not None and ann["image"] not in keep_images:
        continue
      parsed.append((cls, os.path.splitext(name)[0], path, ann))
  if not parsed:
    raise ValueError(f"{spec}: no keypoint annotations found")
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


def _need(obj: dict, key: str, path: str, what: str) -> Any:
  if not isinstance(obj, dict) or key not in obj:
    raise ValueError(f"keypoint annotations {path}: {what} lacks the field {key!r}")
  return obj[key]


@data.register("coco_keypoints")
def open_coco_keypoints(paths: list[str], **unused) -> data.Source:
  spec, path, image_dir, opts = _parse("coco_keypoints", paths, "ANNOTATIONS.json,IMAGE_DIR[,min_v=1][,classes=a+b]",
                                       {"min_v": 1, "classes": ""})
  try:
    with open(path) as f:
      doc = json.load(f)
  except json.JSONDecodeError as e:
    raise ValueError(f"keypoint annotations {path} are not valid JSON: {e}") from None
  images = {}
  for im in _need(doc, "images", path, "the file"):
    images[_need(im, "id", path, "an image")] = _need(im, "file_name", path, f"image {im.get('id')}")
  categories = {}
  for c in _need(doc, "categories", path, "the file"):
    cid = _need(c, "id", path, "a category")
    categories[cid] = (str(_need(c, "name", path, f"category {cid}")),
                       tuple(_need(c, "keypoints", path, f"category {cid}")))
  keep_classes = _class_filter(opts["classes"])
  records = []
  for a in _need(doc, "annotations", path, "the file"):
    aid = a.get("id", len(records))
    what = f"annotation {aid}"
    if a.get("iscrowd", 0):
      continue
    cid, iid = _need(a, "category_id", path, what), _need(a, "image_id", path, what)
    if cid not in categories:
      raise ValueError(f"keypoint annotations {path}: {what} has unknown category_id {cid}")
    if iid not in images:
      raise ValueError(f"keypoint annotations {path}: {what} has unknown image_id {iid}")
    cls, kn = categories[cid]
    if keep_classes is not None and cls not in keep_classes:
      continue
    flat = np.asarray(_need(a, "keypoints", path, what), np.float32)
    if flat.shape != (3 * len(kn),):
      raise ValueError(f"keypoint annotations {path}: {what} has {flat.size} keypoint values, expected "
                       f"3 x {len(kn)} for category {cls!r}")
    bbox = np.asarray(_need(a, "bbox", path, what), np.float32)
    if bbox.shape != (4,) or not (bbox[2] > 0 and bbox[3] > 0):
      raise ValueError(f"keypoint annotations {path}: {what} has bbox {bbox.tolist()}, expected [x, y, w, h] "
                       "with positive size")
    triples = flat.reshape(-1, 3)
    vis = triples[:, 2] >= opts["min_v"]
    if not vis.any():
      continue
    records.append({"id": f"{cls}/{iid}_{aid}", "class": cls,
                    "box": np.array([bbox[0], bbox[1], bbox[0] + bbox[2], bbox[1] + bbox[3]], np.float32),
                    "keypoints": triples[:, :2].copy(), "visible": vis, "keypoint_names": kn,
                    "file": images[iid]})
  if not records:
    raise ValueError(f"{spec}: no objects with visible keypoints")
  key = f"coco_keypoints:{os.path.abspath(path)},{os.path.abspath(image_dir)},{opts['min_v']},{opts['classes']}"
  return _records_source(key, records, lambda r: os.path.join(image_dir, r["file"]))


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
