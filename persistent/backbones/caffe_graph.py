"""Caffe net definitions -> validated, compiled graphs (no weights involved).

`net_definition` keeps the layers of a NetParameter that run in a phase (Caffe's include/exclude
rules), with the legacy net-level inputs; `build_graph` validates them and compiles each layer into
a `LayerSpec` (its type, blob names and hashable settings). Data, loss and accuracy layers are
dropped (a data layer's first top becomes a net input).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Sequence

from persistent.backbones import caffe_proto as cpb
from persistent.backbones.caffe_format import (MAX_CHANNELS, MAX_DIM, MAX_INPUT, CaffeError,
                                               CaffeFormatError, CaffeUnsupportedError, text,
                                               texts)


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
        raise CaffeUnsupportedError(f"{where}: layer {text(l.name)!r} has legacy type {v1}, which "
                                    "has no current equivalent")
      out.append(RawLayer(text(l.name), typ, texts(l.bottom), texts(l.top), l, True))
  else:
    for l in net.layer:
      out.append(RawLayer(text(l.name), text(l.type), texts(l.bottom), texts(l.top), l, False))
  return out


def _meets_rule(rule, phase: str, level: int, stages: set[str]) -> bool:
  if rule.HasField("phase") and cpb.enum_name(rule, "phase") != phase:
    return False
  if rule.HasField("min_level") and level < rule.min_level:
    return False
  if rule.HasField("max_level") and level > rule.max_level:
    return False
  return (all(s in stages for s in texts(rule.stage))
          and not any(s in stages for s in texts(rule.not_stage)))


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
    stages = set(texts(net.state.stage)) if net.HasField("state") else set()
    layers = [l for l in layers if _included(l, phase, level, stages)]
  inputs: dict[str, tuple[int, ...] | None] = {}
  names = list(texts(net.input))
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
  return NetDefinition(text(net.name), layers, inputs, where)





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
  return tuple(_check_range(layer, what, int(x), lo, MAX_DIM) for x in vals)


def _spec_convolution(l: RawLayer) -> dict:
  p = l.param.convolution_param
  if p.axis != 1:
    raise CaffeUnsupportedError(f"{l.where()}: convolution axis {p.axis} (only 1 is supported)")
  if not p.num_output:
    raise CaffeFormatError(f"{l.where()}: convolution_param.num_output is missing")
  if not (p.kernel_size or p.HasField("kernel_h") or p.HasField("kernel_w")):
    raise CaffeFormatError(f"{l.where()}: no kernel size")
  group = _check_range(l, "group", p.group, 1, MAX_CHANNELS)
  num_output = _check_range(l, "num_output", p.num_output, 1, MAX_CHANNELS)
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
      dilation=tuple(_check_range(l, "dilation", int(d), 1, MAX_DIM)
                     for d in (dil * 2 if len(dil) == 1 else dil)))


def _spec_inner_product(l: RawLayer) -> dict:
  p = l.param.inner_product_param
  if not p.num_output:
    raise CaffeFormatError(f"{l.where()}: inner_product_param.num_output is missing")
  return dict(num_output=_check_range(l, "num_output", p.num_output, 1, MAX_CHANNELS),
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
  size = _check_range(l, "local_size", p.local_size, 1, MAX_DIM)
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
SPECS: dict[str, tuple[Callable[[RawLayer], dict], int | None, int | None]] = {
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
SUPPORTED_LAYERS = ("Input",) + tuple(sorted(SPECS))


def spec_of(layer: RawLayer) -> LayerSpec:
  if layer.type not in SPECS:
    raise CaffeUnsupportedError(
        f"{layer.where()}: unsupported layer type {layer.type!r}; supported: "
        f"{', '.join(SUPPORTED_LAYERS)} (and data, loss and accuracy layers, which are dropped)")
  parse, n_bottom, n_top = SPECS[layer.type]
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


def _weight_bias(spec: LayerSpec) -> tuple[str, ...]:
  return ("kernel", "bias") if spec["bias_term"] else ("kernel",)


def _scale_names(spec: LayerSpec) -> tuple[str, ...]:
  if len(spec.bottoms) == 2:  # the scale comes from the second input
    return ("bias",) if spec["bias_term"] else ()
  return ("scale", "bias") if spec["bias_term"] else ("scale",)


# type -> the Flax parameter names of its stored blobs, in Caffe's blob order.
_PARAM_BLOB_NAMES: dict[str, Callable[[LayerSpec], tuple[str, ...]]] = {
    "Convolution": _weight_bias, "InnerProduct": _weight_bias,
    "BatchNorm": lambda s: ("mean", "var", "scale_factor"),
    "Scale": _scale_names,
    "Bias": lambda s: () if len(s.bottoms) == 2 else ("bias",),
    "PReLU": lambda s: ("slope",),
}


def param_blob_names(spec: LayerSpec) -> tuple[str, ...]:
  """The Flax parameter names of a layer's stored blobs, in Caffe's blob order (() for none)."""
  names = _PARAM_BLOB_NAMES.get(spec.type)
  return names(spec) if names else ()


def _check_input_shape(where: str, name: str, shape: Sequence[int]) -> tuple[int, ...]:
  shape = tuple(int(d) for d in shape)
  limits = [MAX_CHANNELS] * len(shape)
  if len(shape) == 4:
    limits = [MAX_CHANNELS, MAX_CHANNELS, MAX_DIM, MAX_DIM]
  # The batch size (first axis) plays no part: the net runs on any batch.
  if (not shape or shape[0] < 0
      or any(not 1 <= d <= m for d, m in zip(shape[1:], limits[1:]))):
    raise CaffeFormatError(f"{where}: input {name!r} has an invalid shape {shape}")
  if math.prod(shape[1:]) > MAX_INPUT:
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
      spec = spec_of(layer)
    except CaffeError as e:
      raise type(e)(f"{where}: {e}") from None
    if param_blob_names(spec):
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


