"""Fuzzing the Caffe reader: malformed and hostile files raise only the project's own
`CaffeError`s, quickly (no crash, no hang, no huge allocation).

Inputs: random bytes; byte-level mutations (flips, truncation, insertion, deletion, duplication)
of small valid caffemodels in both formats; character-level mutations of a valid prototxt; valid
prototxts whose numbers are hostile (zero, negative, huge). Each runs through parsing, the
definition, the graph build, weight conversion and, for a share of examples, the shape check that
traces the Flax module (jax.eval_shape). About 3,000 examples in all.
"""
from __future__ import annotations

import os
import sys
import time

import numpy as np
import pytest
from google.protobuf.descriptor import FieldDescriptor as FD
from hypothesis import HealthCheck, given, settings, strategies as st

from persistent.backbones import (alexnet, caffe, caffe_format, caffe_graph, caffe_module,
                                  caffe_params)

sys.path.insert(0, os.path.dirname(__file__))
import caffe_testnets as tn  # noqa: E402
from caffe_testnets import Layer  # noqa: E402

FUZZ = settings(deadline=None, suppress_health_check=list(HealthCheck), derandomize=True)
SLOW_SECONDS = 5.0  # one example may take this long at most (a hang fails the test)


def _net(rng: np.random.Generator) -> list[Layer]:
  def r(*s):
    return rng.standard_normal(s).astype(np.float32)
  return [
      Layer("conv", "Convolution", ["data"], ["conv"],
            {"convolution_param": "num_output: 4 kernel_size: 3 pad: 1 group: 1"},
            [r(4, 3, 3, 3), r(4)]),
      Layer("bn", "BatchNorm", ["conv"], ["conv"], {}, [r(4), np.abs(r(4)) + 1, np.ones(1, np.float32)]),
      Layer("sc", "Scale", ["conv"], ["conv"], {"scale_param": "bias_term: true"}, [r(4), r(4)]),
      Layer("relu", "ReLU", ["conv"], ["conv"]),
      Layer("pool", "Pooling", ["conv"], ["pool"],
            {"pooling_param": "pool: AVE kernel_size: 3 stride: 2 pad: 1"}),
      Layer("lrn", "LRN", ["pool"], ["lrn"], {"lrn_param": "local_size: 3 alpha: 0.1"}),
      Layer("cat", "Concat", ["pool", "lrn"], ["cat"]),
      Layer("sum", "Eltwise", ["cat", "cat"], ["sum"], {"eltwise_param": "coeff: 1 coeff: -1"}),
      Layer("fc", "InnerProduct", ["sum"], ["fc"], {"inner_product_param": "num_output: 3"},
            [r(3, 8 * 5 * 6), r(3)]),
      Layer("prob", "Softmax", ["fc"], ["prob"]),
  ]


def _v1_net(rng: np.random.Generator) -> list[Layer]:
  def r(*s):
    return rng.standard_normal(s).astype(np.float32)
  return [
      Layer("data", "Data", [], ["data", "label"],
            {"transform_param": "crop_size: 9", "data_param": 'source: "x" batch_size: 2'},
            phase=0),
      Layer("conv", "Convolution", ["data"], ["conv"],
            {"convolution_param": "num_output: 4 kernel_size: 3 stride: 2"}, [r(4, 3, 3, 3), r(4)]),
      Layer("relu", "ReLU", ["conv"], ["conv"]),
      Layer("norm", "LRN", ["conv"], ["norm"], {"lrn_param": "local_size: 3 alpha: 0.01"}),
      Layer("pool", "Pooling", ["norm"], ["pool"], {"pooling_param": "pool: MAX kernel_size: 2"}),
      Layer("fc", "InnerProduct", ["pool"], ["fc"], {"inner_product_param": "num_output: 2"},
            [r(2, 4 * 3 * 3), r(2)]),
      Layer("loss", "SoftmaxWithLoss", ["fc", "label"], ["loss"]),
  ]


_RNG = np.random.default_rng(0)
_INPUT = Layer("data", "Input", [], ["data"], {"input_param": "shape { dim: 1 dim: 3 dim: 9 dim: 11 }"})
CURRENT = tn.caffemodel([_INPUT] + _net(_RNG))
LEGACY = tn.caffemodel(_v1_net(_RNG), v1=True)
PROTOTXT = tn.prototxt(_net(_RNG), (1, 3, 9, 11))
ALEXNET_DEF = tn.caffemodel(tn.alexnet_layers("caffenet", train=True, weights=False), v1=True)


def run_pipeline(model_bytes: bytes | None, prototxt: str | None, check_shapes: bool) -> None:
  """Everything `caffe.load` does short of compiling the network."""
  model = caffe_format.parse_caffemodel(model_bytes if model_bytes is not None else CURRENT, "f.model")
  if prototxt is None:
    netdef = caffe_graph.net_definition(model, "f.model", phase=None)
  else:
    netdef = caffe_graph.net_definition(caffe_format.parse_prototxt(prototxt, "f.prototxt"), "f.prototxt")
  graph = caffe_graph.build_graph(netdef)
  weights = caffe_format.weights_by_layer(model)
  graph = caffe.resolve_input_shapes(graph, weights)
  expected = None
  if check_shapes and all(s is not None for s in graph.input_shapes):
    module = caffe_module.CaffeModule(graph.layers, graph.inputs)
    expected = caffe_params.expected_param_shapes(module, graph.input_shapes)
  caffe_params.convert_params(graph, weights, "f.model", expected)


def expect_clean(fn, *args) -> None:
  start = time.perf_counter()
  try:
    fn(*args)
  except caffe_format.CaffeError:
    pass
  elapsed = time.perf_counter() - start
  assert elapsed < SLOW_SECONDS, f"took {elapsed:.1f}s"


def test_the_bases_are_valid():
  run_pipeline(CURRENT, None, True)
  run_pipeline(CURRENT, PROTOTXT, True)
  run_pipeline(LEGACY, None, True)
  with pytest.raises(caffe_format.CaffeMismatchError, match="no weights"):
    alexnet.params_from_caffemodel("f.model", "caffenet",
                                         model=caffe_format.parse_caffemodel(ALEXNET_DEF))


def test_names_that_are_not_utf8():
  """protobuf returns such proto2 strings as bytes; they must still match up (found by fuzzing)."""
  data = LEGACY.replace(b"conv", b"c\xffnv")
  assert data != LEGACY
  run_pipeline(data, None, True)


# ---------------------------------------------------------------------------------------------

_mutation = st.tuples(st.sampled_from(["flip", "truncate", "insert", "delete", "duplicate",
                                       "varint"]),
                      st.floats(0, 1), st.binary(min_size=1, max_size=8), st.integers(1, 64))


def mutate(data: bytes, ops) -> bytes:
  buf = bytearray(data)
  for op, where, payload, n in ops:
    i = int(where * len(buf)) if buf else 0
    if op == "flip" and buf:
      buf[min(i, len(buf) - 1)] ^= payload[0] or 0xFF
    elif op == "truncate":
      del buf[i:]
    elif op == "insert":
      buf[i:i] = payload
    elif op == "delete":
      del buf[i:i + n]
    elif op == "duplicate":
      buf[i:i] = buf[i:i + n]
    elif op == "varint":  # a huge or negative length / number
      buf[i:i] = bytes([0xFF] * 9 + [0x01])
  return bytes(buf)


@settings(FUZZ, max_examples=300)
@given(st.binary(max_size=600))
def test_random_bytes(data):
  expect_clean(run_pipeline, data, None, False)


@settings(FUZZ, max_examples=500)
@given(st.sampled_from(["current", "legacy"]), st.lists(_mutation, min_size=1, max_size=6),
       st.integers(0, 9))
def test_mutated_caffemodels(which, ops, share):
  data = mutate(CURRENT if which == "current" else LEGACY, ops)
  expect_clean(run_pipeline, data, None, share == 0)


_text_mutation = st.tuples(
    st.sampled_from(["delete", "insert", "duplicate_line", "duplicate_line", "number", "number",
                     "number", "brace", "quote"]),
    st.floats(0, 1), st.text(alphabet=st.characters(codec="utf-8"), min_size=1, max_size=6),
    st.integers(1, 30))


def mutate_text(text: str, ops) -> str:
  for op, where, payload, n in ops:
    i = int(where * len(text))
    if op == "delete":
      text = text[:i] + text[i + n:]
    elif op == "insert":
      text = text[:i] + payload + text[i:]
    elif op == "duplicate_line":
      lines = text.split("\n")
      j = min(int(where * len(lines)), len(lines) - 1)
      lines.insert(j, lines[j])
      text = "\n".join(lines)
    elif op == "number":
      digits = [k for k, c in enumerate(text) if c.isdigit()]
      if digits:
        k = digits[int(where * len(digits)) % len(digits)]
        text = text[:k] + str([0, -1, 2 ** 31, 2 ** 40, 65537, 3][n % 6]) + text[k + 1:]
    elif op == "brace":
      text = text[:i] + "{" * n + text[i:]
    elif op == "quote":
      text = text[:i] + '"' + text[i:]
  return text


@settings(FUZZ, max_examples=500)
@given(st.lists(_text_mutation, min_size=1, max_size=5), st.integers(0, 4))
def test_mutated_prototxts(ops, share):
  expect_clean(run_pipeline, None, mutate_text(PROTOTXT, ops), share == 0)


# --------------------------------------------------------------------------------------------
# Message-level mutations: valid protobuf, hostile content

_HOSTILE_INTS = [0, 1, 2, 3, -1, -7, 5, 9, 2 ** 15, 2 ** 16 + 1, 2 ** 24 + 1, 2 ** 31 - 1, 2 ** 32 - 1,
                 2 ** 40, -2 ** 31]
_HOSTILE_FLOATS = [0.0, -1.0, 1.0, 0.5, 1e30, -1e30, 1e-30, float("nan"), float("inf")]
_TYPES = ["Convolution", "InnerProduct", "Pooling", "LRN", "ReLU", "Dropout", "Concat", "Eltwise",
          "BatchNorm", "Scale", "Bias", "Softmax", "Flatten", "Split", "PReLU", "Input", "Data",
          "SoftmaxWithLoss", "Accuracy", "Deconvolution", "Python", "", "\u00e9t\u00e9"]
_RANGES = {FD.TYPE_INT32: (-2 ** 31, 2 ** 31 - 1), FD.TYPE_UINT32: (0, 2 ** 32 - 1),
           FD.TYPE_INT64: (-2 ** 63, 2 ** 63 - 1), FD.TYPE_UINT64: (0, 2 ** 64 - 1)}


def _set_scalar(msg, fd, pick: int, flt: float) -> None:
  """Sets (or appends to) a scalar field of msg with a hostile value of its type."""
  kind = fd.type
  if fd.enum_type is not None:
    values = [v.number for v in fd.enum_type.values]
    value = values[pick % len(values)]
  elif kind == FD.TYPE_BOOL:
    value = bool(pick % 2)
  elif kind in (FD.TYPE_FLOAT, FD.TYPE_DOUBLE):
    value = flt
  elif kind in _RANGES:
    lo, hi = _RANGES[kind]
    value = min(max(_HOSTILE_INTS[pick % len(_HOSTILE_INTS)], lo), hi)
  else:
    value = ["", "data", "conv", "x" * 5][pick % 4]
  if fd.is_repeated:
    getattr(msg, fd.name).append(value)
  else:
    setattr(msg, fd.name, value)


def _sub_messages(layer):
  return [(fd, v) for fd, v in layer.ListFields()
          if fd.message_type is not None and not fd.is_repeated]


_net_op = st.tuples(
    st.sampled_from(["drop", "dup", "swap", "rename", "retype", "bottom", "top", "param",
                     "param", "param", "blob_shape", "blob_legacy", "blob_data", "blob_double",
                     "blob_drop", "blob_dup", "input_dim"]),
    st.integers(0, 10 ** 6), st.integers(0, 10 ** 6), st.sampled_from(_HOSTILE_FLOATS))


def mutate_net(data: bytes, ops, legacy: bool) -> bytes:
  from persistent.backbones import caffe_proto
  net = caffe_proto.NetParameter.FromString(data)
  layers = net.layers if legacy else net.layer
  names = [l.name for l in layers] + ["data", "label", ""]
  for op, a, b, flt in ops:
    if not len(layers) and op != "input_dim":
      break
    layer = layers[a % len(layers)] if len(layers) else None
    if op == "drop":
      del layers[a % len(layers)]
    elif op == "dup":
      layers.add().CopyFrom(layer)
    elif op == "swap":
      other = layers[b % len(layers)]
      tmp = type(layer)()
      tmp.CopyFrom(layer)
      layer.CopyFrom(other)
      other.CopyFrom(tmp)
    elif op == "rename":
      layer.name = names[b % len(names)]
    elif op == "retype":
      if legacy:
        layer.type = [4, 14, 17, 15, 18, 6, 3, 25, 20, 22, 5, 21, 0, 39][b % 14]
      else:
        layer.type = _TYPES[b % len(_TYPES)]
    elif op == "bottom":
      (layer.bottom.append if b % 2 else lambda n: layer.bottom.__setitem__(0, n)
       if len(layer.bottom) else layer.bottom.append(n))(names[b % len(names)])
    elif op == "top":
      layer.top.append(names[b % len(names)])
    elif op == "param":
      subs = _sub_messages(layer)
      if subs:
        _, sub = subs[b % len(subs)]
        scalars = [fd for fd in sub.DESCRIPTOR.fields if fd.message_type is None]
        if scalars:
          _set_scalar(sub, scalars[a % len(scalars)], b, flt)
    elif op.startswith("blob") and len(layer.blobs):
      blob = layer.blobs[b % len(layer.blobs)]
      if op == "blob_shape":
        del blob.shape.dim[:]
        blob.shape.dim.extend(_HOSTILE_INTS[(a + i) % len(_HOSTILE_INTS)] for i in range(b % 5))
      elif op == "blob_legacy":
        blob.num, blob.channels = (a % 7) - 1, _HOSTILE_INTS[b % 11]
        blob.height = blob.width = 1
      elif op == "blob_data":
        values = list(blob.data)[: a % (len(blob.data) + 2)] + [flt] * (b % 3)
        del blob.data[:]
        blob.data.extend(values)
      elif op == "blob_double":
        blob.double_data.extend(blob.data[: a % 5])
      elif op == "blob_drop":
        del layer.blobs[b % len(layer.blobs)]
      else:
        layer.blobs.add().CopyFrom(blob)
    elif op == "input_dim":
      net.input.append(names[b % len(names)])
      net.input_dim.extend(min(max(_HOSTILE_INTS[(a + i) % len(_HOSTILE_INTS)], -2 ** 31),
                               2 ** 31 - 1) for i in range(4))
  return net.SerializeToString()


@settings(FUZZ, max_examples=1000)
@given(st.sampled_from(["current", "legacy"]), st.lists(_net_op, min_size=1, max_size=5),
       st.integers(0, 4))
def test_mutated_nets(which, ops, share):
  legacy = which == "legacy"
  data = mutate_net(LEGACY if legacy else CURRENT, ops, legacy)
  expect_clean(run_pipeline, data, None, share == 0)


@settings(FUZZ, max_examples=200)
@given(st.lists(_net_op, min_size=1, max_size=4), st.sampled_from(["caffenet", "alexnet"]))
def test_mutated_alexnet_nets(ops, order):
  def run():
    model = caffe_format.parse_caffemodel(mutate_net(ALEXNET_DEF, ops, True), "f.model")
    alexnet.params_from_caffemodel("f.model", order, model=model)
  expect_clean(run)


_small = st.integers(1, 12)
# Mostly plausible numbers, one in eight hostile (negative ones fail already in the text parser,
# as the fields are unsigned, so these reach further).
_num = st.tuples(st.integers(0, 7), _small,
                 st.sampled_from([0, 2 ** 15, 2 ** 16, 2 ** 16 + 1, 2 ** 24 + 1, 2 ** 31 - 1])
                 ).map(lambda t: t[2] if t[0] == 0 else t[1])


@settings(FUZZ, max_examples=500)
@given(dims=st.lists(_num, min_size=4, max_size=4), conv=st.lists(_num, min_size=6, max_size=6),
       pool=st.lists(_num, min_size=3, max_size=3), method=st.sampled_from(["MAX", "AVE"]),
       axes=st.lists(st.integers(-5, 4), min_size=4, max_size=4), glob=st.integers(0, 3),
       fc=_num)
def test_hostile_numbers_in_a_valid_prototxt(dims, conv, pool, method, axes, glob, fc):
  out, k, s, p, d, g = conv
  g = g if g > 12 else 1 + g % 2
  out = out * g if out <= 12 else out
  pk, ps, pp = pool
  text = f'input: "data" {" ".join(f"input_dim: {x}" for x in dims)}\n'
  text += (f'layer {{ name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param {{ '
           f"num_output: {out} kernel_size: {k} stride: {s} pad: {p} dilation: {d} group: {g} }} }}\n")
  pool_body = "global_pooling: true" if glob == 0 else f"kernel_size: {pk} stride: {ps} pad: {pp}"
  text += (f'layer {{ name: "p" type: "Pooling" bottom: "c" top: "p" pooling_param {{ '
           f"pool: {method} {pool_body} }} }}\n")
  text += (f'layer {{ name: "cat" type: "Concat" bottom: "p" bottom: "p" top: "cat" '
           f"concat_param {{ axis: {axes[0]} }} }}\n")
  text += (f'layer {{ name: "s" type: "Scale" bottom: "cat" top: "s" '
           f"scale_param {{ axis: {axes[1]} num_axes: {axes[2]} bias_term: true }} }}\n")
  text += (f'layer {{ name: "f" type: "InnerProduct" bottom: "s" top: "f" '
           f"inner_product_param {{ num_output: {fc} axis: {axes[3]} }} }}\n")
  text += 'layer { name: "sm" type: "Softmax" bottom: "f" top: "sm" }\n'
  expect_clean(run_pipeline, None, text, True)


def test_hostile_data_layer_crop():
  """A training definition's crop_size sets the input size: it is range-checked too."""
  layers = _v1_net(np.random.default_rng(1))
  layers[0].params["transform_param"] = "crop_size: 4294967295"
  with pytest.raises(caffe_format.CaffeFormatError, match="invalid shape"):
    run_pipeline(tn.caffemodel(layers, v1=True), None, True)
