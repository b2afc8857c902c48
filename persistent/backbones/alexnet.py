"""AlexNet in Flax with the Caffe reference models' layout.

Two layer orders exist: BVLC AlexNet (conv -> ReLU -> LRN -> pool) and CaffeNet
(conv -> ReLU -> pool -> LRN). conv2/4/5 have two groups. fc6/fc7 taps are post-ReLU, as Caffe's
in-place ReLU leaves the blobs. pool5 is flattened in Caffe's (C, H, W) order so that fc6's kernel
is Caffe's weight matrix transposed.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from persistent import backbones
from persistent.backbones import caffe_ops

# Caffe's ImageNet mean in BGR order, as used by the reference models.
IMAGENET_MEAN_BGR = (104.007, 116.669, 122.679)
INPUT_SIZE = (227, 227)
LAYERS = ("conv1", "norm1", "pool1", "conv2", "norm2", "pool2", "conv3", "conv4", "conv5",
          "pool5", "fc6", "fc7", "fc8", "logits", "prob")
PARAM_LAYERS = ("conv1", "conv2", "conv3", "conv4", "conv5", "fc6", "fc7", "fc8")

_CONVS = {  # name: (features, kernel, stride, pad, groups)
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
      feats, k, s, p, g = _CONVS[name]
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


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 RGB NHWC -> Caffe's data blob in NHWC: BGR, 0..255, minus the ImageNet mean."""
  x = images.astype(jnp.float32)[..., ::-1]
  return x - jnp.asarray(IMAGENET_MEAN_BGR, jnp.float32)


def load_weights(weights: str, order: str) -> tuple[Any, str]:
  """Parameters from an orbax checkpoint folder or a .caffemodel; returns (params, weights_id).

  Implemented by the Caffe reader (persistent.backbones.caffe); see `python -m
  persistent.tools.convert_caffe`.
  """
  from persistent.backbones import caffe  # imported lazily: protobuf is only needed here
  return caffe.load_alexnet_params(weights, order)


def _factory(order: str):
  def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32) -> backbones.Backbone:
    module = AlexNet(order=order, dtype=dtype)
    if weights is None:
      raise FileNotFoundError(
          f"no default weights for {order!r} can be shipped: download the BVLC Caffe model "
          f"({'bvlc_alexnet' if order == 'alexnet' else 'bvlc_reference_caffenet'}.caffemodel, see "
          "README 'AlexNet weights') and pass --config.backbone.weights=PATH (a .caffemodel or a "
          "folder written by `python -m persistent.tools.convert_caffe`), or weights='random'")
    if weights == "random":
      params, wid = backbones.random_params(module, INPUT_SIZE, seed), f"random:{seed}"
    else:
      params, wid = load_weights(weights, order)
    return backbones.Backbone(name=order, module=module, params=params, input_size=INPUT_SIZE,
                              preprocess=preprocess, layers=LAYERS, weights_id=wid)
  return make


backbones.register("alexnet")(_factory("alexnet"))
backbones.register("caffenet")(_factory("caffenet"))
