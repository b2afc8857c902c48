"""Backbone registry: frozen networks that map uint8 RGB images to named layer activations.

`create(name, weights=None)` returns a `Backbone`. `weights=None` means the default weights where
they exist offline (a clear error where they do not), `'random'` a seeded random initialisation
(the architecture-only control), or a path the backbone understands.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from persistent.registry import Registry

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")
register = BACKBONES.register


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
  """A frozen network with its preprocessing.

  `module.apply({'params': params}, x)` must return a dict from layer (tap) name to array, where
  `x = preprocess(images)` and `images` is uint8 RGB NHWC of spatial size `input_size`.
  4-D taps are NHWC; 2-D taps are (N, C).
  """
  name: str
  module: nn.Module
  params: Any
  input_size: tuple[int, int]
  preprocess: Callable[[jax.Array], jax.Array]
  layers: tuple[str, ...]
  weights_id: str  # identifies the weights for feature caching, e.g. 'random:0' or a file digest.

  def __call__(self, images: Any) -> dict[str, jax.Array]:
    """All layer taps for a uint8 RGB NHWC batch."""
    return _apply_all(self, jnp.asarray(images))

  def tap(self, layer: str) -> Callable[[jax.Array], jax.Array]:
    """A jitted function images_uint8 -> activations of one layer (XLA prunes the rest)."""
    if layer not in self.layers:
      raise KeyError(f"backbone {self.name!r} has no layer {layer!r}; layers: {', '.join(self.layers)}")
    module, preprocess = self.module, self.preprocess

    @jax.jit
    def fn(params, images):
      return module.apply({"params": params}, preprocess(images))[layer]
    return functools.partial(fn, self.params)


def _apply_all(backbone: Backbone, images: jax.Array) -> dict[str, jax.Array]:
  return _jitted_apply(backbone.module, backbone.preprocess)(backbone.params, images)


@functools.lru_cache(maxsize=32)
def _jitted_apply(module: nn.Module, preprocess: Callable) -> Callable:
  return jax.jit(lambda params, images: module.apply({"params": params}, preprocess(images)))


def create(name: str, weights: str | None = None, **kwargs: Any) -> Backbone:
  """Builds the named backbone; kwargs go to its factory (e.g. `seed` for random weights)."""
  return BACKBONES.get(name)(weights=weights, **kwargs)


def names() -> list[str]:
  return BACKBONES.names()


def random_params(module: nn.Module, input_size: tuple[int, int], seed: int) -> Any:
  """Seeded random initialisation of a module taking NHWC float input."""
  x = jnp.zeros((1, *input_size, 3), jnp.float32)
  return jax.jit(module.init)(jax.random.key(seed), x)["params"]


def file_digest(path: str, chunk: int = 1 << 20) -> str:
  """sha1 of a file, used to key caches by weights content."""
  import hashlib
  h = hashlib.sha1()
  with open(path, "rb") as f:
    while block := f.read(chunk):
      h.update(block)
  return h.hexdigest()


def as_numpy_tree(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)


# Importing the modules registers their backbones.
from persistent.backbones import alexnet  # noqa: E402,F401
from persistent.backbones import efficientnet  # noqa: E402,F401
from persistent.backbones import caffe  # noqa: E402,F401
