"""`imagefolder:DIR[,DIR...]`: every image under each DIR (recursively), sorted by path."""
from __future__ import annotations

import os

from persistent import data
from persistent.data import images


def list_images(directory: str) -> list[str]:
  if not os.path.isdir(directory):
    raise FileNotFoundError(f"image folder does not exist: {directory}")
  found = []
  for root, dirs, files in os.walk(directory):
    dirs.sort()
    found += [os.path.join(root, f) for f in files if f.lower().endswith(images.IMAGE_EXTENSIONS)]
  if not found:
    raise ValueError(f"no images ({', '.join(images.IMAGE_EXTENSIONS)}) under {directory}")
  return sorted(found)


@data.register("imagefolder")
def open_imagefolder(paths: list[str], **unused) -> data.Source:
  if not paths:
    raise ValueError("imagefolder needs a folder: 'imagefolder:DIR[,DIR...]'")
  files = [f for d in paths for f in list_images(d)]

  def load(i: int) -> data.Example:
    return {"image": images.read_image(files[i]), "id": files[i]}
  stamp = data.digest([(f, os.path.getsize(f)) for f in files])
  return data.Source(f"imagefolder:{','.join(paths)}@{stamp}", files, load)
