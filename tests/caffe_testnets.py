"""Random-weight Caffe nets written to disk, for testing the Caffe reader against OpenCV.

A net is a list of `Layer`s (blobs in Caffe's layout). `prototxt()` writes it as text by string
formatting (current or legacy V1 format); `caffemodel()` writes the binary wire format by hand from
caffe.proto's field numbers, listed here independently of persistent.backbones.caffe_proto (only
the small `*_param` sub-messages are serialised with that schema, from their text). So the
reader's schema is checked against numbers typed twice, and OpenCV reads the same files.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

# caffe.proto field numbers, by hand.
_NET = {"name": 1, "layers": 2, "input": 3, "input_dim": 4, "layer": 100}
_BLOB = {"num": 1, "channels": 2, "height": 3, "width": 4, "data": 5, "shape": 7}
_LAYER = {"name": 1, "type": 2, "bottom": 3, "top": 4, "blobs": 7, "include": 8}
_V1 = {"bottom": 2, "top": 3, "name": 4, "type": 5, "blobs": 6, "include": 32}
_PARAMS = {  # param message field: (LayerParameter number, V1LayerParameter number)
    "transform_param": (100, 36), "convolution_param": (106, 10), "data_param": (107, 11),
    "dropout_param": (108, 12), "inner_product_param": (117, 17), "lrn_param": (118, 18),
    "pooling_param": (121, 19), "relu_param": (123, 30), "softmax_param": (125, 39),
    "input_param": (143, None), "batch_norm_param": (139, None), "scale_param": (142, None),
    "eltwise_param": (110, 24), "concat_param": (104, 9), "flatten_param": (135, None),
    "power_param": (122, 21), "elu_param": (140, None), "prelu_param": (131, None),
    "bias_param": (141, None),
}
_V1_TYPES = {  # V1LayerParameter.LayerType
    "Data": ("DATA", 5), "Convolution": ("CONVOLUTION", 4), "ReLU": ("RELU", 18),
    "LRN": ("LRN", 15), "Pooling": ("POOLING", 17), "InnerProduct": ("INNER_PRODUCT", 14),
    "Dropout": ("DROPOUT", 6), "Softmax": ("SOFTMAX", 20), "SoftmaxWithLoss": ("SOFTMAX_LOSS", 21),
    "Accuracy": ("ACCURACY", 1), "Concat": ("CONCAT", 3), "Eltwise": ("ELTWISE", 25),
    "Flatten": ("FLATTEN", 8), "Split": ("SPLIT", 22), "Sigmoid": ("SIGMOID", 19),
    "TanH": ("TANH", 23), "AbsVal": ("ABSVAL", 35), "Power": ("POWER", 26),
}
_TRAIN, _TEST = 0, 1  # Phase


@dataclasses.dataclass
class Layer:
  name: str
  type: str
  bottom: Sequence[str] = ()
  top: Sequence[str] = ()
  params: dict[str, str] = dataclasses.field(default_factory=dict)  # field -> text body
  blobs: list[np.ndarray] = dataclasses.field(default_factory=list)
  phase: int | None = None  # include { phase } rule


# ------------------------------------------------------------------------------- wire format

def _varint(n: int) -> bytes:
  n &= (1 << 64) - 1
  out = bytearray()
  while True:
    b = n & 0x7F
    n >>= 7
    out.append(b | (0x80 if n else 0))
    if not n:
      return bytes(out)


def _key(field: int, wire: int) -> bytes:
  return _varint(field << 3 | wire)


def _ld(field: int, payload: bytes) -> bytes:
  return _key(field, 2) + _varint(len(payload)) + payload


def _ld_parts(field: int, parts: list) -> list:
  """A length-delimited field as a list of byte chunks (large blobs are not copied)."""
  return [_key(field, 2), _varint(sum(len(p) for p in parts)), *parts]


def _int(field: int, value: int) -> bytes:
  return _key(field, 0) + _varint(value)


def blob_bytes(arr: np.ndarray, legacy: bool) -> bytes:
  """A BlobProto: legacy blobs give num/channels/height/width (leading ones), others a BlobShape."""
  return b"".join(_blob_parts(arr, legacy))


def _blob_parts(arr: np.ndarray, legacy: bool) -> list:
  arr = np.ascontiguousarray(arr, "<f4")
  if legacy:
    dims = (1,) * (4 - arr.ndim) + arr.shape
    head = b"".join(_int(_BLOB[k], d) for k, d in zip(("num", "channels", "height", "width"), dims))
  else:
    head = _ld(_BLOB["shape"], _ld(1, b"".join(_varint(d) for d in arr.shape)))
  return [head, *_ld_parts(_BLOB["data"], [memoryview(arr).cast("B")])]


def _param_bytes(field: str, text: str) -> bytes:
  from google.protobuf import text_format
  from persistent.backbones import caffe_proto
  owner = caffe_proto.message_class("LayerParameter")
  cls = caffe_proto.message_class(owner.DESCRIPTOR.fields_by_name[field].message_type.name)
  return text_format.Parse(text, cls()).SerializeToString()


def _layer_parts(layer: Layer, v1: bool, with_blobs: bool) -> list:
  f = _V1 if v1 else _LAYER
  out = [_ld(f["name"], layer.name.encode())]
  if v1:
    out.append(_int(f["type"], _V1_TYPES[layer.type][1]))
  else:
    out.append(_ld(f["type"], layer.type.encode()))
  out += [_ld(f["bottom"], b.encode()) for b in layer.bottom]
  out += [_ld(f["top"], t.encode()) for t in layer.top]
  if layer.phase is not None:
    out.append(_ld(f["include"], _int(1, layer.phase)))
  for field, text in layer.params.items():
    number = _PARAMS[field][1 if v1 else 0]
    assert number is not None, f"{field} has no V1 form"
    out.append(_ld(number, _param_bytes(field, text)))
  if with_blobs:
    for b in layer.blobs:
      out += _ld_parts(f["blobs"], _blob_parts(b, legacy=v1))
  return out


def caffemodel_parts(layers: Sequence[Layer], v1: bool = False, name: str = "testnet") -> list:
  """`caffemodel` as a list of byte chunks, for writing large nets without copies."""
  field = _NET["layers"] if v1 else _NET["layer"]
  out = [_ld(_NET["name"], name.encode())]
  for l in layers:
    out += _ld_parts(field, _layer_parts(l, v1, True))
  return out


def caffemodel(layers: Sequence[Layer], v1: bool = False, name: str = "testnet") -> bytes:
  """A binary NetParameter with the layers (definitions and blobs)."""
  return b"".join(caffemodel_parts(layers, v1, name))


# ------------------------------------------------------------------------------- text format

def prototxt(layers: Sequence[Layer], input_shape: Sequence[int] | None = None,
             v1: bool = False, name: str = "testnet", extras: bool = True) -> str:
  """A deploy definition; `input_shape` (N, C, H, W) adds an Input layer (or V1 input_dim).

  `extras` adds fields a reader must skip or ignore: param { lr_mult }, fillers, engine.
  """
  lines = [f'name: "{name}"']
  if input_shape is not None:
    if v1:
      lines.append('input: "data"')
      lines += [f"input_dim: {d}" for d in input_shape]
    else:
      dims = " ".join(f"dim: {d}" for d in input_shape)
      lines.append(f'layer {{\n  name: "data"\n  type: "Input"\n  top: "data"\n'
                   f'  input_param {{ shape: {{ {dims} }} }}\n}}')
  for l in layers:
    body = [f'  name: "{l.name}"',
            f"  type: {_V1_TYPES[l.type][0]}" if v1 else f'  type: "{l.type}"']
    body += [f'  bottom: "{b}"' for b in l.bottom] + [f'  top: "{t}"' for t in l.top]
    if l.phase is not None:
      body.append(f"  include {{ phase: {('TRAIN', 'TEST')[l.phase]} }}")
    if extras and l.type in ("Convolution", "InnerProduct"):
      if v1:
        body += ["  blobs_lr: 1", "  blobs_lr: 2", "  weight_decay: 1", "  weight_decay: 0"]
      else:
        body += ["  param { lr_mult: 1 decay_mult: 1 }", "  param { lr_mult: 2 decay_mult: 0 }"]
    for field, text in l.params.items():
      if extras and field in ("convolution_param", "inner_product_param"):
        text += ' weight_filler { type: "gaussian" std: 0.01 } bias_filler { type: "constant" ' \
                'value: 0.1 }'
      body.append(f"  {field} {{ {text} }}")
    lines.append(("layers" if v1 else "layer") + " {\n" + "\n".join(body) + "\n}")
  return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------- AlexNet

_ALEX_CONVS = [  # name, out, in/group, kernel, stride, pad, group
    ("conv1", 96, 3, 11, 4, 0, 1), ("conv2", 256, 48, 5, 1, 2, 2),
    ("conv3", 384, 256, 3, 1, 1, 1), ("conv4", 384, 192, 3, 1, 1, 2),
    ("conv5", 256, 192, 3, 1, 1, 2),
]


def _he(rng, shape, fan_in, gain=1.0):
  return (rng.standard_normal(shape, dtype=np.float32) * np.float32(gain * np.sqrt(2.0 / fan_in)))


def alexnet_layers(order: str = "alexnet", seed: int = 0, train: bool = False,
                   crop: int | None = 227, weights: bool = True) -> list[Layer]:
  """BVLC AlexNet ('alexnet': LRN before pooling) or CaffeNet ('caffenet'), random weights.

  `train` adds what a snapshot of the training net holds: a Data layer (with `crop` as its
  transform_param crop_size, if given) and a SoftmaxWithLoss layer instead of the Softmax.
  `weights=False` leaves the blobs empty (for writing definitions).
  """
  rng = np.random.default_rng(seed)
  layers: list[Layer] = []
  if train:
    tp = "mirror: true mean_file: \"data/ilsvrc12/imagenet_mean.binaryproto\""
    params = {"data_param": 'source: "examples/imagenet/ilsvrc12_train_lmdb" batch_size: 256 '
                            "backend: LMDB"}
    if crop:
      tp += f" crop_size: {crop}"
    params = {"transform_param": tp, **params}
    layers.append(Layer("data", "Data", (), ("data", "label"), params, phase=_TRAIN))
  x = "data"
  for name, out, inp, k, s, p, g in _ALEX_CONVS:
    i = name[-1]
    w = _he(rng, (out, inp, k, k), inp * k * k) if weights else None
    b = (0.1 * rng.standard_normal(out)).astype(np.float32) if weights else None
    text = f"num_output: {out} kernel_size: {k} stride: {s}"
    text += f" pad: {p}" if p else ""
    text += f" group: {g}" if g > 1 else ""
    layers.append(Layer(name, "Convolution", (x,), (name,), {"convolution_param": text},
                        [w, b] if weights else []))
    layers.append(Layer(f"relu{i}", "ReLU", (name,), (name,)))
    x = name
    if i in "12":
      norm = Layer(f"norm{i}", "LRN", None, (f"norm{i}",),
                   {"lrn_param": "local_size: 5 alpha: 0.0001 beta: 0.75"})
      pool = Layer(f"pool{i}", "Pooling", None, (f"pool{i}",),
                   {"pooling_param": "pool: MAX kernel_size: 3 stride: 2"})
      first, second = (norm, pool) if order == "alexnet" else (pool, norm)
      first.bottom, second.bottom = (x,), (first.top[0],)
      layers += [first, second]
      x = second.top[0]
  layers.append(Layer("pool5", "Pooling", ("conv5",), ("pool5",),
                      {"pooling_param": "pool: MAX kernel_size: 3 stride: 2"}))
  x = "pool5"
  for name, k, n in (("fc6", 9216, 4096), ("fc7", 4096, 4096), ("fc8", 4096, 1000)):
    gain = 0.05 if name == "fc8" else 1.0  # keep the softmax away from one-hot
    blobs = []
    if weights:
      blobs = [_he(rng, (n, k), k, gain), (0.1 * rng.standard_normal(n)).astype(np.float32)]
    layers.append(Layer(name, "InnerProduct", (x,), (name,),
                        {"inner_product_param": f"num_output: {n}"}, blobs))
    x = name
    if name != "fc8":
      i = name[-1]
      layers.append(Layer(f"relu{i}", "ReLU", (name,), (name,)))
      layers.append(Layer(f"drop{i}", "Dropout", (name,), (name,),
                          {"dropout_param": "dropout_ratio: 0.5"}))
  if train:
    layers.append(Layer("loss", "SoftmaxWithLoss", ("fc8", "label"), ("loss",)))
  else:
    layers.append(Layer("prob", "Softmax", ("fc8",), ("prob",)))
  return layers


def alexnet_blobs(layers: Sequence[Layer]) -> dict[str, list[np.ndarray]]:
  return {l.name: l.blobs for l in layers if l.blobs}


def write_alexnet(folder, order: str, v1: bool, seed: int = 0, train: bool = True,
                  crop: int | None = 227) -> tuple[str, str]:
  """(caffemodel, deploy prototxt) paths of a random-weight AlexNet/CaffeNet in `folder`.

  The caffemodel is in the legacy V1 format when `v1` (as the published bvlc_alexnet.caffemodel);
  it holds the training net (Data + loss) when `train`. The deploy prototxt is current-format.
  """
  import os
  tag = f"{order}_{'v1' if v1 else 'cur'}_{seed}"
  model = os.path.join(folder, f"{tag}.caffemodel")
  deploy = os.path.join(folder, f"{order}_deploy.prototxt")
  with open(model, "wb") as f:
    f.writelines(caffemodel_parts(alexnet_layers(order, seed, train=train, crop=crop), v1=v1,
                                  name=order))
  with open(deploy, "w") as f:
    f.write(prototxt(alexnet_layers(order, weights=False), (10, 3, 227, 227), name=order))
  return model, deploy

