"""torchvision's VGG-16 in Flax, loading torchvision state dicts without torch.

The network is torchvision's `vgg16` (Simonyan & Zisserman 2015, configuration D, no batch norm):
thirteen 3x3 convs (padding 1) with ReLU in five stages, each closed by a 2x2/2 max pool; an
adaptive average pool to 7x7 (the identity at 224x224); three linear layers (fc6, fc7 with ReLU;
dropout is the identity at inference). Submodules carry torchvision's names (`features/0/kernel`
<-> `features.0.weight`, `classifier/6` the last linear layer); pool5 is flattened in torch's
(C, H, W) order so that fc6's kernel is torchvision's weight transposed.

Weights: `vgg16-397923af.pth` (IMAGENET1K_V1) or any state dict of torchvision's vgg16 (either
torch.save format); the classifier's size is read from `classifier.6`. Preprocessing as
torchvision's evaluation: shorter side to 256 (bilinear), center crop 224, ImageNet mean/std.

Taps: 'conv1_1' .. 'conv5_3' (post-ReLU maps), 'pool1' .. 'pool5' (NHWC), 'fc6', 'fc7' (post-ReLU,
4096), 'head' (fc7 again: the classifier's input, the name every backbone gives its global
representation), 'logits', 'prob'.
"""
from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from persistent.backbones import base
from persistent.backbones import state_dict as sd_lib
from persistent.backbones.layers import adaptive_avg_pool, precision
from persistent.backbones.preprocessing import torchvision_imagenet

INPUT_SIZE = (224, 224)
NUM_CLASSES = 1000
STAGES = ((64, 2), (128, 2), (256, 3), (512, 3), (512, 3))  # (channels, convs) per stage
POOL_CELLS = 7
HIDDEN = 4096
USUAL_FILE = "vgg16-397923af.pth"
LAYERS = (tuple(name for s, (_, n) in enumerate(STAGES)
                for name in [f"conv{s + 1}_{i + 1}" for i in range(n)] + [f"pool{s + 1}"])
          + ("fc6", "fc7", "head", "logits", "prob"))


class Features(nn.Module):
  """torchvision's `features`: convs at the indices torch numbers them (ReLU and pools between)."""
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out, index = {}, 0
    for s, (channels, n) in enumerate(STAGES):
      for i in range(n):
        x = nn.Conv(channels, (3, 3), padding=((1, 1), (1, 1)), dtype=self.dtype,
                    precision=precision(self.dtype), name=str(index))(x)
        out[f"conv{s + 1}_{i + 1}"] = x = nn.relu(x)
        index += 2  # conv, ReLU
      out[f"pool{s + 1}"] = x = nn.max_pool(x, (2, 2), (2, 2))
      index += 1
    return out


class Classifier(nn.Module):
  """torchvision's `classifier`: linear layers 0, 3 and 6 (ReLU and dropout between)."""
  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    dense = lambda n, name: nn.Dense(n, dtype=self.dtype, precision=precision(self.dtype), name=name)
    fc6 = nn.relu(dense(HIDDEN, "0")(x))
    fc7 = nn.relu(dense(HIDDEN, "3")(fc6))
    return {"fc6": fc6, "fc7": fc7, "head": fc7, "logits": dense(self.num_classes, "6")(fc7)}


class VGG16(nn.Module):
  """Returns every tap (see module docstring) for input already normalised by `preprocess`."""
  num_classes: int = NUM_CLASSES
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> dict[str, jax.Array]:
    out = Features(self.dtype, name="features")(x.astype(self.dtype))
    h = adaptive_avg_pool(out["pool5"], POOL_CELLS)
    h = jnp.transpose(h, (0, 3, 1, 2)).reshape(h.shape[0], -1)  # torch.flatten of NCHW
    out.update(Classifier(self.num_classes, self.dtype, name="classifier")(h))
    out["prob"] = jax.nn.softmax(out["logits"].astype(jnp.float32), axis=-1)
    return out


preprocess = torchvision_imagenet()


@functools.lru_cache(maxsize=4)
def expected_shapes(num_classes: int = NUM_CLASSES) -> dict[tuple[str, ...], tuple[int, ...]]:
  return sd_lib.param_shapes(VGG16(num_classes), (1, *INPUT_SIZE, 3))


def entries(num_classes: int = NUM_CLASSES) -> list[sd_lib.Entry]:
  expected = expected_shapes(num_classes)
  return sd_lib.with_kernel_perms(sd_lib.torch_entries(expected), expected)


def params_from_state_dict(state_dict: dict, source: str = "state dict") -> dict:
  """Flax params from a torchvision vgg16 state dict (classifier size from `classifier.6`)."""
  last = state_dict.get("classifier.6.weight")
  num_classes = int(last.shape[0]) if last is not None and last.ndim == 2 else NUM_CLASSES
  return sd_lib.assemble(state_dict, entries(num_classes), expected_shapes(num_classes), "vgg16",
                         source)


@base.register("vgg16")
def make(weights: str | None = None, *, seed: int = 0, dtype: Any = jnp.float32) -> base.Backbone:
  """VGG-16; weights: a torchvision state dict file, a convert_weights folder, or 'random'."""
  if weights is None:
    raise sd_lib.no_default_weights("vgg16", f"torchvision's {USUAL_FILE}")
  if weights == "random":
    params = jax.tree.map(jnp.asarray, sd_lib.random_params(expected_shapes(), seed))
    wid = base.random_weights_id(seed)
  else:
    params, wid = sd_lib.load_weights(weights, "vgg16", expected_shapes(), params_from_state_dict)
  module = VGG16(params["classifier"]["6"]["bias"].shape[0], dtype=dtype)
  return base.Backbone(name="vgg16", module=module, params=params, input_size=INPUT_SIZE,
                            preprocess=preprocess, layers=LAYERS, weights_id=wid)
