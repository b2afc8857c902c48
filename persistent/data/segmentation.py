"""Semantic segmentation sources: `voc_seg:VOC2012_DIR[:SPLIT]` and `camvid:DIR`.

Examples carry `image` (uint8 RGB, H x W x 3), `label` (uint8 H x W class ids, VOID = 255 for
pixels that are not scored), `classes` (the class names; ids index this tuple) and `id`.

- `voc_seg:VOC2012_DIR[:SPLIT]`: PASCAL VOC 2012 (`VOCdevkit/VOC2012`), the image ids listed in
  `ImageSets/Segmentation/SPLIT.txt` (SPLIT defaults to `train`; `val`, `trainval`, ...),
  images from `JPEGImages/ID.jpg`, labels from the palette PNGs `SegmentationClass/ID.png`, whose
  palette indices are the class ids (0 background, 1..20 the object classes, 255 void / object
  boundaries).
- `camvid:DIR`: the SegNet release of CamVid: the images in DIR (`.png`/`.jpg`), their label maps
  as grey-level PNGs of the same stem in the sibling folder `DIR + 'annot'` (`train` ->
  `trainannot`); ids 0..10 are the 11 classes and 11 is void (mapped to 255 here).

Labels are checked on load: a label map that is not an 8-bit palette or grey PNG, whose size
differs from its image, or which holds ids outside the classes (other than void), raises
`BadAnnotation` (a ValueError) naming the file; label maps pass the image size limit of
persistent/data/images.py. Images are read as stored, without EXIF rotation, as the label maps
are. `VOID` is the project's one void label: the tasks and metrics import it from here.
"""
from __future__ import annotations

import os

import numpy as np
from persistent import data
from persistent.data import images as image_lib
from persistent.data.errors import BadAnnotation, read_text

VOID = 255

VOC_CLASSES = ("background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat",
               "chair", "cow", "diningtable", "dog", "horse", "motorbike", "person", "pottedplant",
               "sheep", "sofa", "train", "tvmonitor")
CAMVID_CLASSES = ("sky", "building", "pole", "road", "pavement", "tree", "sign_symbol", "fence",
                  "car", "pedestrian", "bicyclist")
CAMVID_VOID = 11


def read_label(path: str, modes: tuple[str, ...] = ("P", "L")) -> np.ndarray:
  """The raw index / grey values (H, W) uint8 of a label PNG (palette indices, not colours)."""
  def indices(im) -> np.ndarray:
    if im.mode not in modes:
      raise BadAnnotation(f"label map {path} has image mode {im.mode!r}; expected one of {modes} "
                          "(palette or 8-bit grey class ids)")
    return np.asarray(im, dtype=np.uint8)
  return image_lib.load(path, indices, what="label map")


def check_label(label: np.ndarray, image: np.ndarray, num_classes: int, path: str) -> None:
  """Raises BadAnnotation naming `path` if the label map does not fit the image or the classes."""
  if label.shape != image.shape[:2]:
    raise BadAnnotation(f"label map {path} has size {label.shape[1]}x{label.shape[0]} (WxH) but its image "
                     f"is {image.shape[1]}x{image.shape[0]}")
  bad = (label >= num_classes) & (label != VOID)
  if bad.any():
    values = sorted(set(np.unique(label[bad]).tolist()))
    raise BadAnnotation(f"label map {path} holds ids {values[:10]} outside the {num_classes} classes "
                     f"0..{num_classes - 1} (void is {VOID})")


def _example(image_path: str, label_path: str, classes: tuple[str, ...], void: int | None,
             example_id: str) -> data.Example:
  image = image_lib.read_image(image_path, exif=False)
  label = read_label(label_path)
  if void is not None and void != VOID:
    if (label == VOID).any():
      raise BadAnnotation(f"label map {label_path} holds id {VOID}, outside the {len(classes)} classes "
                       f"0..{len(classes) - 1} and the void id {void}")
    label = np.where(label == void, VOID, label).astype(np.uint8)
  check_label(label, image, len(classes), label_path)
  return {"image": image, "label": label, "classes": classes, "id": example_id}


def _split_path(path: str, default: str) -> tuple[str, str]:
  """'DIR[:SPLIT]' -> (DIR, SPLIT); a colon inside a path component is left alone."""
  head, colon, tail = path.rpartition(":")
  if colon and tail and "/" not in tail and os.sep not in tail:
    return head, tail
  return path, default


@data.register("voc_seg")
def open_voc_seg(paths: list[str], **unused) -> data.Source:
  if len(paths) != 1:
    raise ValueError(f"voc_seg takes one folder, 'voc_seg:VOC2012_DIR[:SPLIT]'; got {paths}")
  root, split = _split_path(paths[0], "train")
  list_file = os.path.join(root, "ImageSets", "Segmentation", f"{split}.txt")
  if not os.path.isfile(list_file):
    raise FileNotFoundError(f"voc_seg: no split list {list_file} (is {root} a VOC2012 folder, with "
                            "JPEGImages/, SegmentationClass/ and ImageSets/Segmentation/?)")
  ids = [line.split()[0] for line in read_text(list_file, "split list").splitlines() if line.strip()]
  if not ids:
    raise ValueError(f"voc_seg: split list {list_file} is empty")

  def load(i: int) -> data.Example:
    stem = ids[i]
    return _example(os.path.join(root, "JPEGImages", stem + ".jpg"),
                    os.path.join(root, "SegmentationClass", stem + ".png"), VOC_CLASSES, None,
                    f"voc_seg:{stem}")
  spec = f"voc_seg:{os.path.abspath(root)}:{split}"
  return data.Source(spec, [f"voc_seg:{s}" for s in ids], load)


@data.register("camvid")
def open_camvid(paths: list[str], **unused) -> data.Source:
  if len(paths) != 1:
    raise ValueError(f"camvid takes one folder, 'camvid:DIR'; got {paths}")
  folder = os.path.normpath(paths[0])
  annot = folder + "annot"
  if not os.path.isdir(folder):
    raise FileNotFoundError(f"camvid: image folder {folder} not found")
  if not os.path.isdir(annot):
    raise FileNotFoundError(f"camvid: label folder {annot} (the image folder's name + 'annot') not found")
  names = sorted(n for n in os.listdir(folder) if n.lower().endswith(image_lib.IMAGE_EXTENSIONS))
  if not names:
    raise ValueError(f"camvid: no images in {folder}")
  labels = []
  for n in names:
    path = os.path.join(annot, os.path.splitext(n)[0] + ".png")
    if not os.path.isfile(path):
      raise FileNotFoundError(f"camvid: image {os.path.join(folder, n)} has no label map {path}")
    labels.append(path)

  def load(i: int) -> data.Example:
    return _example(os.path.join(folder, names[i]), labels[i], CAMVID_CLASSES, CAMVID_VOID,
                    f"camvid:{names[i]}")
  return data.Source(f"camvid:{os.path.abspath(folder)}", [f"camvid:{n}" for n in names], load)
