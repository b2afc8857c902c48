"""Caffe models in JAX without Caffe: a reader, a Flax graph builder and AlexNet/CaffeNet weights.

Reader. `.caffemodel` files (binary protobuf) and `.prototxt` files (protobuf text format) are
parsed with the schema in `caffe_proto`, in both the current format (`NetParameter.layer`, string
layer types, blob shapes in `BlobShape`) and the legacy V1 format (`NetParameter.layers`, enum
layer types, blob shapes in num/channels/height/width). Malformed files raise `CaffeFormatError`;
a prototxt and a caffemodel that do not fit each other raise `CaffeMismatchError`; layers or
settings this builder does not implement raise `CaffeUnsupportedError`. All three are
`CaffeError` (a `ValueError`) and name the file and, where there is one, the layer.

Graph builder. `load(caffemodel, prototxt=None)` returns a `CaffeNet`: `net(x)` takes Caffe's
data blob (BGR, mean subtracted) transposed to NHWC and returns every blob by its (top) name,
4-D blobs in NHWC and 2-D blobs as (N, C), with Caffe's values: in-place layers overwrite their
blob as in Caffe, so e.g. 'conv1' is post-ReLU when a ReLU runs in place on it. Other ranks keep
Caffe's axis order. The network runs in the TEST phase: layers are filtered by their include /
exclude rules, Dropout is the identity, BatchNorm uses its stored statistics, and data, loss and
accuracy layers are dropped (a data layer's first top becomes a net input).

Parameters are Flax-style: Convolution {'kernel': HWIO (Caffe's (O, I/g, kh, kw) transposed
(2, 3, 1, 0)), 'bias'}, InnerProduct {'kernel': (K, N) = Caffe's weight transposed (inputs
flattened in Caffe's C, H, W order), 'bias'}, BatchNorm {'mean', 'var'} (already divided by
Caffe's scale-factor blob), Scale {'scale', 'bias'}, Bias {'bias'}, PReLU {'slope'}; the last
three keep Caffe's blob shapes.

AlexNet. `load_alexnet_params(weights, order)` gives the `alexnet` / `caffenet` backbones their
parameters from a .caffemodel (legacy or current) or from a folder written by
`python -m persistent.tools.convert_caffe`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
from typing import Any, Callable, Iterable, Mapping, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from persistent import backbones
from persistent.backbones import caffe_ops
from persistent.backbones import caffe_proto as cpb

# Caffe's ImageNet mean (BGR) of the reference models.
IMAGENET_MEAN_BGR = (104.007, 116.669, 122.679)

_MAX_DIM = 1 << 16         # kernel, stride, pad, dilation, spatial input size
_MAX_CHANNELS = 1 << 24    # num_output, channels
_MAX_INPUT = 1 << 31       # values in one input sample
_MAX_PARAM = 1 << 40       # values in one parameter
_MAX_BLOB = 1 << 48        # values in one activation blob


class CaffeError(ValueError):
  """A Caffe file this project cannot use; the message names the file and the layer."""


class CaffeFormatError(CaffeError):
  """A truncated, corrupted or inconsistent .caffemodel / .prototxt."""


class CaffeMismatchError(CaffeError):
  """A prototxt and a caffemodel (or an input) that do not fit each other."""


class CaffeUnsupportedError(CaffeError):
  """A layer type or setting the graph builder does not implement."""


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


# ---------------------------------------------------------------------------------------------
# Net definitions
# ---------------------------------------------------------------------------------------------

_V1_TYPES = {
    "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}
# Layers that feed data in training; their first top becomes a net input, the rest (labels) vanish.
_DATA_TYPES = frozenset({"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
                         "AnnotatedData", "VideoData"})
# Layers with no part in inference.
_TRAINING_ONLY = frozenset({"Accuracy", "Silence", "HDF5Output"})


@dataclasses.dataclass(frozen=True)
class _Layer:
  name: str
  type: str
  bottoms: tuple[str, ...]
  tops: tuple[str, ...]

  def where(self) -> str:
    return f"layer {self.name!r} ({self.type})"


@dataclasses.dataclass(frozen=True)
class RawLayer(_Layer):
  """One layer of a definition, from either format (`param` is the protobuf message)."""
  param: Any
  legacy: bool
  snapshot: bool = False  # from a caffemodel's stored (training) definition


def _text(value: Any) -> str:
  """A string field as str: protobuf hands proto2 strings that are not UTF-8 over as bytes."""
  return value.decode("utf-8", "backslashreplace") if isinstance(value, bytes) else value


def _texts(values: Iterable[Any]) -> tuple[str, ...]:
  return tuple(_text(v) for v in values)


def _raw_layers(net, where: str) -> list[RawLayer]:
  if net.layer and net.layers:
    raise CaffeFormatError(f"{where}: mixes current ('layer') and legacy ('layers') definitions")
  out = []
  if net.layers:
    for i, l in enumerate(net.layers):
      if l.HasField("layer"):
        raise CaffeUnsupportedError(f"{where}: layer {i} is in the V0 format (before 2014), which "
                                    "is not supported; upgrade it with Caffe's upgrade_net_proto_*")
      v1 = cpb.enum_name(l, "type")
      typ = _V1_TYPES.get(v1)
      if typ is None:
        raise CaffeUnsupportedError(f"{where}: layer {_text(l.name)!r} has legacy type {v1}, which "
                                    "has no current equivalent")
      out.append(RawLayer(_text(l.name), typ, _texts(l.bottom), _texts(l.top), l, True))
  else:
    for l in net.layer:
      out.append(RawLayer(_text(l.name), _text(l.type), _texts(l.bottom), _texts(l.top), l, False))
  return out


def _meets_rule(rule, phase: str, level: int, stages: set[str]) -> bool:
  if rule.HasField("phase") and cpb.enum_name(rule, "phase") != phase:
    return False
  if rule.HasField("min_level") and level < rule.min_level:
    return False
  if rule.HasField("max_level") and level > rule.max_level:
    return False
  return (all(s in stages for s in _texts(rule.stage))
          and not any(s in stages for s in _texts(rule.not_stage)))


def _included(layer: RawLayer, phase: str, level: int, stages: set[str]) -> bool:
  """Caffe's Net::FilterNet rule for one layer."""
  p = layer.param
  included = not p.include
  if any(_meets_rule(r, phase, level, stages) for r in p.exclude):
    included = False
  if any(_meets_rule(r, phase, level, stages) for r in p.include):
    included = True
  return included


@dataclasses.dataclass
class NetDefinition:
  """A net's layers for inference, with the legacy net-level inputs."""
  name: str
  layers: list[RawLayer]
  inputs: dict[str, tuple[int, ...] | None]  # legacy `input:` blobs -> Caffe shape
  where: str


def net_definition(net, where: str, phase: str | None = "TEST") -> NetDefinition:
  """The layers of `net` that run in `phase`.

  phase=None: all of them, as stored in a caffemodel (the snapshot of a net Caffe instantiated,
  often the training net); they then run as in the TEST phase.
  """
  layers = _raw_layers(net, where)
  if phase is None:
    layers = [dataclasses.replace(l, snapshot=True) for l in layers]
  else:
    level = net.state.level if net.HasField("state") else 0
    stages = set(_texts(net.state.stage)) if net.HasField("state") else set()
    layers = [l for l in layers if _included(l, phase, level, stages)]
  inputs: dict[str, tuple[int, ...] | None] = {}
  names = list(_texts(net.input))
  if names:
    if net.input_shape:
      if len(net.input_shape) != len(names):
        raise CaffeFormatError(f"{where}: {len(names)} inputs but {len(net.input_shape)} "
                               "input_shape entries")
      shapes = [tuple(int(d) for d in s.dim) for s in net.input_shape]
    elif net.input_dim:
      dims = list(net.input_dim)
      if len(dims) != 4 * len(names):
        raise CaffeFormatError(f"{where}: {len(names)} inputs need {4 * len(names)} input_dim "
                               f"values, got {len(dims)}")
      shapes = [tuple(dims[4 * i:4 * i + 4]) for i in range(len(names))]
    else:
      shapes = [None] * len(names)
    inputs = dict(zip(names, shapes))
  return NetDefinition(_text(net.name), layers, inputs, where)


# ---------------------------------------------------------------------------------------------
# Layer specs: each layer's static settings, validated
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class LayerSpec(_Layer):
  """A layer of the compiled graph: type, blob names and hashable settings."""
  attrs: tuple[tuple[str, Any], ...] = ()

  def __getitem__(self, key: str) -> Any:
    for k, v in self.attrs:
      if k == key:
        return v
    raise KeyError(key)


def _check_range(layer: RawLayer, what: str, value: int, lo: int, hi: int) -> int:
  if not lo <= value <= hi:
    raise CaffeFormatError(f"{layer.where()}: {what} = {value} is out of range [{lo}, {hi}]")
  return int(value)


def _pair(layer: RawLayer, p, what: str, single: str, h: str, w: str, default: int,
          lo: int, repeated: bool) -> tuple[int, int]:
  """A 2-D setting from `single` (one value, or repeated one/two) or the `h`/`w` pair."""
  if p.HasField(h) or p.HasField(w):
    has_single = len(getattr(p, single)) if repeated else p.HasField(single)
    if has_single:
      raise CaffeFormatError(f"{layer.where()}: {what} given both as {single} and as {h}/{w}")
    if not (p.HasField(h) and p.HasField(w)):
      if what == "pad":  # Caffe: pad_h / pad_w default to 0
        vals = (getattr(p, h), getattr(p, w))
      else:
        raise CaffeFormatError(f"{layer.where()}: {what} needs both {h} and {w}")
    else:
      vals = (getattr(p, h), getattr(p, w))
  elif repeated:
    v = list(getattr(p, single))
    if len(v) == 0:
      vals = (default, default)
    elif len(v) == 1:
      vals = (v[0], v[0])
    elif len(v) == 2:
      vals = (v[0], v[1])
    else:
      raise CaffeUnsupportedError(f"{layer.where()}: {len(v)}-D {what} (only 2-D is supported)")
  else:
    v = getattr(p, single) if p.HasField(single) else default
    vals = (v, v)
  return tuple(_check_range(layer, what, int(x), lo, _MAX_DIM) for x in vals)


def _spec_convolution(l: RawLayer) -> dict:
  p = l.param.convolution_param
  if p.axis != 1:
    raise CaffeUnsupportedError(f"{l.where()}: convolution axis {p.axis} (only 1 is supported)")
  if not p.num_output:
    raise CaffeFormatError(f"{l.where()}: convolution_param.num_output is missing")
  if not (p.kernel_size or p.HasField("kernel_h") or p.HasField("kernel_w")):
    raise CaffeFormatError(f"{l.where()}: no kernel size")
  group = _check_range(l, "group", p.group, 1, _MAX_CHANNELS)
  num_output = _check_range(l, "num_output", p.num_output, 1, _MAX_CHANNELS)
  if num_output % group:
    raise CaffeFormatError(f"{l.where()}: num_output {num_output} is not a multiple of group "
                           f"{group}")
  if len(p.dilation) > 2:
    raise CaffeUnsupportedError(f"{l.where()}: {len(p.dilation)}-D dilation")
  dil = list(p.dilation) or [1]
  return dict(
      num_output=num_output, group=group, bias_term=bool(p.bias_term),
      kernel=_pair(l, p, "kernel", "kernel_size", "kernel_h", "kernel_w", 0, 1, True),
      stride=_pair(l, p, "stride", "stride", "stride_h", "stride_w", 1, 1, True),
      pad=_pair(l, p, "pad", "pad", "pad_h", "pad_w", 0, 0, True),
      dilation=tuple(_check_range(l, "dilation", int(d), 1, _MAX_DIM)
                     for d in (dil * 2 if len(dil) == 1 else dil)))


def _spec_inner_product(l: RawLayer) -> dict:
  p = l.param.inner_product_param
  if not p.num_output:
    raise CaffeFormatError(f"{l.where()}: inner_product_param.num_output is missing")
  return dict(num_output=_check_range(l, "num_output", p.num_output, 1, _MAX_CHANNELS),
              bias_term=bool(p.bias_term), axis=int(p.axis), transpose=bool(p.transpose))


def _spec_pooling(l: RawLayer) -> dict:
  p = l.param.pooling_param
  method = cpb.enum_name(p, "pool")
  if method not in ("MAX", "AVE"):
    raise CaffeUnsupportedError(f"{l.where()}: {method} pooling (MAX and AVE are supported)")
  glob = bool(p.global_pooling)
  has_kernel = p.HasField("kernel_size") or p.HasField("kernel_h") or p.HasField("kernel_w")
  if glob:
    if has_kernel:
      raise CaffeFormatError(f"{l.where()}: global pooling takes no kernel size")
    kernel = (0, 0)
  else:
    if not has_kernel:
      raise CaffeFormatError(f"{l.where()}: no kernel size")
    kernel = _pair(l, p, "kernel", "kernel_size", "kernel_h", "kernel_w", 0, 1, False)
  pad = _pair(l, p, "pad", "pad", "pad_h", "pad_w", 0, 0, False)
  stride = _pair(l, p, "stride", "stride", "stride_h", "stride_w", 1, 1, False)
  if glob and (pad != (0, 0) or stride != (1, 1)):
    raise CaffeFormatError(f"{l.where()}: global pooling needs pad 0 and stride 1")
  if not glob and (pad[0] >= kernel[0] or pad[1] >= kernel[1]):
    raise CaffeFormatError(f"{l.where()}: pad {pad} must be smaller than the kernel {kernel}")
  return dict(method=method, global_pooling=glob, kernel=kernel, pad=pad, stride=stride,
              ceil_mode=cpb.enum_name(p, "round_mode") == "CEIL")


def _spec_lrn(l: RawLayer) -> dict:
  p = l.param.lrn_param
  size = _check_range(l, "local_size", p.local_size, 1, _MAX_DIM)
  if size % 2 == 0:
    raise CaffeFormatError(f"{l.where()}: LRN local_size must be odd, got {size}")
  return dict(local_size=size, alpha=float(p.alpha), beta=float(p.beta), k=float(p.k),
              region=cpb.enum_name(p, "norm_region"))


def _spec_concat(l: RawLayer) -> dict:
  p = l.param.concat_param
  return dict(axis=int(p.concat_dim) if p.HasField("concat_dim") else int(p.axis))


def _spec_eltwise(l: RawLayer) -> dict:
  p = l.param.eltwise_param
  op = cpb.enum_name(p, "operation")
  coeff = tuple(float(c) for c in p.coeff)
  if op not in ("SUM", "PROD", "MAX"):
    raise CaffeUnsupportedError(f"{l.where()}: Eltwise operation {op}")
  if coeff and op != "SUM":
    raise CaffeFormatError(f"{l.where()}: Eltwise coefficients only apply to SUM")
  if coeff and len(coeff) != len(l.bottoms):
    raise CaffeFormatError(f"{l.where()}: {len(coeff)} coefficients for {len(l.bottoms)} inputs")
  if len(l.bottoms) < 2:
    raise CaffeFormatError(f"{l.where()}: Eltwise needs at least two inputs")
  return dict(operation=op, coeff=coeff)


def _spec_batch_norm(l: RawLayer) -> dict:
  p = l.param.batch_norm_param
  # A caffemodel stores its training definition (use_global_stats: false); it runs as in TEST.
  if p.HasField("use_global_stats") and not p.use_global_stats and not l.snapshot:
    raise CaffeUnsupportedError(f"{l.where()}: use_global_stats: false (batch statistics at "
                                "inference) is not supported")
  return dict(eps=float(p.eps))


def _spec_scale(l: RawLayer) -> dict:
  p = l.param.scale_param
  return dict(axis=int(p.axis), num_axes=int(p.num_axes), bias_term=bool(p.bias_term))


def _spec_bias(l: RawLayer) -> dict:
  p = l.param.bias_param
  return dict(axis=int(p.axis), num_axes=int(p.num_axes))


def _spec_relu(l: RawLayer) -> dict:
  return dict(negative_slope=float(l.param.relu_param.negative_slope))


def _spec_softmax(l: RawLayer) -> dict:
  return dict(axis=int(l.param.softmax_param.axis))


def _spec_flatten(l: RawLayer) -> dict:
  p = l.param.flatten_param
  return dict(axis=int(p.axis), end_axis=int(p.end_axis))


def _spec_power(l: RawLayer) -> dict:
  p = l.param.power_param
  return dict(power=float(p.power), scale=float(p.scale), shift=float(p.shift))


def _spec_elu(l: RawLayer) -> dict:
  return dict(alpha=float(l.param.elu_param.alpha))


def _spec_prelu(l: RawLayer) -> dict:
  return dict(channel_shared=bool(l.param.prelu_param.channel_shared))


def _spec_none(l: RawLayer) -> dict:
  return {}


# type -> (settings parser, number of bottoms (None: any >= 1), number of tops (None: any >= 1))
_SPECS: dict[str, tuple[Callable[[RawLayer], dict], int | None, int | None]] = {
    "Convolution": (_spec_convolution, 1, 1),
    "InnerProduct": (_spec_inner_product, 1, 1),
    "Pooling": (_spec_pooling, 1, 1),
    "LRN": (_spec_lrn, 1, 1),
    "ReLU": (_spec_relu, 1, 1),
    "Dropout": (_spec_none, 1, 1),
    "Concat": (_spec_concat, None, 1),
    "Eltwise": (_spec_eltwise, None, 1),
    "BatchNorm": (_spec_batch_norm, 1, 1),
    "Scale": (_spec_scale, None, 1),
    "Bias": (_spec_bias, None, 1),
    "Softmax": (_spec_softmax, 1, 1),
    "Flatten": (_spec_flatten, 1, 1),
    "Split": (_spec_none, 1, None),
    "Sigmoid": (_spec_none, 1, 1),
    "TanH": (_spec_none, 1, 1),
    "AbsVal": (_spec_none, 1, 1),
    "Power": (_spec_power, 1, 1),
    "ELU": (_spec_elu, 1, 1),
    "PReLU": (_spec_prelu, 1, 1),
}
SUPPORTED_LAYERS = ("Input",) + tuple(sorted(_SPECS))


def _spec_of(layer: RawLayer) -> LayerSpec:
  if layer.type not in _SPECS:
    raise CaffeUnsupportedError(
        f"{layer.where()}: unsupported layer type {layer.type!r}; supported: "
        f"{', '.join(SUPPORTED_LAYERS)} (and data, loss and accuracy layers, which are dropped)")
  parse, n_bottom, n_top = _SPECS[layer.type]
  if (n_bottom is not None and len(layer.bottoms) != n_bottom) or not layer.bottoms:
    raise CaffeFormatError(f"{layer.where()}: expects {n_bottom or 'at least 1'} input blob(s), "
                           f"has {len(layer.bottoms)}")
  if (n_top is not None and len(layer.tops) != n_top) or not layer.tops:
    raise CaffeFormatError(f"{layer.where()}: expects {n_top or 'at least 1'} output blob(s), "
                           f"has {len(layer.tops)}")
  if layer.type in ("Scale", "Bias") and len(layer.bottoms) > 2:
    raise CaffeFormatError(f"{layer.where()}: takes one or two inputs, has {len(layer.bottoms)}")
  attrs = parse(layer)
  return LayerSpec(layer.name, layer.type, layer.bottoms, layer.tops, tuple(sorted(attrs.items())))


def _check_input_shape(where: str, name: str, shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(d) for d in shape)
  limits = [_MAX_CHANNELS] * len(shape)
  if len(shape) == 4:
    limits = [_MAX_CHANNELS, _MAX_CHANNELS, _MAX_DIM, _MAX_DIM]
  # The batch size (first axis) plays no part: the net runs on any batch.
  if (not shape or shape[0] < 0
      or any(not 1 <= d <= m for d, m in zip(shape[1:], limits[1:]))):
    raise CaffeFormatError(f"{where}: input {name!r} has an invalid shape {shape}")
  if math.prod(shape[1:]) > _MAX_INPUT:
    raise CaffeFormatError(f"{where}: input {name!r} of shape {shape} is implausibly large")
  return shape


def _data_layer_shape(layer: RawLayer) -> tuple[int, ...] | None:
  """(N, C, H, W) of a data layer's image top where the definition says (C may be 0: unknown)."""
  p = layer.param
  crop = p.transform_param.crop_size if p.HasField("transform_param") else 0
  for field in ("data_param", "image_data_param", "window_data_param"):
    if not crop and p.HasField(field):
      crop = getattr(p, field).crop_size
  if crop:
    return (1, 0, int(crop), int(crop))
  if layer.type == "MemoryData" and p.HasField("memory_data_param"):
    m = p.memory_data_param
    if m.channels and m.height and m.width:
      return (1, int(m.channels), int(m.height), int(m.width))
  return None


@dataclasses.dataclass(frozen=True)
class Graph:
  """A compiled net: its layers in order, inputs with Caffe shapes (None: unknown)."""
  name: str
  layers: tuple[LayerSpec, ...]
  inputs: tuple[str, ...]
  input_shapes: tuple[tuple[int, ...] | None, ...]
  blob_names: tuple[str, ...]
  dropped: tuple[str, ...]  # data / loss / accuracy layers left out


def build_graph(netdef: NetDefinition) -> Graph:
  """Validates a definition and compiles it into layer specs (no weights involved)."""
  where = netdef.where
  inputs: dict[str, tuple[int, ...] | None] = {}
  for name, shape in netdef.inputs.items():
    inputs[name] = None if shape is None else _check_input_shape(where, name, shape)
  available: set[str] = set(inputs)
  labels: set[str] = set()  # tops of data layers other than the first
  specs: list[LayerSpec] = []
  dropped: list[str] = []
  param_names: set[str] = set()
  for layer in netdef.layers:
    if layer.type == "Input":
      shapes = [tuple(s.dim) for s in layer.param.input_param.shape]
      if shapes and len(shapes) not in (1, len(layer.tops)):
        raise CaffeFormatError(f"{where}: {layer.where()}: {len(shapes)} shapes for "
                               f"{len(layer.tops)} tops")
      for i, top in enumerate(layer.tops):
        s = shapes[0] if len(shapes) == 1 else (shapes[i] if shapes else None)
        inputs[top] = None if s is None else _check_input_shape(where, top, s)
        available.add(top)
      continue
    if layer.type in _DATA_TYPES:
      if not layer.tops:
        raise CaffeFormatError(f"{where}: {layer.where()} has no top")
      shape = _data_layer_shape(layer)
      if shape is not None:  # channels may be 0 (unknown) here
        _check_input_shape(where, layer.tops[0], (1, max(shape[1], 1), *shape[2:]))
      inputs[layer.tops[0]] = shape
      available.add(layer.tops[0])
      labels.update(layer.tops[1:])
      dropped.append(layer.name)
      continue
    if layer.type.endswith("Loss") or layer.type in _TRAINING_ONLY:
      dropped.append(layer.name)
      continue
    for b in layer.bottoms:
      if b not in available:
        if b in labels:
          raise CaffeUnsupportedError(f"{where}: {layer.where()} reads {b!r}, which only a data "
                                      "layer provides (labels do not exist at inference)")
        raise CaffeFormatError(f"{where}: {layer.where()} reads blob {b!r}, which no earlier "
                               "layer produces")
    try:
      spec = _spec_of(layer)
    except CaffeError as e:
      raise type(e)(f"{where}: {e}") from None
    if spec.type in _PARAM_LAYOUTS and _PARAM_LAYOUTS[spec.type].names(spec):
      if not spec.name:
        raise CaffeFormatError(f"{where}: a {spec.type} layer with weights has no name")
      if spec.name in param_names:
        raise CaffeFormatError(f"{where}: two layers with weights are named {spec.name!r}")
      param_names.add(spec.name)
    specs.append(spec)
    available.update(layer.tops)
  if not inputs:
    raise CaffeFormatError(f"{where}: the net has no input (no Input layer, `input:` field or "
                           "data layer)")
  if not specs:
    raise CaffeFormatError(f"{where}: the net has no layers to run")
  blob_names = dict.fromkeys(inputs)
  for s in specs:
    blob_names.update(dict.fromkeys(s.tops))
  return Graph(netdef.name, tuple(specs), tuple(inputs), tuple(inputs.values()),
               tuple(blob_names), tuple(dropped))


# ---------------------------------------------------------------------------------------------
# The Flax module
# ---------------------------------------------------------------------------------------------

_NHWC_AXIS = (0, 3, 1, 2)  # Caffe axis of a 4-D blob -> its axis in NHWC


def _to_caffe(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 3, 1, 2)) if x.ndim == 4 else x


def _from_caffe(x: jax.Array) -> jax.Array:
  return jnp.transpose(x, (0, 2, 3, 1)) if x.ndim == 4 else x


def _caffe_shape(x: jax.Array) -> tuple[int, ...]:
  s = tuple(x.shape)
  return (s[0], s[3], s[1], s[2]) if len(s) == 4 else s


def _canonical_axis(spec: LayerSpec, axis: int, ndim: int, what: str = "axis") -> int:
  if not -ndim <= axis < ndim:
    raise CaffeMismatchError(f"{spec.where()}: {what} {axis} is out of range for a {ndim}-D blob")
  return axis % ndim


def _internal_axis(axis: int, ndim: int) -> int:
  return _NHWC_AXIS[axis] if ndim == 4 else axis


def _broadcast(p: jax.Array, axis: int, ndim: int) -> jax.Array:
  """A Caffe-layout array covering Caffe axes [axis, axis + p.ndim) of an ndim-D blob, shaped to
  broadcast against that blob in this module's layout."""
  q = p.reshape((1,) * axis + tuple(p.shape) + (1,) * (ndim - axis - p.ndim))
  return _from_caffe(q) if ndim == 4 else q


def _need_4d(spec: LayerSpec, x: jax.Array) -> None:
  if x.ndim != 4:
    raise CaffeMismatchError(f"{spec.where()}: needs a 4-D input blob, got shape "
                             f"{_caffe_shape(x)}")


def _lecun(key, shape, fan_in):
  return jax.random.normal(key, shape, jnp.float32) / math.sqrt(max(fan_in, 1))


class CaffeModule(nn.Module):
  """A Caffe net as a Flax module: `apply({'params': p}, x)` -> {blob name: array}.

  `x` is the (single) input blob in NHWC (4-D) or (N, C), or a dict {input name: array}.
  """
  layers: tuple[LayerSpec, ...]
  inputs: tuple[str, ...]
  dtype: Any = jnp.float32
  precision: Any = "highest"

  def _param(self, spec: LayerSpec, shapes: Mapping[str, tuple[int, ...]],
             init: Callable[..., dict]) -> dict:
    """The layer's parameters (created by `init(key)` at init), checked against `shapes`."""
    for k, shape in shapes.items():
      if math.prod(shape) > _MAX_PARAM:
        raise CaffeMismatchError(f"{spec.where()}: parameter {k!r} would have shape {shape}; "
                                 "refusing an implausibly large layer")
    p = self.param(spec.name, init)
    for k, shape in shapes.items():
      got = tuple(np.shape(p[k])) if k in p else None
      if got != tuple(shape):
        raise CaffeMismatchError(f"{spec.where()}: parameter {k!r} has shape {got} but the layer's "
                                 f"input implies {tuple(shape)}")
    return p

  @nn.compact
  def __call__(self, x: Any) -> dict[str, jax.Array]:
    if isinstance(x, Mapping):
      missing = [n for n in self.inputs if n not in x]
      if missing:
        raise KeyError(f"missing net inputs {missing}; the net takes {list(self.inputs)}")
      blobs = {n: jnp.asarray(x[n], self.dtype) for n in self.inputs}
    else:
      if len(self.inputs) != 1:
        raise ValueError(f"the net takes {len(self.inputs)} inputs {list(self.inputs)}: pass a "
                         "dict")
      blobs = {self.inputs[0]: jnp.asarray(x, self.dtype)}
    for spec in self.layers:
      outs = _OPS[spec.type](self, spec, [blobs[b] for b in spec.bottoms])
      for top, y in zip(spec.tops, outs):
        if math.prod(y.shape) > _MAX_BLOB:
          raise CaffeMismatchError(f"{spec.where()}: output {top!r} would have shape "
                                   f"{_caffe_shape(y)}; refusing an implausibly large blob")
        blobs[top] = y
    return blobs


def _op_convolution(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  _need_4d(spec, x)
  c, g, o = x.shape[3], spec["group"], spec["num_output"]
  if c % g:
    raise CaffeMismatchError(f"{spec.where()}: {c} input channels are not divisible by group {g}")
  kh, kw = spec["kernel"]
  (ph, pw), (dh, dw) = spec["pad"], spec["dilation"]
  for size, k, p, d, axis in ((x.shape[1], kh, ph, dh, "height"),
                              (x.shape[2], kw, pw, dw, "width")):
    if size + 2 * p < d * (k - 1) + 1:
      raise CaffeMismatchError(f"{spec.where()}: the input {axis} {size} (padded {size + 2 * p}) "
                               f"is smaller than the kernel extent {d * (k - 1) + 1}")
  shapes = {"kernel": (kh, kw, c // g, o)}
  if spec["bias_term"]:
    shapes["bias"] = (o,)

  def init(key):
    p = {"kernel": _lecun(key, shapes["kernel"], kh * kw * c // g)}
    if spec["bias_term"]:
      p["bias"] = jnp.zeros((o,), jnp.float32)
    return p
  p = m._param(spec, shapes, init)
  y = caffe_ops.conv2d(x, p["kernel"], p.get("bias"), spec["stride"], spec["pad"],
                       spec["dilation"], g, m.precision)
  return [y]


def _op_inner_product(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  xc = _to_caffe(x)
  axis = _canonical_axis(spec, spec["axis"], xc.ndim)
  lead, k, n = xc.shape[:axis], math.prod(xc.shape[axis:]), spec["num_output"]
  shapes = {"kernel": (k, n)}
  if spec["bias_term"]:
    shapes["bias"] = (n,)

  def init(key):
    p = {"kernel": _lecun(key, (k, n), k)}
    if spec["bias_term"]:
      p["bias"] = jnp.zeros((n,), jnp.float32)
    return p
  p = m._param(spec, shapes, init)
  y = jnp.dot(xc.reshape(math.prod(lead), k), p["kernel"].astype(x.dtype), precision=m.precision)
  if spec["bias_term"]:
    y = y + p["bias"].astype(y.dtype)
  return [_from_caffe(y.reshape(*lead, n))]


def _op_pooling(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  _need_4d(spec, x)
  if spec["global_pooling"]:
    kernel, stride, pad = tuple(x.shape[1:3]), (1, 1), (0, 0)
  else:
    kernel, stride, pad = spec["kernel"], spec["stride"], spec["pad"]
  clip = pad[0] > 0 or pad[1] > 0
  for size, k, s, p in zip(x.shape[1:3], kernel, stride, pad):
    if caffe_ops.pool_output_size(size, k, s, p, spec["ceil_mode"], clip) < 1:
      raise CaffeMismatchError(f"{spec.where()}: input {tuple(x.shape[1:3])} is too small for a "
                               f"{kernel} window")
  fn = caffe_ops.max_pool if spec["method"] == "MAX" else caffe_ops.ave_pool
  return [fn(x, kernel, stride, pad, ceil_mode=spec["ceil_mode"], clip=clip)]


def _op_lrn(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  _need_4d(spec, x)
  if spec["region"] == "ACROSS_CHANNELS":
    return [caffe_ops.lrn_across_channels(x, spec["local_size"], spec["alpha"], spec["beta"],
                                          spec["k"])]
  return [caffe_ops.lrn_within_channel(x, spec["local_size"], spec["alpha"], spec["beta"])]


def _op_relu(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  slope = spec["negative_slope"]
  if slope == 0.0:
    return [jnp.maximum(x, 0)]
  return [jnp.maximum(x, 0) + slope * jnp.minimum(x, 0)]


def _op_identity(m: CaffeModule, spec: LayerSpec, ins):
  return [ins[0]] * len(spec.tops)


def _op_concat(m: CaffeModule, spec: LayerSpec, ins):
  ndim = ins[0].ndim
  shapes = [_caffe_shape(x) for x in ins]
  axis = _canonical_axis(spec, spec["axis"], ndim)
  for s in shapes[1:]:
    if len(s) != ndim or s[:axis] + s[axis + 1:] != shapes[0][:axis] + shapes[0][axis + 1:]:
      raise CaffeMismatchError(f"{spec.where()}: cannot concatenate shapes {shapes} on axis {axis}")
  return [jnp.concatenate(ins, axis=_internal_axis(axis, ndim))]


def _op_eltwise(m: CaffeModule, spec: LayerSpec, ins):
  shapes = {tuple(x.shape) for x in ins}
  if len(shapes) != 1:
    raise CaffeMismatchError(f"{spec.where()}: inputs have different shapes "
                             f"{[_caffe_shape(x) for x in ins]}")
  op = spec["operation"]
  if op == "SUM":
    coeff = spec["coeff"] or (1.0,) * len(ins)
    y = ins[0] * coeff[0] if coeff[0] != 1.0 else ins[0]
    for c, x in zip(coeff[1:], ins[1:]):
      y = y + (x * c if c != 1.0 else x)
    return [y]
  fn = jnp.multiply if op == "PROD" else jnp.maximum
  y = ins[0]
  for x in ins[1:]:
    y = fn(y, x)
  return [y]


def _channels(spec: LayerSpec, x: jax.Array) -> int:
  if x.ndim < 2:
    raise CaffeMismatchError(f"{spec.where()}: needs a blob with a channel axis, got shape "
                             f"{_caffe_shape(x)}")
  return _caffe_shape(x)[1]


def _op_batch_norm(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  c = _channels(spec, x)
  shapes = {"mean": (c,), "var": (c,)}
  p = m._param(spec, shapes, lambda key: {"mean": jnp.zeros((c,)), "var": jnp.ones((c,))})
  mean = _broadcast(p["mean"].astype(x.dtype), 1, x.ndim)
  var = _broadcast(p["var"].astype(x.dtype), 1, x.ndim)
  return [(x - mean) / jnp.sqrt(var + spec["eps"])]


def _affine_shape(spec: LayerSpec, x: jax.Array) -> tuple[int, tuple[int, ...]]:
  """(axis, shape) of a one-input Scale / Bias layer's learned blob (Caffe axis / num_axes)."""
  cs = _caffe_shape(x)
  axis = _canonical_axis(spec, spec["axis"], x.ndim)
  n = spec["num_axes"]
  if n < -1 or (n >= 0 and axis + n > x.ndim):
    raise CaffeMismatchError(f"{spec.where()}: num_axes {n} does not fit a {x.ndim}-D input at "
                             f"axis {axis}")
  return axis, tuple(cs[axis:] if n == -1 else cs[axis:axis + n])


def _operand(spec: LayerSpec, x: jax.Array, y: jax.Array) -> tuple[int, jax.Array]:
  """A second input (Scale / Bias with two bottoms) in Caffe layout, with its axis."""
  yc = _to_caffe(y)
  cs = _caffe_shape(x)
  axis = 0 if yc.ndim == 0 else _canonical_axis(spec, spec["axis"], x.ndim)
  if tuple(cs[axis:axis + yc.ndim]) != tuple(yc.shape):
    raise CaffeMismatchError(f"{spec.where()}: second input of shape {tuple(yc.shape)} does not "
                             f"match the first input {cs} at axis {axis}")
  return axis, yc


def _op_scale(m: CaffeModule, spec: LayerSpec, ins):
  x = ins[0]
  if len(ins) == 2:
    axis, s = _operand(spec, x, ins[1])
    shape = tuple(s.shape)
    shapes = {"bias": shape} if spec["bias_term"] else {}
    p = m._param(spec, shapes, lambda key: {"bias": jnp.zeros(shape)}) if shapes else {}
  else:
    axis, shape = _affine_shape(spec, x)
    shapes = {"scale": shape}
    if spec["bias_term"]:
      shapes["bias"] = shape

    def init(key):
      p = {"scale": jnp.ones(shape)}
      if spec["bias_term"]:
        p["bias"] = jnp.zeros(shape)
      return p
    p = m._param(spec, shapes, init)
    s = p["scale"]
  y = x * _broadcast(s.astype(x.dtype), axis, x.ndim)
  if spec["bias_term"]:
    y = y + _broadcast(p["bias"].astype(x.dtype), axis, x.ndim)
  return [y]


def _op_bias(m: CaffeModule, spec: LayerSpec, ins):
  x = ins[0]
  if len(ins) == 2:
    axis, b = _operand(spec, x, ins[1])
  else:
    axis, shape = _affine_shape(spec, x)
    b = m._param(spec, {"bias": shape}, lambda key: {"bias": jnp.zeros(shape)})["bias"]
  return [x + _broadcast(b.astype(x.dtype), axis, x.ndim)]


def _op_prelu(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  shape = (1,) if spec["channel_shared"] else (_channels(spec, x),)
  p = m._param(spec, {"slope": shape}, lambda key: {"slope": jnp.full(shape, 0.25)})
  slope = p["slope"].astype(x.dtype)
  slope = slope.reshape(()) if spec["channel_shared"] else _broadcast(slope, 1, x.ndim)
  return [jnp.maximum(x, 0) + slope * jnp.minimum(x, 0)]


def _op_softmax(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  axis = _canonical_axis(spec, spec["axis"], x.ndim)
  return [jax.nn.softmax(x, axis=_internal_axis(axis, x.ndim))]


def _op_flatten(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  xc = _to_caffe(x)
  start = _canonical_axis(spec, spec["axis"], xc.ndim)
  end = _canonical_axis(spec, spec["end_axis"], xc.ndim, "end_axis")
  if end < start:
    raise CaffeMismatchError(f"{spec.where()}: end_axis {end} is before axis {start}")
  s = xc.shape
  return [_from_caffe(xc.reshape(*s[:start], math.prod(s[start:end + 1]), *s[end + 1:]))]


def _op_power(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  y = spec["shift"] + spec["scale"] * x
  return [y if spec["power"] == 1.0 else jnp.power(y, spec["power"])]


def _op_elu(m: CaffeModule, spec: LayerSpec, ins):
  (x,) = ins
  return [jnp.where(x > 0, x, spec["alpha"] * (jnp.exp(jnp.minimum(x, 0)) - 1))]


_OPS: dict[str, Callable[[CaffeModule, LayerSpec, list], list]] = {
    "Convolution": _op_convolution, "InnerProduct": _op_inner_product, "Pooling": _op_pooling,
    "LRN": _op_lrn, "ReLU": _op_relu, "Dropout": _op_identity, "Split": _op_identity,
    "Concat": _op_concat, "Eltwise": _op_eltwise, "BatchNorm": _op_batch_norm,
    "Scale": _op_scale, "Bias": _op_bias, "Softmax": _op_softmax, "Flatten": _op_flatten,
    "Sigmoid": lambda m, s, ins: [jax.nn.sigmoid(ins[0])],
    "TanH": lambda m, s, ins: [jnp.tanh(ins[0])],
    "AbsVal": lambda m, s, ins: [jnp.abs(ins[0])],
    "Power": _op_power, "ELU": _op_elu, "PReLU": _op_prelu,
}
assert set(_OPS) == set(_SPECS)


# ---------------------------------------------------------------------------------------------
# Parameters: Caffe blobs <-> Flax parameters
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class _Layout:
  """How a layer type's Caffe blobs map to its Flax parameters."""
  names: Callable[[LayerSpec], tuple[str, ...]]                 # Caffe blob order -> param names
  to_flax: Callable[[LayerSpec, list[np.ndarray]], dict]
  caffe_shapes: Callable[[LayerSpec, Mapping[str, tuple]], list[tuple[int, ...]]]
  natural_ndim: Callable[[LayerSpec], tuple[int, ...]]          # ranks of the Caffe blobs


def _wb(spec):
  return ("kernel", "bias") if spec["bias_term"] else ("kernel",)


def _conv_to_flax(spec, arrays):
  p = {"kernel": np.ascontiguousarray(arrays[0].transpose(2, 3, 1, 0))}
  if spec["bias_term"]:
    p["bias"] = arrays[1].reshape(-1)
  return p


def _conv_caffe_shapes(spec, shapes):
  kh, kw, i, o = shapes["kernel"]
  return [(o, i, kh, kw)] + ([tuple(shapes["bias"])] if spec["bias_term"] else [])


def _ip_to_flax(spec, arrays):
  w = arrays[0]
  p = {"kernel": np.ascontiguousarray(w if spec["transpose"] else w.T)}
  if spec["bias_term"]:
    p["bias"] = arrays[1].reshape(-1)
  return p


def _ip_caffe_shapes(spec, shapes):
  k, n = shapes["kernel"]
  return [(k, n) if spec["transpose"] else (n, k)] + ([(n,)] if spec["bias_term"] else [])


def _bn_to_flax(spec, arrays):
  mean, var, factor = arrays
  if factor.size != 1:
    raise CaffeFormatError(f"{spec.where()}: the scale-factor blob has {factor.size} values, not 1")
  f = float(factor.reshape(-1)[0])
  f = 0.0 if f == 0 else 1.0 / f  # as Caffe: a zero factor zeroes the statistics
  return {"mean": mean * np.float32(f), "var": var * np.float32(f)}


def _scale_names(spec):
  if len(spec.bottoms) == 2:
    return ("bias",) if spec["bias_term"] else ()
  return ("scale", "bias") if spec["bias_term"] else ("scale",)


_PARAM_LAYOUTS: dict[str, _Layout] = {
    "Convolution": _Layout(_wb, _conv_to_flax, _conv_caffe_shapes,
                           lambda s: (4, 1) if s["bias_term"] else (4,)),
    "InnerProduct": _Layout(_wb, _ip_to_flax, _ip_caffe_shapes,
                            lambda s: (2, 1) if s["bias_term"] else (2,)),
    "BatchNorm": _Layout(lambda s: ("mean", "var", "scale_factor"), _bn_to_flax,
                         lambda s, sh: [tuple(sh["mean"]), tuple(sh["var"]), (1,)],
                         lambda s: (1, 1, 1)),
    "Scale": _Layout(_scale_names, lambda s, a: dict(zip(_scale_names(s), a)),
                     lambda s, sh: [tuple(sh[k]) for k in _scale_names(s)],
                     lambda s: (None,) * len(_scale_names(s))),
    "Bias": _Layout(lambda s: () if len(s.bottoms) == 2 else ("bias",),
                    lambda s, a: {"bias": a[0]} if a else {},
                    lambda s, sh: [tuple(sh["bias"])] if "bias" in sh else [],
                    lambda s: () if len(s.bottoms) == 2 else (None,)),
    "PReLU": _Layout(lambda s: ("slope",), lambda s, a: {"slope": a[0].reshape(-1)},
                     lambda s, sh: [tuple(sh["slope"])], lambda s: (1,)),
}


def _fit_blob(arr: np.ndarray, legacy: bool, expected: tuple[int, ...] | None,
              ndim: int | None) -> np.ndarray | None:
  """The blob in the expected shape (Caffe's legacy 4-D shapes pad leading ones), or None."""
  if expected is not None:
    if arr.shape == expected:
      return arr
    if legacy and len(expected) <= 4 and (1,) * (4 - len(expected)) + expected == arr.shape:
      return arr.reshape(expected)
    return None
  if legacy and ndim is not None and ndim < 4 and all(d == 1 for d in arr.shape[:4 - ndim]):
    return arr.reshape(arr.shape[4 - ndim:])
  return arr


@dataclasses.dataclass(frozen=True)
class _Blobs:
  blobs: tuple  # BlobProto messages
  type: str


def _weights_by_layer(model) -> dict[str, _Blobs]:
  """Layer name -> its stored blobs, for every layer of a caffemodel that has blobs (by name, as
  Caffe's CopyTrainedLayersFrom: a later layer of the same name wins)."""
  out = {}
  for l in model.layers:
    if l.blobs:
      out[_text(l.name)] = _Blobs(tuple(l.blobs), cpb.enum_name(l, "type"))
  for l in model.layer:
    if l.blobs:
      out[_text(l.name)] = _Blobs(tuple(l.blobs), _text(l.type))
  return out


def expected_param_shapes(module: CaffeModule, input_shapes: Sequence[tuple[int, ...]]) -> dict:
  """{layer: {param: shape}} implied by the net for inputs of these Caffe shapes."""
  xs = {n: jax.ShapeDtypeStruct(_nhwc_shape(s), jnp.float32)
        for n, s in zip(module.inputs, input_shapes)}
  x = xs if len(xs) > 1 else next(iter(xs.values()))
  variables = jax.eval_shape(module.init, jax.random.key(0), x)
  return jax.tree.map(lambda a: tuple(a.shape), dict(variables.get("params", {})))


def _nhwc_shape(caffe_shape: Sequence[int]) -> tuple[int, ...]:
  s = (1,) + tuple(caffe_shape[1:])  # one sample: the batch size of a prototxt is irrelevant
  return (s[0], s[2], s[3], s[1]) if len(s) == 4 else s


def convert_params(graph: Graph, weights: Mapping[str, _Blobs], where: str,
                   expected: Mapping[str, Mapping[str, tuple]] | None = None) -> dict:
  """Flax parameters for the graph's layers from stored blobs, checked against `expected`
  ({layer: {param: flax shape}}, from `expected_param_shapes`) when given."""
  params = {}
  missing = []
  for spec in graph.layers:
    layout = _PARAM_LAYOUTS.get(spec.type)
    if layout is None or not layout.names(spec):
      continue
    stored = weights.get(spec.name)
    if stored is None:
      missing.append(spec.name)
      continue
    names = layout.names(spec)
    if len(stored.blobs) != len(names):
      raise CaffeMismatchError(
          f"{where}: {spec.where()} needs {len(names)} blobs ({', '.join(names)}) but the "
          f"caffemodel's layer {spec.name!r} ({stored.type}) has {len(stored.blobs)}")
    caffe_shapes = None
    if expected is not None:
      caffe_shapes = layout.caffe_shapes(spec, expected[spec.name])
    ndims = layout.natural_ndim(spec)
    arrays = []
    for i, blob in enumerate(stored.blobs):
      arr, legacy = blob_array(blob, f"{where}: layer {spec.name!r} blob {i} ({names[i]})")
      want = None if caffe_shapes is None else tuple(caffe_shapes[i])
      fitted = _fit_blob(arr, legacy, want, ndims[i])
      if fitted is None:
        raise CaffeMismatchError(
            f"{where}: {spec.where()} blob {i} ({names[i]}) has shape {arr.shape} in the "
            f"caffemodel but the net definition implies {want}")
      if want is None and ndims[i] is not None and fitted.ndim != ndims[i]:
        raise CaffeMismatchError(f"{where}: {spec.where()} blob {i} ({names[i]}) has shape "
                                 f"{arr.shape}, expected a {ndims[i]}-D blob")
      arrays.append(fitted)
    try:
      params[spec.name] = layout.to_flax(spec, arrays)
    except CaffeError as e:
      raise type(e)(f"{where}: {e}") from None
  if missing:
    have = sorted(weights)
    raise CaffeMismatchError(
        f"{where}: no weights in the caffemodel for layer(s) {missing} of the net definition; "
        f"the caffemodel has weights for {have[:20]}{' ...' if len(have) > 20 else ''}")
  return params


# ---------------------------------------------------------------------------------------------
# Loading a whole net
# ---------------------------------------------------------------------------------------------

class CaffeNet:
  """A loaded Caffe net: `net(x)` -> {blob name: array}; `module` and `params` are Flax's."""

  def __init__(self, module: CaffeModule, params: dict, graph: Graph, weights_id: str):
    self.module = module
    self.params = params
    self.graph = graph
    self.weights_id = weights_id
    self._apply = jax.jit(module.apply)

  @property
  def inputs(self) -> tuple[str, ...]:
    return self.graph.inputs

  @property
  def input_shape(self) -> tuple[int, ...] | None:
    """The first input's Caffe shape (N, C, H, W) from the definition; None where unknown."""
    return self.graph.input_shapes[0]

  @property
  def blob_names(self) -> tuple[str, ...]:
    return self.graph.blob_names

  def __call__(self, x: Any) -> dict[str, jax.Array]:
    return self._apply({"params": self.params}, x)


def _first_conv_channels(graph: Graph, weights: Mapping[str, _Blobs], name: str) -> int:
  """The input channels of a data blob, read from the first layer with weights that reads it."""
  for spec in graph.layers:
    if name in spec.bottoms and spec.type == "Convolution" and spec.name in weights:
      shape, _ = blob_shape(weights[spec.name].blobs[0])
      if len(shape) == 4:
        return shape[1] * spec["group"]
  return 0


def _resolve_input_shapes(graph: Graph, weights: Mapping[str, _Blobs]) -> Graph:
  shapes = []
  for name, s in zip(graph.inputs, graph.input_shapes):
    if s is not None and len(s) == 4 and s[1] == 0:
      c = _first_conv_channels(graph, weights, name)
      s = (s[0], c, s[2], s[3]) if 1 <= c <= _MAX_CHANNELS else None
    shapes.append(s)
  return dataclasses.replace(graph, input_shapes=tuple(shapes))


def load(caffemodel_path: str, prototxt_path: str | None = None, *,
         dtype: Any = jnp.float32) -> CaffeNet:
  """Loads a Caffe net and its weights.

  The prototxt (deploy definition) gives the graph; without one, the caffemodel's own layer
  definitions are used (both formats store them), with its data layers as inputs. Weights are
  matched to layers by name, as Caffe does; layers of the caffemodel the definition does not use
  are ignored.
  """
  from persistent.backbones import file_digest
  where = os.fspath(caffemodel_path)
  model = read_caffemodel(caffemodel_path)
  if prototxt_path is not None:
    netdef = net_definition(read_prototxt(prototxt_path), os.fspath(prototxt_path))
    weights_id = f"{file_digest(caffemodel_path)}+{file_digest(prototxt_path)}"
  else:
    netdef = net_definition(model, where, phase=None)
    weights_id = file_digest(caffemodel_path)
  return _load(model, netdef, where, weights_id, dtype)


def random_net(prototxt_path: str, seed: int = 0, *, dtype: Any = jnp.float32) -> CaffeNet:
  """A net from its definition with seeded random weights (the architecture-only control).

  Kernels are LeCun-normal (std 1/sqrt(fan in)), biases and means 0, scales and variances 1,
  PReLU slopes 0.25; drawn with NumPy (compiling JAX's RNG for every shape is slow on CPU).
  """
  from persistent.backbones import file_digest
  graph = build_graph(net_definition(read_prototxt(prototxt_path), os.fspath(prototxt_path)))
  if any(s is None for s in graph.input_shapes):
    raise CaffeFormatError(f"{prototxt_path}: random weights need the input shape in the "
                           "definition")
  module = CaffeModule(layers=graph.layers, inputs=graph.inputs, dtype=dtype)
  rng = np.random.default_rng(seed)
  fill = {"bias": 0.0, "mean": 0.0, "var": 1.0, "scale": 1.0, "slope": 0.25}
  params = {}
  for layer, shapes in expected_param_shapes(module, graph.input_shapes).items():
    params[layer] = {}
    for name, shape in sorted(shapes.items()):
      if name == "kernel":
        std = 1.0 / math.sqrt(math.prod(shape[:-1]))
        value = rng.standard_normal(shape, np.float32) * np.float32(std)
      else:
        value = np.full(shape, fill[name], np.float32)
      params[layer][name] = jnp.asarray(value)
  return CaffeNet(module, params, graph, f"random:{seed}+{file_digest(prototxt_path)}")


def _load(model, netdef: NetDefinition, where: str, weights_id: str, dtype: Any) -> CaffeNet:
  graph = build_graph(netdef)
  weights = _weights_by_layer(model)
  graph = _resolve_input_shapes(graph, weights)
  module = CaffeModule(layers=graph.layers, inputs=graph.inputs, dtype=dtype)
  expected = None
  if all(s is not None for s in graph.input_shapes):
    expected = expected_param_shapes(module, graph.input_shapes)
  params = convert_params(graph, weights, where, expected)
  params = jax.tree.map(jnp.asarray, params)
  return CaffeNet(module, params, graph, weights_id)


# ---------------------------------------------------------------------------------------------
# AlexNet / CaffeNet weights for the `alexnet` / `caffenet` backbones
# ---------------------------------------------------------------------------------------------

CHECKPOINT_META = "persistent_caffe.json"
_CHECKPOINT_PARAMS = "params"
_ALEXNET_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")


@functools.lru_cache(maxsize=1)
def _alexnet_expected_cached() -> str:
  from persistent.backbones import alexnet
  module = alexnet.AlexNet(order="alexnet")
  variables = jax.eval_shape(module.init, jax.random.key(0),
                             jax.ShapeDtypeStruct((1, *alexnet.INPUT_SIZE, 3), jnp.float32))
  shapes = jax.tree.map(lambda a: list(a.shape), dict(variables["params"]))
  return json.dumps(shapes)


def _alexnet_expected() -> dict:
  """{layer: {param: shape}} of the AlexNet module at its input size."""
  return jax.tree.map(tuple, json.loads(_alexnet_expected_cached()),
                      is_leaf=lambda x: isinstance(x, list))


def _alexnet_settings() -> dict[str, dict]:
  """The settings of the alexnet module's layers, as LayerSpec attrs."""
  from persistent.backbones import alexnet
  out = {}
  for name, (feats, k, s, p, g) in alexnet._CONVS.items():
    out[name] = dict(num_output=feats, kernel=(k, k), stride=(s, s), pad=(p, p), group=g,
                     dilation=(1, 1), bias_term=True)
  for name in ("pool1", "pool2", "pool5"):
    out[name] = dict(method="MAX", kernel=(3, 3), stride=(2, 2), pad=(0, 0), global_pooling=False,
                     ceil_mode=True)
  for name in ("norm1", "norm2"):
    out[name] = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0, region="ACROSS_CHANNELS")
  return out


def detect_alexnet_order(netdef: NetDefinition) -> str | None:
  """'alexnet' (norm -> pool) or 'caffenet' (pool -> norm) from a definition; None if unclear."""
  by_name = {l.name: l for l in netdef.layers}
  orders = set()
  for i in (1, 2):
    pool, norm = by_name.get(f"pool{i}"), by_name.get(f"norm{i}")
    if pool is None or norm is None:
      continue
    if set(pool.bottoms) & set(norm.tops):
      orders.add("alexnet")
    elif set(norm.bottoms) & set(pool.tops):
      orders.add("caffenet")
  return orders.pop() if len(orders) == 1 else None


def check_alexnet_definition(netdef: NetDefinition, order: str) -> None:
  """Errors when a definition is not the `order` AlexNet the backbone computes."""
  where = netdef.where
  found = detect_alexnet_order(netdef)
  if found is not None and found != order:
    other = {"alexnet": "BVLC AlexNet (conv -> ReLU -> LRN -> pool)",
             "caffenet": "CaffeNet (conv -> ReLU -> pool -> LRN)"}
    raise CaffeMismatchError(f"{where}: this net is {other[found]}, but the {order!r} backbone "
                             f"computes {other[order]}: use the {found!r} backbone")
  by_name = {l.name: l for l in netdef.layers}
  for name, want in _alexnet_settings().items():
    layer = by_name.get(name)
    if layer is None:
      continue
    try:
      got = dict(_spec_of(layer).attrs)
    except CaffeError as e:
      raise CaffeMismatchError(f"{where}: {e}") from None
    diff = {k: (got.get(k), v) for k, v in want.items()
            if not (got.get(k) == v or (isinstance(v, float) and got.get(k) is not None
                                        and math.isclose(got[k], v, rel_tol=1e-6)))}
    if diff:
      detail = ", ".join(f"{k} {a} (the backbone uses {b})" for k, (a, b) in diff.items())
      raise CaffeMismatchError(f"{where}: {layer.where()} differs from the {order!r} backbone: "
                               f"{detail}")


def alexnet_params_from_caffemodel(caffemodel_path: str, order: str,
                                   prototxt_path: str | None = None, model: Any = None) -> dict:
  """AlexNet-module parameters from a BVLC AlexNet / CaffeNet caffemodel (either format).

  The caffemodel's own layer definitions (and the prototxt, when given) are checked against the
  backbone: layer order (LRN before or after pooling) and every layer setting. `model`: the
  caffemodel already parsed (`read_caffemodel`), to save reading it again.
  """
  where = os.fspath(caffemodel_path)
  model = read_caffemodel(caffemodel_path) if model is None else model
  check_alexnet_definition(net_definition(model, where, phase=None), order)
  if prototxt_path is not None:
    check_alexnet_definition(net_definition(read_prototxt(prototxt_path), prototxt_path), order)
  weights = _weights_by_layer(model)
  missing = [n for n in _ALEXNET_LAYERS if n not in weights]
  if missing:
    raise CaffeMismatchError(f"{where}: no weights for {missing}; an AlexNet/CaffeNet caffemodel "
                             f"has layers {list(_ALEXNET_LAYERS)}; it has {sorted(weights)[:20]}")
  expected = _alexnet_expected()
  settings = _alexnet_settings()
  specs = []
  for name in _ALEXNET_LAYERS:
    if name.startswith("conv"):
      attrs = settings[name]
      specs.append(LayerSpec(name, "Convolution", ("x",), (name,), tuple(sorted(attrs.items()))))
    else:
      attrs = dict(num_output=expected[name]["kernel"][1], bias_term=True, axis=1, transpose=False)
      specs.append(LayerSpec(name, "InnerProduct", ("x",), (name,), tuple(sorted(attrs.items()))))
  graph = Graph("alexnet", tuple(specs), ("x",), (None,), (), ())
  return convert_params(graph, weights, where, expected)


def _check_alexnet_tree(params: Any, where: str) -> dict:
  expected = _alexnet_expected()
  got = jax.tree.map(lambda a: tuple(np.shape(a)), params)
  if got != expected:
    raise CaffeMismatchError(f"{where}: parameters do not fit the AlexNet module: got {got}, "
                             f"expected {expected}")
  return params


def save_alexnet_checkpoint(out_dir: str, params: Any, order: str, weights_id: str,
                            source: str, force: bool = False) -> str:
  """Writes an orbax checkpoint of AlexNet parameters with its metadata; returns out_dir."""
  import orbax.checkpoint as ocp
  out_dir = os.path.abspath(out_dir)
  params_dir = os.path.join(out_dir, _CHECKPOINT_PARAMS)
  if os.path.exists(out_dir) and os.listdir(out_dir):
    if not force:
      raise FileExistsError(f"{out_dir} exists and is not empty (pass --force to overwrite)")
    if not os.path.exists(os.path.join(out_dir, CHECKPOINT_META)):
      raise FileExistsError(f"{out_dir} is not a checkpoint written by convert_caffe; refusing to "
                            "overwrite it")
  os.makedirs(out_dir, exist_ok=True)
  tree = jax.tree.map(lambda a: np.asarray(a, np.float32), params)
  ocp.PyTreeCheckpointer().save(params_dir, tree, force=True)
  meta = {"format": "persistent.alexnet-params/1", "order": order, "weights_id": weights_id,
          "source": source}
  with open(os.path.join(out_dir, CHECKPOINT_META), "w") as f:
    json.dump(meta, f, indent=2)
  return out_dir


def load_alexnet_checkpoint(path: str) -> tuple[dict, dict]:
  """(params, meta) from a folder written by `save_alexnet_checkpoint`."""
  import orbax.checkpoint as ocp
  meta_path = os.path.join(path, CHECKPOINT_META)
  if not os.path.exists(meta_path):
    raise CaffeFormatError(f"{path}: not a checkpoint written by `python -m "
                           f"persistent.tools.convert_caffe` (no {CHECKPOINT_META})")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
    if not isinstance(meta, dict) or "weights_id" not in meta or "order" not in meta:
      raise ValueError("missing weights_id / order")
  except ValueError as e:
    raise CaffeFormatError(f"{meta_path}: unreadable metadata: {e}") from None
  restored = ocp.PyTreeCheckpointer().restore(os.path.join(os.path.abspath(path),
                                                           _CHECKPOINT_PARAMS))
  params = jax.tree.map(lambda a: np.asarray(a, np.float32), restored)
  return _check_alexnet_tree(params, path), meta


def load_alexnet_params(weights: str, order: str) -> tuple[Any, str]:
  """(params, weights_id) for the AlexNet module from a .caffemodel or a convert_caffe folder."""
  if order not in ("alexnet", "caffenet"):
    raise ValueError(f"order must be 'alexnet' or 'caffenet', got {order!r}")
  path = os.fspath(weights)
  if os.path.isdir(path):
    params, meta = load_alexnet_checkpoint(path)
    if meta["order"] != order:
      raise CaffeMismatchError(f"{path}: converted for the {meta['order']!r} backbone, not "
                               f"{order!r}")
    return jax.tree.map(jnp.asarray, params), str(meta["weights_id"])
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such .caffemodel file or checkpoint folder")
  from persistent.backbones import file_digest
  params = alexnet_params_from_caffemodel(path, order)
  return jax.tree.map(jnp.asarray, params), file_digest(path)


# ---------------------------------------------------------------------------------------------
# The generic `caffe` backbone
# ---------------------------------------------------------------------------------------------

def _preprocess_fn(mean_bgr: Sequence[float], scale: float) -> Callable[[jax.Array], jax.Array]:
  mean = tuple(float(m) for m in mean_bgr)

  def preprocess(images: jax.Array) -> jax.Array:
    """uint8 RGB NHWC -> Caffe's data blob in NHWC: BGR, minus the mean, times `scale`."""
    x = images.astype(jnp.float32)[..., ::-1] - jnp.asarray(mean, jnp.float32)
    return x * scale if scale != 1.0 else x
  return preprocess


@backbones.register("caffe")
def make_caffe_backbone(weights: str | None = None, *, prototxt: str | None = None,
                        input_size: tuple[int, int] | None = None,
                        mean_bgr: Sequence[float] = IMAGENET_MEAN_BGR, scale: float = 1.0,
                        seed: int = 0, dtype: Any = jnp.float32) -> backbones.Backbone:
  """Any Caffe net as a backbone: every blob is a layer tap.

  weights: the .caffemodel, or 'random' (seeded random weights; needs `prototxt`);
  prototxt: its deploy definition (default: the caffemodel's own); input_size: (H, W), default the
  net's input shape; mean_bgr / scale: Caffe's preprocessing (the mean is subtracted from BGR
  0..255 pixels, the result multiplied by `scale`).
  """
  if weights is None:
    raise FileNotFoundError(
        "the 'caffe' backbone has no default weights: pass weights=PATH.caffemodel (and "
        "prototxt=PATH.prototxt for its deploy definition, unless the caffemodel carries one)")
  if weights == "random":
    if prototxt is None:
      raise ValueError("weights='random' for the 'caffe' backbone needs prototxt=PATH")
    net = random_net(prototxt, seed, dtype=dtype)
  else:
    net = load(weights, prototxt, dtype=dtype)
  where = prototxt if weights == "random" else weights
  if len(net.inputs) != 1:
    raise CaffeUnsupportedError(f"{where}: the net takes {len(net.inputs)} inputs; a backbone "
                                "takes one image input")
  shape = net.input_shape
  if shape is not None and (len(shape) != 4 or shape[1] != 3):
    raise CaffeUnsupportedError(f"{where}: the net's input has shape {shape}; a backbone takes "
                                "3-channel images")
  if input_size is None:
    if shape is None:
      raise CaffeFormatError(f"{where}: the net definition gives no input size; pass "
                             "input_size=(H, W)")
    input_size = (int(shape[2]), int(shape[3]))
  input_size = (int(input_size[0]), int(input_size[1]))
  wid = net.weights_id
  if tuple(mean_bgr) != IMAGENET_MEAN_BGR or scale != 1.0:
    wid += f":mean={','.join(f'{m:g}' for m in mean_bgr)}:scale={scale:g}"
  return backbones.Backbone(name="caffe", module=net.module, params=net.params,
                            input_size=input_size, preprocess=_preprocess_fn(mean_bgr, scale),
                            layers=net.blob_names, weights_id=wid)
