"""Caffe models in JAX without Caffe: `load(caffemodel, prototxt=None)` -> `CaffeNet`, and the
generic `caffe` backbone (any Caffe net; every blob is a tap).

The pieces: `caffe_format` reads the files, `caffe_graph` compiles a definition, `caffe_module`
runs it in Flax, `caffe_params` turns stored blobs into its parameters. `net(x)` takes Caffe's
data blob (BGR, mean subtracted) transposed to NHWC and returns every blob by its (top) name, 4-D
blobs in NHWC and 2-D blobs as (N, C), with Caffe's values: in-place layers overwrite their blob
as in Caffe, so e.g. 'conv1' is post-ReLU when a ReLU runs in place on it. The network runs in
the TEST phase. The AlexNet / CaffeNet backbones load their Caffe weights in `alexnet`.
"""
from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from persistent import hashing
from persistent.backbones import base
from persistent.backbones.caffe_format import (MAX_CHANNELS, CaffeError, CaffeFormatError,
                                               CaffeMismatchError, CaffeUnsupportedError,
                                               LayerBlobs, blob_shape, read_caffemodel,
                                               read_prototxt, weights_by_layer)
from persistent.backbones.caffe_graph import Graph, NetDefinition, build_graph, net_definition
from persistent.backbones.caffe_module import CaffeModule
from persistent.backbones.caffe_params import convert_params, expected_param_shapes
from persistent.backbones.preprocessing import IMAGENET_MEAN_BGR, Preprocessing

__all__ = ["CaffeError", "CaffeFormatError", "CaffeMismatchError", "CaffeUnsupportedError",
           "CaffeNet", "load", "random_net", "resolve_input_shapes", "make_caffe_backbone"]


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


def _first_conv_channels(graph: Graph, weights: Mapping[str, LayerBlobs], name: str) -> int:
  """The input channels of a data blob, read from the first layer with weights that reads it."""
  for spec in graph.layers:
    if name in spec.bottoms and spec.type == "Convolution" and spec.name in weights:
      shape, _ = blob_shape(weights[spec.name].blobs[0])
      if len(shape) == 4:
        return shape[1] * spec["group"]
  return 0


def resolve_input_shapes(graph: Graph, weights: Mapping[str, LayerBlobs]) -> Graph:
  shapes = []
  for name, s in zip(graph.inputs, graph.input_shapes):
    if s is not None and len(s) == 4 and s[1] == 0:
      c = _first_conv_channels(graph, weights, name)
      s = (s[0], c, s[2], s[3]) if 1 <= c <= MAX_CHANNELS else None
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
  where = os.fspath(caffemodel_path)
  model = read_caffemodel(caffemodel_path)
  if prototxt_path is not None:
    netdef = net_definition(read_prototxt(prototxt_path), os.fspath(prototxt_path))
    weights_id = (f"{base.file_weights_id(caffemodel_path)}"
                  f"+sha1:{hashing.file_digest(prototxt_path)}")
  else:
    netdef = net_definition(model, where, phase=None)
    weights_id = base.file_weights_id(caffemodel_path)
  return _load(model, netdef, where, weights_id, dtype)


def random_net(prototxt_path: str, seed: int = 0, *, dtype: Any = jnp.float32) -> CaffeNet:
  """A net from its definition with seeded random weights (the architecture-only control).

  Kernels are LeCun-normal (std 1/sqrt(fan in)), biases and means 0, scales and variances 1,
  PReLU slopes 0.25; drawn with NumPy (compiling JAX's RNG for every shape is slow on CPU).
  """
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
  wid = f"{base.random_weights_id(seed)}+sha1:{hashing.file_digest(prototxt_path)}"
  return CaffeNet(module, params, graph, wid)


def _load(model, netdef: NetDefinition, where: str, weights_id: str, dtype: Any) -> CaffeNet:
  graph = build_graph(netdef)
  weights = weights_by_layer(model)
  graph = resolve_input_shapes(graph, weights)
  module = CaffeModule(layers=graph.layers, inputs=graph.inputs, dtype=dtype)
  expected = None
  if all(s is not None for s in graph.input_shapes):
    expected = expected_param_shapes(module, graph.input_shapes)
  params = convert_params(graph, weights, where, expected)
  params = jax.tree.map(jnp.asarray, params)
  return CaffeNet(module, params, graph, weights_id)




# ---------------------------------------------------------------------------------------------
# The generic `caffe` backbone
# ---------------------------------------------------------------------------------------------

@base.register("caffe")
def make_caffe_backbone(weights: str | None = None, *, prototxt: str | None = None,
                        input_size: tuple[int, int] | None = None,
                        mean_bgr: Sequence[float] = IMAGENET_MEAN_BGR, scale: float = 1.0,
                        seed: int = 0, dtype: Any = jnp.float32) -> base.Backbone:
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
  # Caffe: (BGR pixel - mean) * scale, i.e. std = 1 / scale in pixel units.
  preprocess = Preprocessing(input_size, tuple(mean_bgr), (1.0 / scale,) * 3, channels="BGR")
  return base.Backbone(name="caffe", module=net.module, params=net.params,
                            input_size=input_size, preprocess=preprocess,
                            layers=net.blob_names, weights_id=wid)
