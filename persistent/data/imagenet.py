"""ImageNet-1k class indices and the TF-style evaluation crop.

`imagenet_classes.txt` lists the 1000 ILSVRC-2012 synset ids (wnids) sorted, one a line; a class
index is a wnid's position in that list (the order of the standard 1000-way classifiers).
"""
from __future__ import annotations

import functools
import os
import re

import numpy as np
from PIL import Image

CLASSES_FILE = os.path.join(os.path.dirname(__file__), "imagenet_classes.txt")
NUM_CLASSES = 1000
_WNID = re.compile(r"n\d{8}")


@functools.cache
def wnids() -> tuple[str, ...]:
  """The 1000 ImageNet-1k wnids, sorted."""
  with open(CLASSES_FILE) as f:
    ids = tuple(line.strip() for line in f if line.strip())
  if len(ids) != NUM_CLASSES or list(ids) != sorted(ids) or len(set(ids)) != NUM_CLASSES:
    raise ValueError(f"{CLASSES_FILE} must list {NUM_CLASSES} distinct sorted wnids")
  return ids


@functools.cache
def _index() -> dict[str, int]:
  return {w: i for i, w in enumerate(wnids())}


def wnid_to_index(wnid: str) -> int:
  """Class index (0..999) of an ImageNet-1k wnid such as 'n01440764'."""
  try:
    return _index()[wnid]
  except KeyError:
    raise KeyError(f"{wnid!r} is not one of the 1000 ImageNet-1k wnids") from None


def label_from_filename(path: str) -> int:
  """Class index from a file named 'WNID_anything.ext' (e.g. 'n01440764_tench.jpg')."""
  name = os.path.basename(path)
  m = _WNID.match(name)
  if m is None or (len(name) > 9 and name[9] not in "_.-"):
    raise ValueError(f"file name {name!r} does not start with an ImageNet wnid (nXXXXXXXX_...)")
  return wnid_to_index(m.group(0))


def eval_crop(image: np.ndarray, size: int = 224, crop_padding: int = 32) -> np.ndarray:
  """TF EfficientNet's evaluation crop: the central square of side size/(size+crop_padding) of
  the shorter side, resized (bicubic) to size x size. uint8 (H, W, 3) -> uint8 (size, size, 3)."""
  h, w = image.shape[:2]
  side = int(size / (size + crop_padding) * min(h, w))
  if side < 1:
    raise ValueError(f"image of size {h}x{w} is too small to crop")
  top, left = (h - side + 1) // 2, (w - side + 1) // 2
  crop = image[top:top + side, left:left + side]
  if side == size:
    return np.ascontiguousarray(crop)
  return np.asarray(Image.fromarray(crop).resize((size, size), Image.BICUBIC))
