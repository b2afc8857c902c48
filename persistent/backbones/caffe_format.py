"""Caffe files without Caffe: `.caffemodel` (binary protobuf) and `.prototxt` (text) parsing,
blobs as arrays, and the errors every Caffe module raises.

Files are parsed with the schema in `caffe_proto`, in both the current format
(`NetParameter.layer`, string layer types, blob shapes in `BlobShape`) and the legacy V1 format
(`NetParameter.layers`, enum layer types, blob shapes in num/channels/height/width). Malformed
files raise `CaffeFormatError`; a prototxt and a caffemodel that do not fit each other raise
`CaffeMismatchError`; layers or settings the graph builder does not implement raise
`CaffeUnsupportedError`. All three are `CaffeError` (a `ValueError`) and name the file and, where
there is one, the layer.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Iterable

import numpy as np

from persistent.backbones import caffe_proto as cpb

MAX_DIM = 1 << 16         # kernel, stride, pad, dilation, spatial input size
MAX_CHANNELS = 1 << 24    # num_output, channels
MAX_INPUT = 1 << 31       # values in one input sample
MAX_PARAM = 1 << 40       # values in one parameter
MAX_BLOB = 1 << 48        # values in one activation blob


class CaffeError(ValueError):
  """A Caffe file this project cannot use; the message names the file and the layer."""


class CaffeFormatError(CaffeError):
  """A truncated, corrupted or inconsistent .caffemodel / .prototxt."""


class CaffeMismatchError(CaffeError):
  """A prototxt and a caffemodel (or an input) that do not fit each other."""


class CaffeUnsupportedError(CaffeError):
  """A layer type or setting the graph builder does not implement."""



def text(value: Any) -> str:
  """A string field as str: protobuf hands proto2 strings that are not UTF-8 over as bytes."""
  return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def texts(values: Iterable[Any]) -> tuple[str, ...]:
  return tuple(text(v) for v in values)


# ---------------------------------------------------------------------------------------------
# Reading files
# ---------------------------------------------------------------------------------------------

def _read_bytes(path: str) -> bytes:
  path = os.fspath(path)
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such file")
  if os.path.isdir(path):
    raise CaffeFormatError(f"{path}: is a folder, expected a Caffe file")
  with open(path, "rb") as f:
    return f.read()


def parse_caffemodel(data: bytes, where: str = "<caffemodel>"):
  """A binary NetParameter; `where` names the source in errors."""
  if not data:
    raise CaffeFormatError(f"{where}: empty file, not a Caffe model")
  net = cpb.NetParameter()
  try:
    net.ParseFromString(data)
  except Exception as e:  # noqa: BLE001 -- untrusted input: any parser failure is a format error
    hint = ""
    if data.lstrip().startswith((b"name:", b"layer", b"input:", b"#")):
      hint = " (this looks like a text .prototxt, not a binary .caffemodel)"
    raise CaffeFormatError(f"{where}: not a valid binary Caffe model (truncated or corrupted?)"
                           f"{hint}: {type(e).__name__}: {e}") from None
  if not net.layer and not net.layers:
    raise CaffeFormatError(f"{where}: parsed, but holds no layers: not a Caffe model, or an "
                           "empty one")
  return net


def parse_prototxt(text: str | bytes, where: str = "<prototxt>"):
  """A text-format NetParameter; fields outside the schema are skipped."""
  if isinstance(text, bytes):
    try:
      text = text.decode("utf-8")
    except UnicodeDecodeError as e:
      raise CaffeFormatError(f"{where}: not a text prototxt (not UTF-8: {e}); binary "
                             ".caffemodel files go to the caffemodel argument") from None
  try:
    net = cpb.parse_text(text)
  except Exception as e:  # noqa: BLE001 -- untrusted input: any parser failure is a format error
    raise CaffeFormatError(
        f"{where}: not a valid Caffe prototxt: {type(e).__name__}: {e}") from None
  if not net.layer and not net.layers:
    raise CaffeFormatError(f"{where}: no layers defined")
  return net


def read_caffemodel(path: str):
  """Parses a binary .caffemodel (current or legacy V1 format)."""
  return parse_caffemodel(_read_bytes(path), os.fspath(path))


def read_prototxt(path: str):
  """Parses a text .prototxt (current or legacy V1 format)."""
  return parse_prototxt(_read_bytes(path), os.fspath(path))


# ---------------------------------------------------------------------------------------------
# Blobs
# ---------------------------------------------------------------------------------------------

def _varint(buf: bytes, i: int) -> tuple[int, int]:
  result = shift = 0
  while True:
    if i >= len(buf) or shift > 63:
      raise CaffeFormatError("bad varint")
    b = buf[i]
    i += 1
    result |= (b & 0x7F) << shift
    if not b & 0x80:
      return result, i
    shift += 7


def _packed_field(blob, number: int, dtype) -> np.ndarray | None:
  """The packed repeated field `number` of a message as an array, read from its wire bytes.

  Much faster than iterating the repeated field for the 37M floats of AlexNet's fc6; None when
  the field is not (only) packed, so that the caller falls back to the slow path.
  """
  buf = blob.SerializeToString()
  chunks, i = [], 0
  itemsize = np.dtype(dtype).itemsize
  while i < len(buf):
    key, i = _varint(buf, i)
    wire, field = key & 7, key >> 3
    if wire == 0:
      _, i = _varint(buf, i)
    elif wire == 2:
      n, i = _varint(buf, i)
      if field == number:
        if n % itemsize:
          return None
        chunks.append(np.frombuffer(buf, dtype, count=n // itemsize, offset=i))
      i += n
    elif field == number or wire not in (1, 5):
      return None
    else:
      i += 8 if wire == 1 else 4
  if not chunks:
    return np.zeros((0,), dtype)
  return np.concatenate(chunks) if len(chunks) > 1 else chunks[0]


def blob_shape(blob) -> tuple[tuple[int, ...], bool]:
  """(shape, legacy): a blob's shape as Caffe reads it, legacy when given as num/channels/h/w."""
  if any(blob.HasField(f) for f in ("num", "channels", "height", "width")):
    return (blob.num, blob.channels, blob.height, blob.width), True
  return tuple(int(d) for d in blob.shape.dim), False


def blob_array(blob, where: str = "blob") -> tuple[np.ndarray, bool]:
  """(array float32 in the blob's Caffe shape, legacy); errors for data that does not fit."""
  shape, legacy = blob_shape(blob)
  if any(d < 0 for d in shape):
    raise CaffeFormatError(f"{where}: negative dimension in shape {shape}")
  count = math.prod(shape)
  n_float, n_double = len(blob.data), len(blob.double_data)
  if n_float and n_double:
    raise CaffeFormatError(f"{where}: holds both float and double data")
  n = n_float or n_double
  if n != count:
    raise CaffeFormatError(f"{where}: shape {shape} needs {count} values but the blob holds {n}")
  if n_double:
    arr = _packed_field(blob, 8, "<f8")
    if arr is None or arr.size != n:
      arr = np.fromiter(blob.double_data, np.float64, count=n)
  else:
    arr = _packed_field(blob, 5, "<f4")
    if arr is None or arr.size != n:
      arr = np.fromiter(blob.data, np.float32, count=n)
  return arr.astype(np.float32, copy=False).reshape(shape), legacy



@dataclasses.dataclass(frozen=True)
class LayerBlobs:
  """The stored blobs of one caffemodel layer, and its type."""
  blobs: tuple  # BlobProto messages
  type: str


def weights_by_layer(model) -> dict[str, LayerBlobs]:
  """Layer name -> its stored blobs, for every layer of a caffemodel that has blobs (by name, as
  Caffe's CopyTrainedLayersFrom: a later layer of the same name wins)."""
  out = {}
  for l in model.layers:
    if l.blobs:
      out[text(l.name)] = LayerBlobs(tuple(l.blobs), cpb.enum_name(l, "type"))
  for l in model.layer:
    if l.blobs:
      out[text(l.name)] = LayerBlobs(tuple(l.blobs), text(l.type))
  return out

