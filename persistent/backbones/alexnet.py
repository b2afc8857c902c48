"""AlexNet in Flax with the Caffe reference models' layout.

Two layer orders exist: BVLC AlexNet (conv -> ReLU -> LRN -> pool) and CaffeNet
(conv -> ReLU -> pool -> LRN). conv2/4/5 have two groups. fc6/fc7 taps are post-ReLU, as Caffe's
in-place ReLU leaves the blobs. pool5 is flattened in Caffe's (C, H, W) order so that fc6's kernel
is Caffe's weight matrix transposed.

Weights: a BVLC AlexNet / CaffeNet `.caffemodel` (either Caffe format; its own layer definitions,
and the prototxt when given, are checked against this module: layer order and every setting), or
a folder written by `python -m persistent.tools.convert_caffe` (orbax, loads without protobuf).
"""
from __future__ import annotations

import functools
import math
import os
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from persistent.backbones import base
from persistent.backbones import caffe_ops
from persistent.backbones import state_dict as sd_lib
from persistent.backbones.caffe_format import (CaffeError, CaffeMismatchError, read_caffemodel,
                                               read_prototxt, weights_by_layer)
from persistent.backbones.caffe_graph import (Graph, LayerSpec, NetDefinition, net_definition,
                                              spec_of)
from persistent.backbones.caffe_params import convert_params
from persistent.backbones.preprocessing import IMAGENET_MEAN_BGR, Preprocessing

INPUT_SIZE = (227, 227)
LAYERS = ("conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3", "conv4", "conv5",
          "pool5", "fc6", "fc7", "fc8", "logits", "prob")  # in AlexNet's order
# CaffeNet pools before normalising.
CAFFENET_LAYERS = tuple({"norm1": "pool1", "pool1": "norm1", "norm2": "pool2",
                         "pool2": "norm2"}.get(l, l) for l in LAYERS)
PARAM_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

CONVS = {  # name: (features, kernel, stride, pad, groups)
    "conv1": (96, 11, 4, 0, 1),
    "conv2": (256, 5, 1, 2, 2),
    "conv3": (384, 3, 1, 1, 1),
    "conv4": (384, 3, 1, 1, 2),
    "conv5": (256, 3, 1, 1, 2),
}


class _CaffeConv(nn.Module):
  """A Caffe convolution with params {'kernel': HWIO (in/groups), 'bias'}, as nn.Conv names them.

  Full float32 precision (Caffe-exact also on GPUs whose default is TF32); groups are split into
  separate convolutions on CPU, where XLA's grouped convolution is several times slower.
  """
  features: int
  kernel: int
  stride: int
  pad: int
  groups: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel, self.kernel, x.shape[-1] // self.groups, self.features))
    bias = self.param("bias", nn.initializers.zeros, (self.features,))
    precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
    return caffe_ops.conv2d(x, kernel.astype(self.dtype), bias.astype(self.dtype),
                            (self.stride, self.stride), (self.pad, self.pad), groups=self.groups,
                            precision=precision)


class AlexNet(nn.Module):
  """Returns every named blob; `order` is 'alexnet' or 'caffenet'."""
  order: str = "alexnet"
  num_classes: int = 1000
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    if self.order not in ("alexnet", "caffenet"):
      raise ValueError(f"order must be 'alexnet' or 'caffenet', got {self.order!r}")
    out = {}

    def conv(name, h):
      feats, k, s, p, g = CONVS[name]
      h = _CaffeConv(feats, k, s, p, g, dtype=self.dtype, name=name)(h)
      out[name] = h = nn.relu(h)
      return h

    def pool(h):
      return caffe_ops.max_pool(h, (3, 3), (2, 2))

    x = x.astype(self.dtype)
    for i in (1, 2):
      h = conv(f"conv{i}", x)
      if self.order == "alexnet":
        out[f"norm{i}"] = h = caffe_ops.lrn_across_channels(h)
        out[f"pool{i}"] = x = pool(h)
      else:
        out[f"pool{i}"] = h = pool(h)
        out[f"norm{i}"] = x = caffe_ops.lrn_across_channels(h)
    h = conv("conv3", x)
    h = conv("conv4", h)
    h = conv("conv5", h)
    out["pool5"] = h = pool(h)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)
    precision = jax.lax.Precision.HIGHEST if self.dtype == jnp.float32 else None
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, precision=precision, name=name)
    out["fc6"] = h = nn.relu(dense(4096, "fc6")(h))
    out["fc7"] = h = nn.relu(dense(4096, "fc7")(h))
    out["fc8"] = out["logits"] = h = dense(self.num_classes, "fc8")(h)
    out["prob"] = jax.nn.softmax(h.astype(jnp.float32), axis=-1)
    return out


# Caffe's data blob in NHWC: BGR, 0..255, minus the ImageNet mean; the reference models were
# evaluated on 227x227 crops of 256x256 images.
preprocess = Preprocessing(INPUT_SIZE, IMAGENET_MEAN_BGR, channels="BGR", resize="bilinear",
                           resize_to=256, crop="center")
ORDERS = ("alexnet", "caffenet")


# ---------------------------------------------------------------------------------------------
# Weights from Caffe files


@functools.lru_cache(maxsize=1)
def expected_shapes() -> dict[tuple[str, ...], tuple[int, ...]]:
  """{(layer, param): shape} of the AlexNet module at its input size."""
  return sd_lib.param_shapes(AlexNet(order="alexnet"), (1, *INPUT_SIZE, 3))


def _expected_tree() -> dict:
  tree: dict = {}
  for (layer, name), shape in expected_shapes().items():
    tree.setdefault(layer, {})[name] = shape
  return tree


def layer_settings() -> dict[str, dict]:
  """The settings of this module's layers, as Caffe LayerSpec attrs."""
  out = {}
  for name, (feats, k, s, p, g) in CONVS.items():
    out[name] = dict(num_output=feats, kernel=(k, k), stride=(s, s), pad=(p, p), group=g,
                     dilation=(1, 1), bias_term=True)
  for name in ("pool1", "pool2", "pool5"):
    out[name] = dict(method="MAX", kernel=(3, 3), stride=(2, 2), pad=(0, 0), global_pooling=False,
                     ceil_mode=True)
  for name in ("norm1", "norm2"):
    out[name] = dict(local_size=5, alpha=1e-4, beta=0.75, k=1.0, region="ACROSS_CHANNELS")
  return out


def detect_order(netdef: NetDefinition) -> str | None:
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


def check_definition(netdef: NetDefinition, order: str) -> None:
  """Errors when a definition is not the `order` AlexNet this module computes."""
  where = netdef.where
  found = detect_order(netdef)
  if found is not None and found != order:
    other = {"alexnet": "BVLC AlexNet (conv -> ReLU -> LRN -> pool)",
             "caffenet": "CaffeNet (conv -> ReLU -> pool -> LRN)"}
    raise CaffeMismatchError(f"{where}: this net is {other[found]}, but the {order!r} backbone "
                             f"computes {other[order]}: use the {found!r} backbone")
  by_name = {l.name: l for l in netdef.layers}
  for name, want in layer_settings().items():
    layer = by_name.get(name)
    if layer is None:
      continue
    try:
      got = dict(spec_of(layer).attrs)
    except CaffeError as e:
      raise CaffeMismatchError(f"{where}: {e}") from None
    diff = {k: (got.get(k), v) for k, v in want.items()
            if not (got.get(k) == v or (isinstance(v, float) and got.get(k) is not None
                                        and math.isclose(got[k], v, rel_tol=1e-6)))}
    if diff:
      detail = ", ".join(f"{k} {a} (the backbone uses {b})" for k, (a, b) in diff.items())
      raise CaffeMismatchError(f"{where}: {layer.where()} differs from the {order!r} backbone: "
                               f"{detail}")


def params_from_caffemodel(caffemodel_path: str, order: str, prototxt_path: str | None = None,
                           model: Any = None) -> dict:
  """AlexNet-module parameters from a BVLC AlexNet / CaffeNet caffemodel (either format).

  The caffemodel's own layer definitions (and the prototxt, when given) are checked against the
  module. `model`: the caffemodel already parsed (`read_caffemodel`), to save reading it again.
  """
  where = os.fspath(caffemodel_path)
  model = read_caffemodel(caffemodel_path) if model is None else model
  check_definition(net_definition(model, where, phase=None), order)
  if prototxt_path is not None:
    check_definition(net_definition(read_prototxt(prototxt_path), prototxt_path), order)
  weights = weights_by_layer(model)
  missing = [n for n in PARAM_LAYERS if n not in weights]
  if missing:
    raise CaffeMismatchError(f"{where}: no weights for {missing}; an AlexNet/CaffeNet caffemodel "
                             f"has layers {list(PARAM_LAYERS)}; it has {sorted(weights)[:20]}")
  expected = _expected_tree()
  settings = layer_settings()
  specs = []
  for name in PARAM_LAYERS:
    if name.startswith("conv"):
      attrs = settings[name]
      specs.append(LayerSpec(name, "Convolution", ("x",), (name,), tuple(sorted(attrs.items()))))
    else:
      attrs = dict(num_output=expected[name]["kernel"][1], bias_term=True, axis=1, transpose=False)
      specs.append(LayerSpec(name, "InnerProduct", ("x",), (name,), tuple(sorted(attrs.items()))))
  graph = Graph("alexnet", tuple(specs), ("x",), (None,), (), ())
  return convert_params(graph, weights, where, expected)


def load_params(weights: str, order: str) -> tuple[Any, str]:
  """(params, weights_id) from a .caffemodel or a convert_caffe folder (see module doc)."""
  if order not in ORDERS:
    raise ValueError(f"order must be 'alexnet' or 'caffenet', got {order!r}")
  path = os.fspath(weights)
  if os.path.isdir(path):
    params, meta = sd_lib.load_converted(path, order, expected_shapes())
    return jax.tree.map(jnp.asarray, params), str(meta["weights_id"])
  if not os.path.exists(path):
    raise FileNotFoundError(f"{path}: no such .caffemodel file or checkpoint folder")
  params = params_from_caffemodel(path, order)
  return jax.tree.map(jnp.asarray, params), base.file_weights_id(path)


def _factory(order: str):
  def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32) -> base.Backbone:
    module = AlexNet(order=order, dtype=dtype)
    if weights is None:
      raise FileNotFoundError(
          f"no default weights for {order!r} can be shipped: download the BVLC Caffe model "
          f"({'bvlc_alexnet' if order == 'alexnet' else 'bvlc_reference_caffenet'}.caffemodel, see "
          "README 'AlexNet weights') and pass --config.backbone.weights=PATH (a .caffemodel or a "
          "folder written by `python -m persistent.tools.convert_caffe`), or weights='random'")
    if weights == "random":
      params, wid = base.random_params(module, INPUT_SIZE, seed), base.random_weights_id(seed)
    else:
      params, wid = load_params(weights, order)
    return base.Backbone(name=order, module=module, params=params, input_size=INPUT_SIZE,
                              preprocess=preprocess,
                              layers=LAYERS if order == "alexnet" else CAFFENET_LAYERS,
                              weights_id=wid)
  return make


base.register("alexnet")(_factory("alexnet"))
base.register("caffenet")(_factory("caffenet"))
