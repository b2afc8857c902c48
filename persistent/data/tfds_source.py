"""`tfds:NAME[/CONFIG][:SPLIT][,key=value...]`: a TensorFlow Datasets split as a lazy source.

Examples are read with random access through `tfds.data_source` (array_record files; no
TensorFlow needed to read), so opening costs nothing and the thread pool of `data.iterate`
decodes images in parallel (JPEG/PNG bytes are decoded here with Pillow, as for image files).
SPLIT defaults to 'train' and may use TFDS's own slicing ('validation[:1000]'); a trailing slice
after the whole spec is handled by `data.open_source` as for every source:
'tfds:imagenet2012:validation[:49000]'.

Options (items after the dataset):
  data_dir=DIR   where the prepared dataset lives (default: TFDS_DATA_DIR or ~/tensorflow_datasets)
  download=0|1   prepare the dataset when it is missing (default 0: a clear error instead)
  order=index|file_name  example order: the files' record order (default) or sorted by the
                 dataset's file name feature (one pass over the records when opened; ImageNet's
                 validation images are then in ILSVRC2012_val_00000001.JPEG ... order, as the paper's
                 'first 49,000' split assumes).

Each example has 'image' (uint8 RGB HxWx3) and 'id' ('tfds:NAME[/CONFIG]:SPLIT:INDEX'), plus per
dataset:
  celeb_a      'attributes' {40 CelebA attribute names: 0.0/1.0, plus 'yaw', 'roll', 'pitch'
               estimated from the five landmarks (see attributes.pose_from_landmarks5)},
               'landmarks_5' (5, 2) float32 pixel (x, y): left eye, right eye, nose, left and right
               mouth corner; 'identity' int.
  imagenet2012 'label' (0..999, the sorted-wnid index as in data/imagenet.py), 'file_name'.
  the300w_lp   'landmarks' (68, 2) float32 pixel (x, y) (TFDS stores them divided by 450, the image
               side; multiplied back here), 'attributes' {'pitch', 'yaw', 'roll'} in radians from
               pose_params[:3]; the other 3DMM parameters pass through unchanged.
  voc          'file_name', 'boxes' (n, 4) float32 pixel (x0, y0, x1, y1), 'box_labels' (n,) class
               ids (0..19 over VOC's 20 classes, no background), 'labels' image-level class ids.
               TFDS's voc has no segmentation masks: use the segmentation sources for those.
  any other    every feature passes through under its own name (text as str, scalars as Python
               numbers), and 'label' / 'file_name' / 'image/filename' are recognised.

TensorFlow is imported only when a tfds source is opened and only if it is installed (TFDS can use
it internally); it is then kept off the GPU (`tf.config.set_visible_devices([], 'GPU')`) so that
the accelerator stays with JAX.
"""
from __future__ import annotations

import functools
import importlib.util
import logging
import os
import threading
from typing import Any

import numpy as np
from PIL import Image

from persistent import data
from persistent.data import attributes as attributes_lib
from persistent.data import images
from persistent.data.errors import BadAnnotation, BadImage

DEFAULTS = {"data_dir": "", "download": 0, "order": "index"}
CELEBA_LANDMARKS = ("lefteye", "righteye", "nose", "leftmouth", "rightmouth")
_FLOAT32_MAX = float(np.finfo(np.float32).max)


@functools.cache
def tensorflow_off_gpu() -> bool:
  """Imports TensorFlow if installed and hides the GPUs from it; True when it was imported."""
  if importlib.util.find_spec("tensorflow") is None:
    return False
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  import tensorflow as tf
  try:
    tf.config.set_visible_devices([], "GPU")
  except RuntimeError as e:  # TensorFlow already initialised its devices elsewhere
    logging.warning("could not hide the GPUs from TensorFlow (%s); it may reserve GPU memory", e)
  return True


def parse(paths: list[str], spec: str) -> tuple[str, str | None, str, dict[str, Any]]:
  """['NAME[/CONFIG][:SPLIT]', 'key=value', ...] -> (name, config, split, options)."""
  if not paths:
    raise ValueError("tfds needs a dataset: 'tfds:NAME[/CONFIG][:SPLIT][,data_dir=DIR]', "
                     "e.g. 'tfds:celeb_a:train' or 'tfds:imagenet2012:validation'")
  head, _, split = paths[0].partition(":")
  name, _, config = head.partition("/")
  if not name or "=" in head:
    raise ValueError(f"bad dataset {paths[0]!r} in {spec!r}; expected NAME[/CONFIG][:SPLIT]")
  opts = data.parse_options(paths[1:], DEFAULTS, spec)
  if opts["order"] not in ("index", "file_name"):
    raise ValueError(f"option order in {spec!r} must be 'index' or 'file_name', got {opts['order']!r}")
  return name, config or None, split or "train", opts


def decode_image(value: Any, where: str) -> np.ndarray:
  """Encoded image bytes, or an already decoded uint8 array (H, W, C) with C in 1..4 -> uint8 RGB.

  Bytes follow the rules of persistent/data/images.py (modes, size limit; the stored pixel grid,
  without EXIF rotation, as TFDS's own decoder gives it); arrays: grey is replicated and alpha
  composited over white, as there.
  """
  if isinstance(value, np.ndarray) and value.dtype != object:
    if value.dtype != np.uint8 or value.ndim != 3 or not 1 <= value.shape[2] <= 4:
      raise BadImage(f"cannot decode the image of {where}: a decoded image must be uint8 (H, W, 1..4), "
                     f"got {value.dtype} {value.shape}")
    return images.to_rgb(Image.fromarray(value[..., 0] if value.shape[2] == 1 else value))
  if isinstance(value, np.ndarray) and value.ndim == 0:
    value = value.item()
  if not isinstance(value, (bytes, bytearray, memoryview)):
    raise BadImage(f"cannot decode the image of {where}: expected encoded bytes, got {type(value).__name__}")
  return images.decode(bytes(value), where)


def _py(value: Any) -> Any:
  if isinstance(value, bytes):
    return value.decode("utf-8", "replace")
  if isinstance(value, (np.ndarray, np.generic)) and value.ndim == 0:
    return _py(value.item())
  if isinstance(value, dict):
    return {k: _py(v) for k, v in value.items()}
  return value


def _feature(raw: Any, key: str, where: str) -> Any:
  """raw[key]; BadAnnotation naming the example and the features it has otherwise."""
  if not isinstance(raw, dict):
    raise BadAnnotation(f"{where}: expected a dict of features, got {type(raw).__name__}")
  if key not in raw:
    raise BadAnnotation(f"{where}: no feature {key!r} (features: {', '.join(map(str, raw))})")
  return raw[key]


def _numbers(value: Any, where: str, key: str, shape: tuple[int | None, ...]) -> np.ndarray:
  """A finite float64 array of the given shape (None: any length) from a feature's value."""
  try:
    arr = np.asarray(value, dtype=np.float64)
  except (TypeError, ValueError, OverflowError):
    raise BadAnnotation(f"{where}: feature {key!r} is not numeric ({type(value).__name__})") from None
  if arr.ndim != len(shape) or any(n is not None and n != m for n, m in zip(shape, arr.shape)):
    want = "x".join("n" if n is None else str(n) for n in shape) or "a scalar"
    raise BadAnnotation(f"{where}: feature {key!r} has shape {arr.shape}, expected {want}")
  if not (np.abs(arr) <= _FLOAT32_MAX).all():  # NaN, inf, or what float32 would make inf
    raise BadAnnotation(f"{where}: feature {key!r} holds non-finite or huge values")
  return arr


def _celeb_a(raw: dict[str, Any], ex: data.Example, where: str) -> None:
  lm = _feature(raw, "landmarks", where)
  marks = np.array([[_numbers(_feature(lm, f"{p}_{c}", where), where, f"landmarks/{p}_{c}", ())
                     for c in "xy"] for p in CELEBA_LANDMARKS], np.float32)
  attrs = _feature(raw, "attributes", where)
  if not isinstance(attrs, dict):
    raise BadAnnotation(f"{where}: feature 'attributes' is a {type(attrs).__name__}, not a dict")
  attrs = {str(k): float(_numbers(v, where, f"attributes/{k}", ()) != 0) for k, v in attrs.items()}
  attrs.update(attributes_lib.pose_from_landmarks5(marks))
  ex.update(attributes=attrs, landmarks_5=marks)
  if "identity" in raw:
    ex["identity"] = int(_numbers(_feature(raw["identity"], "Identity_No", where), where, "identity", ()))


def _the300w_lp(raw: dict[str, Any], ex: data.Example, where: str) -> None:
  side = 450.0  # TFDS divides the landmarks by the 450-pixel image side
  for key, value in raw.items():
    if key != "image":  # the 3DMM parameters and other features, unchanged
      ex[key] = value if isinstance(value, np.ndarray) else _py(value)
  ex["landmarks"] = (_numbers(_feature(raw, "landmarks_2d", where), where, "landmarks_2d", (None, 2))
                     * side).astype(np.float32)
  pose = _numbers(_feature(raw, "pose_params", where), where, "pose_params", (None,))
  if len(pose) < 3:
    raise BadAnnotation(f"{where}: feature 'pose_params' has {len(pose)} values, expected pitch, yaw, roll first")
  pitch, yaw, roll = (float(v) for v in pose[:3])
  ex["attributes"] = {"pitch": pitch, "yaw": yaw, "roll": roll}


def _voc(raw: dict[str, Any], ex: data.Example, where: str) -> None:
  h, w = ex["image"].shape[:2]
  objects = _feature(raw, "objects", where)
  # (ymin, xmin, ymax, xmax) in [0, 1]
  bbox = _numbers(_feature(objects, "bbox", where), where, "objects/bbox", (None, 4))
  box_labels = _numbers(_feature(objects, "label", where), where, "objects/label", (len(bbox),))
  labels = _numbers(_feature(raw, "labels", where), where, "labels", (None,))
  ex["boxes"] = np.stack([bbox[:, 1] * w, bbox[:, 0] * h, bbox[:, 3] * w, bbox[:, 2] * h], 1).astype(np.float32)
  ex["box_labels"] = box_labels.astype(np.int64)
  ex["labels"] = labels.astype(np.int64)
  ex["objects"] = {k: np.asarray(v) for k, v in objects.items()}


_ADAPTERS = {"celeb_a": _celeb_a, "the300w_lp": _the300w_lp, "voc": _voc}


def to_example(name: str, raw: dict[str, Any], example_id: str) -> data.Example:
  """Maps a TFDS example (numpy, image still encoded) to this project's example dict.

  A record without the features its dataset's mapping needs, or with values of the wrong type,
  shape or non-finite, raises BadAnnotation naming the example; an undecodable image BadImage.
  """
  if not isinstance(raw, dict) or "image" not in raw:
    features = ", ".join(map(str, raw)) if isinstance(raw, dict) else type(raw).__name__
    raise BadAnnotation(f"{example_id}: TFDS dataset {name!r} has no 'image' feature (features: {features}); "
                        "tfds: sources need one")
  ex: data.Example = {"image": decode_image(raw["image"], example_id), "id": example_id}
  for key in ("file_name", "image/filename"):
    if key in raw:
      ex["file_name"] = _py(raw[key])
  adapter = _ADAPTERS.get(name)
  if adapter is not None:
    adapter(raw, ex, example_id)
  else:
    for key, value in raw.items():
      if key not in ("image", "id", "image/filename"):
        ex.setdefault(key, _py(value))
  return ex


@data.register("tfds")
def open_tfds(paths: list[str], **unused) -> data.Source:
  spec = "tfds:" + ",".join(paths)
  name, config, split, opts = parse(paths, spec)
  tensorflow_off_gpu()
  import tensorflow_datasets as tfds

  full = f"{name}/{config}" if config else name
  data_dir = os.path.expanduser(opts["data_dir"]) or None
  try:
    ds = tfds.data_source(full, split=split, data_dir=data_dir, download=bool(opts["download"]),
                          decoders={"image": tfds.decode.SkipDecoding()})
  except Exception as e:  # DatasetNotFoundError, unknown names or splits, tfrecord-only datasets
    raise ValueError(
        f"cannot open TFDS dataset {full!r} split {split!r} (data_dir {data_dir or 'default'}) for {spec!r}: "
        f"{type(e).__name__}: {e}\n(tfds: sources read array_record files with random access; prepare the "
        f"dataset with `tfds build {name} --file_format=array_record` (ImageNet: put the archives in the "
        f"manual folder first), or convert a tfrecord copy with `tfds convert_format`)") from None
  n = len(ds)
  if n == 0:
    raise ValueError(f"TFDS dataset {full!r} split {split!r} is empty")
  lock = threading.Lock()

  def raw(i: int) -> dict[str, Any]:
    with lock:  # record reads serialised; image decoding (the costly part) runs in parallel
      return ds[i]

  order = list(range(n))
  if opts["order"] == "file_name":
    names = [(lambda r: r.get("file_name", r.get("image/filename")))(raw(i)) for i in range(n)]
    if any(v is None for v in names):
      raise ValueError(f"order=file_name in {spec!r}: dataset {full!r} has no file name feature")
    order = sorted(range(n), key=lambda i: _py(names[i]))
  ids = [f"tfds:{full}:{split}:{i}" for i in range(n)]

  def load(i: int) -> data.Example:
    return to_example(name, raw(order[i]), ids[i])
  info = getattr(ds, "dataset_info", None)
  version = str(getattr(info, "version", "")) if info is not None else ""
  key = f"tfds:{full}:{split}@{version},order={opts['order']},data_dir={data_dir or ''},n={n}"
  return data.Source(key, ids, load)
