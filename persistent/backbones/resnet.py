"""torchvision's ResNet-18 and ResNet-50 in Flax, loading torchvision state dicts without torch.

The networks are torchvision's `resnet18` / `resnet50` (He et al. 2016; ResNet-50 in torchvision's
"v1.5" form, the stride of a bottleneck on its 3x3 conv): a 7x7/2 conv, batch norm, ReLU, a 3x3/2
max pool (padding 1), four stages of residual blocks (BasicBlock: two 3x3 convs; Bottleneck: 1x1,
3x3, 1x1 with 4x expansion; a 1x1 conv + batch norm 'downsample' on the shortcut where the shape
changes), global average pooling and a linear classifier. Batch norm runs in inference mode (eps
1e-5). Submodules carry torchvision's names, so parameter `layer2/0/downsample/1/var` is tensor
`layer2.0.downsample.1.running_var`.

Weights: `resnet18-f37072fd.pth` / `resnet50-0676ba61.pth` (IMAGENET1K_V1) or any state dict saved
by `torch.save(model.state_dict())` in either format; the classifier's size is read from `fc`.
Preprocessing as torchvision's evaluation: resize the shorter side to 256 (bilinear), center crop
224, ImageNet mean/std.

Taps (NHWC / (N, C)): 'stem' (after the max pool, 56x56 at 224), 'layer1'..'layer4' (each
stage's output map), 'head' (the global average of layer4: the classifier's input), 'logits',
'prob'.
"""
from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from persistent.backbones import base
from persistent.backbones import state_dict as sd_lib
from persistent.backbones.layers import FrozenBatchNorm, global_avg_pool, precision
from persistent.backbones.preprocessing import torchvision_imagenet

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
STAGE_FEATURES = (64, 128, 256, 512)
# name: (block kind, blocks per stage, the file torchvision's IMAGENET1K_V1 weights come in)
CONFIGS = {
    "resnet18": ("basic", (2, 2, 2, 2), "resnet18-f37072fd.pth"),
    "resnet50": ("bottleneck", (3, 4, 6, 3), "resnet50-0676ba61.pth"),
}
EXPANSION = {"basic": 1, "bottleneck": 4}
LAYERS = ("stem", "layer1", "layer2", "layer3", "layer4", "head", "logits", "prob")


def conv(features: int, kernel: int, stride: int, name: str, dtype: Any) -> nn.Conv:
  """A torch-style conv: symmetric padding kernel // 2, no bias."""
  p = kernel // 2
  return nn.Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                 use_bias=False, dtype=dtype, precision=precision(dtype), name=name)


class Downsample(nn.Module):
  """The shortcut's 1x1 conv ('0') and batch norm ('1')."""
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    x = conv(self.features, 1, self.stride, "0", self.dtype)(x)
    return FrozenBatchNorm(dtype=self.dtype, name="1")(x)


class Block(nn.Module):
  """BasicBlock ('basic') or Bottleneck ('bottleneck'); features: the block's width (planes)."""
  kind: str
  features: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    out_features = self.features * EXPANSION[self.kind]
    if self.kind == "basic":
      widths, kernels, strides = (self.features,) * 2, (3, 3), (self.stride, 1)
    else:
      widths, kernels, strides = (self.features, self.features, out_features), (1, 3, 1), (1, self.stride, 1)
    h = x
    for i, (w, k, s) in enumerate(zip(widths, kernels, strides), start=1):
      h = conv(w, k, s, f"conv{i}", self.dtype)(h)
      h = FrozenBatchNorm(dtype=self.dtype, name=f"bn{i}")(h)
      if i < len(widths):
        h = nn.relu(h)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = Downsample(out_features, self.stride, self.dtype, name="downsample")(x)
    return nn.relu(h + shortcut)


class Stage(nn.Module):
  kind: str
  features: int
  blocks: int
  stride: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.blocks):
      x = Block(self.kind, self.features, self.stride if i == 0 else 1, self.dtype, name=str(i))(x)
    return x


class ResNet(nn.Module):
  """Returns every tap (see module docstring) for input already normalised by `preprocess`."""
  kind: str
  blocks: Sequence[int]
  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out = {}
    h = conv(64, 7, 2, "conv1", self.dtype)(x.astype(self.dtype))
    h = nn.relu(FrozenBatchNorm(dtype=self.dtype, name="bn1")(h))
    out["stem"] = h = nn.max_pool(h, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
    for i, (features, n) in enumerate(zip(STAGE_FEATURES, self.blocks)):
      name = f"layer{i + 1}"
      out[name] = h = Stage(self.kind, features, n, 1 if i == 0 else 2, self.dtype, name=name)(h)
    out["head"] = pooled = global_avg_pool(h)
    out["logits"] = logits = nn.Dense(self.num_classes, dtype=self.dtype,
                                      precision=precision(self.dtype), name="fc")(pooled)
    out["prob"] = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
    return out


preprocess = torchvision_imagenet()


@functools.lru_cache(maxsize=8)
def expected_shapes(name: str, num_classes: int = NUM_CLASSES) -> dict[tuple[str, ...], tuple[int, ...]]:
  kind, blocks, _ = CONFIGS[name]
  return sd_lib.param_shapes(ResNet(kind, blocks, num_classes), (1, *INPUT_SIZE, 3))


def entries(name: str, num_classes: int = NUM_CLASSES) -> list[sd_lib.Entry]:
  expected = expected_shapes(name, num_classes)
  return sd_lib.with_kernel_perms(sd_lib.torch_entries(expected), expected)


def params_from_state_dict(state_dict: dict, name: str, source: str = "state dict") -> dict:
  """Flax params from a torchvision state dict; the classifier's size is read from `fc.weight`."""
  fc = state_dict.get("fc.weight")
  num_classes = int(fc.shape[0]) if fc is not None and fc.ndim == 2 else NUM_CLASSES
  return sd_lib.assemble(state_dict, entries(name, num_classes),
                         expected_shapes(name, num_classes), name, source)


def _factory(name: str):
  kind, blocks, usual_file = CONFIGS[name]

  def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32) -> base.Backbone:
    if weights is None:
      raise sd_lib.no_default_weights(name, f"torchvision's {usual_file}")
    if weights == "random":
      params = jax.tree.map(jnp.asarray, sd_lib.random_params(expected_shapes(name), seed))
      wid = base.random_weights_id(seed)
    else:
      params, wid = sd_lib.load_weights(weights, name, expected_shapes(name),
                                        lambda sd, source: params_from_state_dict(sd, name, source))
    num_classes = params["fc"]["bias"].shape[0]
    module = ResNet(kind, blocks, num_classes, dtype=dtype)
    return base.Backbone(name=name, module=module, params=params, input_size=INPUT_SIZE,
                              preprocess=preprocess, layers=LAYERS, weights_id=wid)
  return make


for _name in CONFIGS:
  base.register(_name)(_factory(_name))
